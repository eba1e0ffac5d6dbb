"""QEMU facts per guest architecture: one frozen dataclass each, looked up by name."""

from __future__ import annotations

import platform
from dataclasses import dataclass

from ..errors import UsageError
from .aliases import canonical


@dataclass(frozen=True)
class ArchSpec:
    """Everything QEMU needs to know about one guest architecture.

    ``tcg_cpu``/``kvm_cpu`` are the ``-cpu`` values per accelerator; ``console`` is the kernel's
    console device (``console=...``); ``cmdline`` holds the kernel parameters the harness always
    passes (``panic=-1`` so that a panic reboots and ``-no-reboot`` ends QEMU; oopses stay
    non-fatal and are caught on the console); ``kernel_image`` is where a kernel build leaves the
    bootable image; ``max_tcg_cpus`` caps the vCPUs under TCG. ``linux_arch`` is the kernel's ``ARCH=``,
    ``debian_arch`` Debian's name; ``cross_compile`` the ``CROSS_COMPILE`` prefix on a non-native host, with
    the Debian packages of the cross compiler and of its C library (not pulled in by the compiler).
    """

    name: str
    qemu_binary: str
    qemu_package: str
    machine: str
    tcg_cpu: str
    kvm_cpu: str
    console: str
    nic_device: str
    rng_device: str
    cmdline: tuple[str, ...]
    kernel_image: str = ""
    max_tcg_cpus: int = 8
    default_memory_mb: int = 2048
    firmware_banners: tuple[str, ...] = ()
    linux_arch: str = ""
    debian_arch: str = ""
    cross_compile: str = ""
    cross_package: str = ""
    cross_libc_package: str = ""

    def cpu(self, accelerator: str) -> str:
        """Return the ``-cpu`` value for ``"kvm"`` or ``"tcg"``."""
        return self.kvm_cpu if accelerator == "kvm" else self.tcg_cpu

    def kernel_cmdline(self, extra: str = "") -> str:
        """Return the full kernel command line: console, the fixed options, then ``extra``."""
        parts = [f"console={self.console}", *self.cmdline]
        if extra.strip():
            parts.append(extra.strip())
        return " ".join(parts)

    def smp(self, accelerator: str, wanted: int | None, host_cpus: int) -> int:
        """Return the vCPU count: ``wanted`` or the host's CPUs, capped at ``max_tcg_cpus`` under TCG."""
        count = wanted if wanted else host_cpus
        if accelerator == "tcg":
            count = min(count, self.max_tcg_cpus)
        return max(1, count)


def get_arch(name: str) -> ArchSpec:
    """Return the ArchSpec for ``s390x`` or ``x86_64`` (any spelling in :mod:`.aliases` accepted)."""
    from .s390x import S390X
    from .x86_64 import X86_64

    table = {"s390x": S390X, "x86_64": X86_64}
    try:
        return table[canonical(name)]
    except KeyError:
        raise UsageError(f"unknown guest architecture {name!r}: use s390x or x86_64") from None


def host_arch() -> str:
    """This machine's architecture in the harness's spelling (``x86_64``, ``s390x``, ...)."""
    return canonical(platform.machine())


__all__ = ["ArchSpec", "canonical", "get_arch", "host_arch"]
