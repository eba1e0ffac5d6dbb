"""A Secure Execution guest of the harness's image, run by QEMU with KVM on a PV host over SSH.

The SE image is made on the host with ``pvimg create`` (s390-tools 2.33+) or ``genprotimg`` from the
guest image's kernel, initrd and command line and a host-key document the user passes.  The QEMU command
line is the nested guest's (``harness.targets.nested_qemu.nested_qemu_argv``) turned into a protected one by
:func:`pv_qemu_argv`: the machine gets ``confidential-guest-support`` with an ``s390-pv-guest`` object,
virtio devices get ``iommu_platform=on`` (a protected guest shares only bounce buffers), the SE image is
the ``-kernel`` (it carries initrd and command line), ``-no-reboot`` goes (a reboot must stay in the same
QEMU, which is what runs PREPARE and the ``async_cleanup`` thread), and ``debug-threads=on`` names QEMU's
threads so the teardown thread can be found in ``/proc/<pid>/task``.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import InfrastructureError, UsageError
from ..targets.nested_qemu import NestedQemuTarget
from ..targets.spec import TargetOptions

log = logging.getLogger(__name__)

SE_TOOLS = ("pvimg", "genprotimg")
TEARDOWN_THREAD = "async_cleanup"  # QEMU's s390 PV code names the PERFORM thread so (hw/s390x/pv.c)
PV_OBJECT = "s390-pv-guest"
MIN_ASYNC_GUEST_MIB = 2048 + 1  # QEMU tries PREPARE only for guests above 2 GiB


def se_image_command(tool: str, kernel: str, initrd: str, parmfile: str, host_key_doc: str, output: str,
                     *, verify: bool = False, certs: Sequence[str] = ()) -> List[str]:
    """The command that makes an SE image; without ``verify`` (no IBM signing certificates given) ``--no-verify``."""
    if tool not in SE_TOOLS:
        raise UsageError(f"unknown SE image tool {tool!r}: use pvimg or genprotimg")
    argv = [tool, "create"] if tool == "pvimg" else [tool]
    argv += ["-i", kernel, "-r", initrd, "-p", parmfile, "-k", host_key_doc, "-o", output]
    if verify and certs:
        for cert in certs:
            argv += ["-C", cert]
    else:
        argv.append("--no-verify")
    return argv


def pv_qemu_argv(argv: Sequence[str], se_image: str, extra: Sequence[str] = ()) -> List[str]:
    """Turn a (nested, KVM) guest command line into a Secure Execution one; see the module docstring."""
    out: List[str] = []
    skip_next = False
    words = list(argv)
    if "-machine" not in words or "-kernel" not in words:
        raise ValueError("not a QEMU guest command line: -machine and -kernel are required")
    for i, word in enumerate(words):
        if skip_next:
            skip_next = False
            continue
        previous = words[i - 1] if i else ""
        if word in ("-initrd", "-append"):
            skip_next = True
            continue
        if word == "-no-reboot":
            continue
        if previous == "-machine":
            word = f"{word},confidential-guest-support=pv0"
        elif previous == "-kernel":
            word = se_image
        elif previous == "-name" and "debug-threads" not in word:
            word = f"{word},debug-threads=on"
        elif previous == "-device" and "virtio" in word and "iommu_platform" not in word:
            word = f"{word},iommu_platform=on"
        out.append(word)
    out += ["-object", f"{PV_OBJECT},id=pv0", *extra]
    return out


def kvm_reload_command(async_destroy: int) -> str:
    """Reload the kvm module with ``async_destroy`` (read-only at run time); fails while a VM exists."""
    return f"modprobe -r kvm && modprobe kvm async_destroy={int(bool(async_destroy))}"


class SeGuestTarget(NestedQemuTarget):
    """A nested guest booted as a Secure Execution guest (see the module docstring).

    ``host_key_doc`` is the local path of the host-key document; ``qemu_extra`` more QEMU arguments.
    """

    kind = "se-qemu"

    def __init__(self, host, image, options: Optional[TargetOptions] = None, *, host_key_doc: Path,
                 qemu_extra: Sequence[str] = (), owns_host: bool = False) -> None:
        super().__init__(host, image, options, arch="s390x", owns_host=owns_host)
        self.host_key_doc = Path(host_key_doc)
        self.qemu_extra = list(qemu_extra)
        self.spec = f"{host.spec}+se-qemu"
        self.se_tool = ""

    def _launch(self) -> None:
        """Make the SE image on the host, turn the command line protected, then launch as a nested guest."""
        from ..arch import get_arch

        if not self.host_key_doc.is_file():
            raise UsageError(f"host-key document {self.host_key_doc} does not exist")
        tool_line = self.host.run("command -v pvimg || command -v genprotimg", timeout=60).stdout.strip()
        if not tool_line:
            raise InfrastructureError(f"{self.host.spec} has neither pvimg nor genprotimg: install s390-tools")
        self.se_tool = Path(tool_line.splitlines()[0]).name
        rd = self.remote_dir
        self.host.put(self.host_key_doc, f"{rd}/host-key.crt")
        cmdline = get_arch("s390x").kernel_cmdline(self.options.extra_cmdline)
        self.host.run(f"printf '%s\\n' {shlex.quote(cmdline)} > {shlex.quote(rd)}/parmfile", timeout=60)
        build = se_image_command(self.se_tool, f"{rd}/vmlinuz", f"{rd}/initrd.img", f"{rd}/parmfile",
                                 f"{rd}/host-key.crt", f"{rd}/se.img")
        made = self.host.run(shlex.join(build), timeout=600)
        if not made.ok:
            raise InfrastructureError(f"{self.se_tool} failed on {self.host.spec}: "
                                      f"{(made.stderr or made.stdout).strip()[-400:]}")
        self.argv = pv_qemu_argv(self.argv, f"{rd}/se.img", self.qemu_extra)
        super()._launch()
