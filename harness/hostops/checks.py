"""Prerequisite checks for installing a kernel on a host, all done before anything is changed."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import InfrastructureError
from ..targets.base import Target
from .probe import FsInfo, HostProbe, probe_host
from .record import HostLayout, InstallRecord, read_record
from .shell import HostShell

log = logging.getLogger(__name__)

KIB = 1024
# Guess for an initramfs that dracut/mkinitramfs will build on the host (its real size is only known after).
INITRAMFS_TOOL_ESTIMATE_KB = 96 * KIB
# Slack kept free on every filesystem: 5 % of what is copied plus 8 MiB.
MARGIN_KB = 8 * KIB
FACILITY_UV_CALL = 158  # Ultravisor-call facility: the machine can run protected (Secure Execution) guests
FACILITY_UV_SE = 161  # Secure-execution unpack facility

INITRAMFS_EXPLICIT = "given"
INITRAMFS_REPACK = "repack-root"
INITRAMFS_DRACUT = "dracut"
INITRAMFS_MKINITRAMFS = "mkinitramfs"


@dataclass
class LocalKernel:
    """The kernel to install, as found on this machine."""

    image: Path
    arch: str
    release: str
    modules_dir: Optional[Path]  # the lib/modules/<release> directory, or None
    modules_kb: int = 0
    initrd: Optional[Path] = None

    @property
    def image_kb(self) -> int:
        return _kb(self.image.stat().st_size)


@dataclass
class CheckReport:
    """The outcome of the checks: what was found and how the install will proceed."""

    probe: HostProbe
    shell: HostShell
    initramfs: str
    previous: Optional[InstallRecord]
    info: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _kb(size: int) -> int:
    return (size + KIB - 1) // KIB


def tree_size_kb(root: Path) -> int:
    """Disk usage estimate of a tree: file sizes rounded up to 4 KiB blocks."""
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += (path.stat().st_size + 4095) // 4096 * 4
        else:
            total += 4
    return total


def check_image_arch(image: Path, host_arch: str, spec: str) -> None:
    """The image must be a kernel for the host's architecture."""
    from guest_images.kernels import kernel_arch_of, looks_like_kernel

    if looks_like_kernel(image, host_arch):
        return
    other = kernel_arch_of(image)
    if other:
        raise InfrastructureError(f"{image} is an {other} kernel but {spec} is {host_arch}: "
                                  f"build the kernel for {host_arch} (kvmh build --arch {host_arch})")
    raise InfrastructureError(f"{image} is not a kernel image for {host_arch} ({spec}): "
                              f"pass the built image (arch/s390/boot/bzImage on s390x)")


def check_kexec(probe: HostProbe, spec: str) -> list[str]:
    """kexec must be installed and allowed by the running kernel; returns warnings."""
    if not probe.has("kexec"):
        raise InfrastructureError(f"kexec is not installed on {spec}: install kexec-tools there, or use --zipl")
    if probe.kexec_load_disabled == "missing":
        raise InfrastructureError(f"the running kernel {probe.release} on {spec} has no kexec support "
                                  f"(no /proc/sys/kernel/kexec_load_disabled): boot a kernel built with "
                                  f"CONFIG_KEXEC, or use --zipl")
    if probe.kexec_load_disabled != "0":
        raise InfrastructureError(f"kexec is disabled on {spec} (kernel.kexec_load_disabled="
                                  f"{probe.kexec_load_disabled}, which stays set until reboot): reboot with it "
                                  f"unset, or use --zipl")
    if probe.arch == "s390x" and not probe.memory_block_size:
        raise InfrastructureError(f"kexec-tools on {spec} needs /sys/devices/system/memory/block_size_bytes, which "
                                  f"the running kernel {probe.release} lacks: boot a kernel built with "
                                  f"CONFIG_MEMORY_HOTPLUG, or use --zipl")
    warnings = []
    if "[none]" not in probe.lockdown and probe.lockdown.strip():
        warnings.append(f"kernel lockdown is active ({probe.lockdown.strip()}): kexec_load may be refused "
                        f"unless the image is signed")
    return warnings


def check_zipl(probe: HostProbe, spec: str) -> None:
    if probe.arch != "s390x":
        raise InfrastructureError(f"--zipl is for s390x hosts, {spec} is {probe.arch}: use kexec (the default)")
    if not probe.has("zipl"):
        raise InfrastructureError(f"zipl is not installed on {spec}: install s390-tools (or s390-tools-zipl)")
    if not probe.zipl_conf:
        raise InfrastructureError(f"{spec} has no zipl configuration file to extend: use kexec (the default)")


def choose_initramfs(probe: HostProbe, kernel: LocalKernel, spec: str) -> str:
    """Decide how the initramfs is made (see the install module's docstring for the order)."""
    if kernel.initrd is not None:
        return INITRAMFS_EXPLICIT
    if probe.root_is_initramfs:
        if not probe.has("python3"):
            raise InfrastructureError(f"{spec} runs from its initramfs and has no python3 to repack it: "
                                      f"pass an initramfs for the new kernel")
        return INITRAMFS_REPACK
    if probe.has("dracut"):
        return INITRAMFS_DRACUT
    if probe.has("mkinitramfs"):
        return INITRAMFS_MKINITRAMFS
    raise InfrastructureError(f"{spec} has neither dracut nor mkinitramfs to build an initramfs for "
                              f"{kernel.release}: install one of them, or pass an initramfs")


