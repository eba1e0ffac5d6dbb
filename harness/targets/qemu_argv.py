"""The QEMU command line: a pure function of (arch, accelerator, memory, CPUs, kernel, initrd, port, console).

The local QEMU target and the nested one (a guest started on an SSH host) both use it; only the console
differs: QEMU's stdio here, a file on the host there.
"""

from __future__ import annotations

from typing import Optional, Union
from pathlib import PurePath

from ..arch import ArchSpec


def qemu_argv(spec: ArchSpec, *, binary: str, accelerator: str, kernel: Union[str, PurePath],
              initrd: Union[str, PurePath], port: int, host_cpus: int, memory_mb: Optional[int] = None,
              smp: Optional[int] = None, console_file: Optional[str] = None, extra_cmdline: str = "") -> list[str]:
    """The argv that boots ``kernel``/``initrd`` with SSH forwarded from 127.0.0.1:``port`` (user networking,
    ``restrict=on``). The serial console is QEMU's stdio, or ``console_file`` when given."""
    console = f"file,id=con0,path={console_file}" if console_file else "stdio,id=con0,signal=off"
    return [
        binary,
        "-name", f"kvmh-{spec.name}",
        "-machine", spec.machine,
        "-accel", accelerator,
        "-cpu", spec.cpu(accelerator),
        "-smp", str(spec.smp(accelerator, smp, host_cpus)),
        "-m", str(memory_mb or spec.default_memory_mb),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", console,
        "-serial", "chardev:con0",
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", f"{spec.nic_device},netdev=n0",
        "-device", spec.rng_device,
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", spec.kernel_cmdline(extra_cmdline),
    ]
