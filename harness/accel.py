"""Choose QEMU's accelerator: KVM when the host can run the guest natively, TCG otherwise."""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass

from .errors import InfrastructureError, UsageError
from .arch import host_arch

log = logging.getLogger(__name__)

KVM_DEVICE = "/dev/kvm"
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_API_VERSION = 12
ACCELERATORS = ("auto", "kvm", "tcg")


def kvm_status(device: str = KVM_DEVICE) -> tuple[bool, str]:
    """Return (usable, reason): ``device`` opens, speaks API version 12 and creates a VM."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return False, f"cannot open {device}: {err.strerror}"
    try:
        try:
            version = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        except OSError as err:
            return False, f"{device} is not a KVM device: {err.strerror}"
        if version != KVM_API_VERSION:
            return False, f"{device} speaks KVM API {version}, not {KVM_API_VERSION}"
        try:
            os.close(fcntl.ioctl(fd, KVM_CREATE_VM, 0))
        except OSError as err:
            return False, f"{device} cannot create a VM: {err.strerror}"
    finally:
        os.close(fd)
    return True, f"{device} works"


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator to start with, why, and whether a KVM that cannot boot may fall back to TCG."""

    name: str
    reason: str
    may_fall_back: bool = False


def choose_accelerator(requested: str, guest_arch: str, *, device: str = KVM_DEVICE) -> AccelChoice:
    """Resolve ``auto``/``kvm``/``tcg`` for a guest of ``guest_arch`` on this host."""
    if requested not in ACCELERATORS:
        raise UsageError(f"unknown accelerator {requested!r}: use auto, kvm or tcg")
    if requested == "tcg":
        return AccelChoice("tcg", "TCG requested")
    host = host_arch()
    if host != guest_arch:
        if requested == "kvm":
            raise UsageError(
                f"KVM cannot run a {guest_arch} guest on this {host} host: use the tcg or auto accelerator"
            )
        return AccelChoice("tcg", f"host is {host}, guest is {guest_arch}")
    usable, reason = kvm_status(device)
    if not usable:
        if requested == "kvm":
            raise InfrastructureError(f"KVM requested but {reason}: fix access to {device} or use the tcg accelerator")
        return AccelChoice("tcg", f"no KVM: {reason}")
    return AccelChoice("kvm", reason, may_fall_back=requested == "auto")