def space_needs(probe: HostProbe, kernel: LocalKernel, initramfs: str, layout: HostLayout) -> dict[str, int]:
    """KiB each install directory will receive."""
    if initramfs == INITRAMFS_EXPLICIT and kernel.initrd is not None:
        initrd_kb = _kb(kernel.initrd.stat().st_size)
    elif initramfs == INITRAMFS_REPACK:
        initrd_kb = probe.root_size_kb + kernel.modules_kb
    else:
        initrd_kb = INITRAMFS_TOOL_ESTIMATE_KB
    return {
        layout.boot_dir: kernel.image_kb + initrd_kb,
        layout.modules_root: kernel.modules_kb,
        layout.state_dir: 8,
    }


def _avail_kb(fs: FsInfo, probe: HostProbe) -> int:
    if fs.avail_kb == 0 and fs.device == "rootfs" and fs.mount == "/":
        return probe.mem_available_kb  # the initramfs root reports no size: memory bounds it
    return fs.avail_kb


def check_space(probe: HostProbe, needs: dict[str, int], spec: str) -> None:
    """Every filesystem must hold what goes to it (directories on one filesystem add up)."""
    per_fs: dict[tuple[str, str], list[str]] = {}
    for path, kb in needs.items():
        if kb <= 0:
            continue
        fs = probe.filesystems.get(path)
        if fs is None:
            raise InfrastructureError(f"cannot tell the free space for {path} on {spec} (df failed)")
        per_fs.setdefault((fs.device, fs.mount), []).append(path)
    for (_device, mount), paths in per_fs.items():
        need = sum(needs[p] for p in paths)
        need += need // 20 + MARGIN_KB
        fs = probe.filesystems[paths[0]]
        avail = _avail_kb(fs, probe)
        if avail < need:
            raise InfrastructureError(
                f"not enough space on {spec} for {', '.join(sorted(paths))} (filesystem {mount}): need "
                f"{need // KIB + 1} MiB, {avail // KIB} MiB free: free space there and retry")


def check_modules_conflict(probe: HostProbe, kernel: LocalKernel, previous: Optional[InstallRecord],
                           layout: HostLayout, spec: str) -> None:
    """Never overwrite modules that the harness did not install itself."""
    if kernel.modules_dir is None or not probe.modules_exist:
        return
    target = layout.modules_dir(kernel.release)
    if previous is not None and target in previous.paths:
        return
    raise InfrastructureError(f"{spec} already has {target}, which kvmh did not install: give the kernel its "
                              f"own release (CONFIG_LOCALVERSION) or install it without --modules")


def pv_info(probe: HostProbe) -> list[str]:
    """Protected-virtualization readiness, as information for the report."""
    if probe.arch != "s390x":
        return [f"protected virtualization: not applicable on {probe.arch}"]
    uv = FACILITY_UV_CALL in probe.facilities
    se = FACILITY_UV_SE in probe.facilities
    return [
        f"prot_virt_host: {probe.prot_virt_host} (1 means the kernel set up the ultravisor; boot with "
        f"prot_virt=1 to enable it)",
        f"facility {FACILITY_UV_CALL} (ultravisor call): {'yes' if uv else 'no'}; "
        f"facility {FACILITY_UV_SE} (secure execution): {'yes' if se else 'no'}",
        f"/dev/kvm: {'yes' if probe.kvm else 'no'}",
    ]


def check_prerequisites(target: Target, kernel: LocalKernel, method: str,
                        layout: Optional[HostLayout] = None) -> CheckReport:
    """Run every check, in order, raising the first problem as a one-line InfrastructureError."""
    layout = layout or HostLayout()
    spec = target.spec
    probe = probe_host(target, layout, kernel.release)
    check_image_arch(kernel.image, probe.arch, spec)
    if kernel.release == "unknown":
        raise InfrastructureError(f"cannot read the kernel release from {kernel.image} (no version string found): "
                                  f"pass the image the kernel build produced")
    shell = HostShell(target)
    warnings: list[str] = []
    if method == "kexec":
        warnings += check_kexec(probe, spec)
    elif method == "zipl":
        check_zipl(probe, spec)
    else:
        raise InfrastructureError(f"unknown install method {method!r}: use kexec or zipl")
    previous = read_record(target, layout) if probe.record_exists else None
    check_modules_conflict(probe, kernel, previous, layout, spec)
    initramfs = choose_initramfs(probe, kernel, spec)
    check_space(probe, space_needs(probe, kernel, initramfs, layout), spec)
    report = CheckReport(probe=probe, shell=shell, initramfs=initramfs, previous=previous,
                         info=pv_info(probe), warnings=warnings)
    for line in warnings:
        log.warning("%s: %s", spec, line)
    return report
