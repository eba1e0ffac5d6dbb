"""What a target offers for KVM scenarios: kernel, arch, /dev/kvm, capabilities, PV host state."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from . import uapi
from .fixes import Version, fix, release_version

ASYNC_TEARDOWN_SINCE = (6, 2)
PV_CAPS = (uapi.KVM_CAP_S390_PROTECTED, uapi.KVM_CAP_S390_PROTECTED_DUMP,
           uapi.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE)
DESTROY_FAST_BIT = 23  # BIT_UVC_CMD_DESTROY_SEC_CONF_FAST, MSB-0 in word 0 of the installed-calls list


def kernel_version(release: str) -> Optional[Tuple[int, int]]:
    """``"6.1.0-27-s390x"`` -> ``(6, 1)``; None when the release does not start with X.Y."""
    match = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def destroy_fast_from_facilities(text: Optional[str]) -> Optional[bool]:
    """Bit 23 (MSB-0) of the first 64-bit word of /sys/firmware/uv/query/facilities (one %lx word per line)."""
    if not text:
        return None
    try:
        word0 = int(text.split()[0], 16)
    except (ValueError, IndexError):
        return None
    return bool((word0 >> (63 - DESTROY_FAST_BIT)) & 1)


@dataclass(frozen=True)
class Capabilities:
    """A target's KVM facts as one agent call found them (None: could not be determined)."""

    arch: str
    kernel_release: str
    has_kvm: bool
    caps: Dict[int, Optional[int]] = field(default_factory=dict)
    prot_virt_host: Optional[int] = None
    async_destroy: Optional[int] = None
    destroy_fast: Optional[bool] = None
    has_sie: Optional[bool] = None
    python: str = ""
    source: str = "agent"  # "agent" (probed) or "model" (presented by the model target)

    @property
    def version(self) -> Optional[Tuple[int, int]]:
        return kernel_version(self.kernel_release)

    @property
    def full_version(self) -> Optional[Version]:
        """(major, minor, patch) from the full release string; a stable backport depends on the patch level."""
        return release_version(self.kernel_release)

    def has_fix(self, commit: str) -> Optional[bool]:
        """Whether this kernel's release has a catalogued fix by its number (None: release unparsable)."""
        return fix(commit).present_in(self.full_version)

    @property
    def predates_async_teardown(self) -> Optional[bool]:
        """True for kernels before 6.2 (no PREPARE/PERFORM, capability 224 unknown); None if unparsable."""
        version = self.version
        return None if version is None else version < ASYNC_TEARDOWN_SINCE

    def cap(self, number: int) -> Optional[int]:
        return self.caps.get(number)


    def summary(self) -> str:
        caps = ", ".join(f"cap{n}={self.caps.get(n)}" for n in PV_CAPS)
        return (f"{self.arch} {self.kernel_release} kvm={'yes' if self.has_kvm else 'no'} {caps} "
                f"prot_virt_host={self.prot_virt_host} async_destroy={self.async_destroy} "
                f"destroy_fast={self.destroy_fast}")


def model_host_caps(release: str = "6.12.0-model", *, destroy_fast: bool = True,
                    async_destroy: int = 1, prot_virt_host: int = 1) -> Capabilities:
    """The PV-capable s390x host the model target presents (Debian trixie's 6.12 by default)."""
    version = kernel_version(release) or (0, 0)
    new = version >= ASYNC_TEARDOWN_SINCE
    caps = {
        uapi.KVM_CAP_S390_PROTECTED: prot_virt_host,
        uapi.KVM_CAP_S390_PROTECTED_DUMP: prot_virt_host if version >= (6, 0) else 0,
        uapi.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE: int(bool(async_destroy and prot_virt_host)) if new else 0,
    }
    return Capabilities(
        arch="s390x", kernel_release=release, has_kvm=True, caps=caps, prot_virt_host=prot_virt_host,
        async_destroy=async_destroy if new else None, destroy_fast=destroy_fast, has_sie=True,
        python="model", source="model",
    )
