"""The KVM userspace ABI the scenarios use, in ctypes: ioctl encoding, structs, ioctl/capability numbers.

Stdlib only and free of harness imports: this module is shipped to targets inside the agent bundle
(see ``harness.kvm.bundle``), so every number here exists exactly once.  ``abi_values(arch)`` lists every
number, size and offset by name; ``tests/integration/test_abi_headers.py`` compares that list with a C probe
compiled against real kernel uapi headers.
"""

from __future__ import annotations

import ctypes
import enum
import errno as _errno
from typing import Dict, Optional, Tuple

try:  # inside the harness package
    from ..arch.aliases import canonical
except ImportError:
    try:  # shipped in the agent's zipapp, which carries harness/arch/aliases.py as arch_aliases.py
        from arch_aliases import canonical  # type: ignore[no-redef]
    except ImportError:  # run as a script from the source tree (python -I harness/kvm/agent.py)
        import os as _os
        import sys as _sys

        _sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), _os.pardir, "arch"))
        from aliases import canonical  # type: ignore[no-redef]

# --- ioctl request encoding (include/uapi/asm-generic/ioctl.h) ---------------------------------------

IOC_NRBITS = 8
IOC_TYPEBITS = 8
IOC_SIZEBITS = 14
IOC_DIRBITS = 2
IOC_NRSHIFT = 0
IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS  # 8
IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS  # 16
IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS  # 30
IOC_NONE = 0
IOC_WRITE = 1
IOC_READ = 2

# Architectures whose ioctl numbers use the asm-generic layout above (powerpc, mips, sparc and alpha differ).
GENERIC_IOC_ARCHES = ("x86_64", "s390x", "aarch64", "riscv64")
def normalise_arch(arch: str) -> str:
    """Map uname/Debian/kernel spellings (amd64, s390, arm64) to the harness's (x86_64, s390x, aarch64)."""
    return canonical(arch)


def check_ioc_arch(arch: str) -> str:
    """Return the normalised arch, or raise ValueError if its ioctl layout is not the generic one."""
    arch = normalise_arch(arch)
    if arch not in GENERIC_IOC_ARCHES:
        raise ValueError(f"ioctl encoding for {arch!r} is not modelled: supported {', '.join(GENERIC_IOC_ARCHES)}")
    return arch


def _size_of(size: object) -> int:
    return size if isinstance(size, int) else ctypes.sizeof(size)  # type: ignore[arg-type]


def IOC(direction: int, type_: int, nr: int, size: int) -> int:  # noqa: N802 - the kernel's macro name
    """Encode an ioctl request: dir bits 30-31, size 16-29, type 8-15, nr 0-7."""
    if not 0 <= size < (1 << IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {IOC_SIZEBITS} bits")
    return (direction << IOC_DIRSHIFT) | (size << IOC_SIZESHIFT) | (type_ << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT)


def IO(type_: int, nr: int) -> int:  # noqa: N802
    return IOC(IOC_NONE, type_, nr, 0)


def IOW(type_: int, nr: int, size: object) -> int:  # noqa: N802
    return IOC(IOC_WRITE, type_, nr, _size_of(size))


def IOWR(type_: int, nr: int, size: object) -> int:  # noqa: N802
    return IOC(IOC_READ | IOC_WRITE, type_, nr, _size_of(size))


def ioc_decode(request: int) -> Tuple[int, int, int, int]:
    """Split a request into (dir, type, nr, size)."""
    return (
        (request >> IOC_DIRSHIFT) & ((1 << IOC_DIRBITS) - 1),
        (request >> IOC_TYPESHIFT) & ((1 << IOC_TYPEBITS) - 1),
        (request >> IOC_NRSHIFT) & ((1 << IOC_NRBITS) - 1),
        (request >> IOC_SIZESHIFT) & ((1 << IOC_SIZEBITS) - 1),
    )


# --- structs (LP64 layout: identical sizes and offsets on x86_64 and s390x) --------------------------


class KvmPvCmd(ctypes.Structure):
    """``struct kvm_pv_cmd`` (arch/s390/include/uapi/asm/kvm.h)."""

    _fields_ = [
        ("cmd", ctypes.c_uint32),
        ("rc", ctypes.c_uint16),
        ("rrc", ctypes.c_uint16),
        ("data", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 3),
    ]


class KvmUserspaceMemoryRegion(ctypes.Structure):
    """``struct kvm_userspace_memory_region`` (include/uapi/linux/kvm.h)."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    ]


class KvmDeviceAttr(ctypes.Structure):
    """``struct kvm_device_attr`` (include/uapi/linux/kvm.h)."""

    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("group", ctypes.c_uint32),
        ("attr", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),
    ]


# struct kvm_run (the vCPU's mmap area): only the exit reason is read.
KVM_RUN_EXIT_REASON_OFFSET = 8

# C struct name -> (ctypes class, only in s390's asm/kvm.h)
STRUCTS: Dict[str, Tuple[type, bool]] = {
    "kvm_pv_cmd": (KvmPvCmd, True),
    "kvm_userspace_memory_region": (KvmUserspaceMemoryRegion, False),
    "kvm_device_attr": (KvmDeviceAttr, False),
}

# --- ioctls -------------------------------------------------------------------------------------------

KVMIO = 0xAE
KVM_API_VERSION = 12

KVM_GET_API_VERSION = IO(KVMIO, 0x00)
KVM_CREATE_VM = IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = IO(KVMIO, 0x04)
KVM_CREATE_VCPU = IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = IOW(KVMIO, 0x46, KvmUserspaceMemoryRegion)
KVM_RUN = IO(KVMIO, 0x80)
KVM_S390_PV_COMMAND = IOWR(KVMIO, 0xC5, KvmPvCmd)
KVM_S390_PV_CPU_COMMAND = IOWR(KVMIO, 0xD0, KvmPvCmd)
KVM_SET_DEVICE_ATTR = IOW(KVMIO, 0xE1, KvmDeviceAttr)
KVM_GET_DEVICE_ATTR = IOW(KVMIO, 0xE2, KvmDeviceAttr)
KVM_HAS_DEVICE_ATTR = IOW(KVMIO, 0xE3, KvmDeviceAttr)

IOCTL_NAMES = (
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_RUN", "KVM_S390_PV_COMMAND",
    "KVM_S390_PV_CPU_COMMAND", "KVM_SET_DEVICE_ATTR", "KVM_GET_DEVICE_ATTR", "KVM_HAS_DEVICE_ATTR",
)
# Their request numbers need struct kvm_pv_cmd, which only s390's headers declare.
S390_ONLY_IOCTLS = ("KVM_S390_PV_COMMAND", "KVM_S390_PV_CPU_COMMAND")

# --- capabilities (KVM_CHECK_EXTENSION) ---------------------------------------------------------------

KVM_CAP_USER_MEMORY = 3
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_S390_PROTECTED = 180
KVM_CAP_S390_PROTECTED_DUMP = 217
KVM_CAP_S390_PROTECTED_ASYNC_DISABLE = 224

CAP_NAMES = (
    "KVM_CAP_USER_MEMORY", "KVM_CAP_NR_VCPUS", "KVM_CAP_NR_MEMSLOTS", "KVM_CAP_MAX_VCPUS",
    "KVM_CAP_S390_PROTECTED", "KVM_CAP_S390_PROTECTED_DUMP", "KVM_CAP_S390_PROTECTED_ASYNC_DISABLE",
)

# --- s390 VM attributes (arch/s390/include/uapi/asm/kvm.h) --------------------------------------------

KVM_S390_VM_MEM_CTRL = 0
KVM_S390_VM_MEM_LIMIT_SIZE = 2
KVM_S390_NO_MEM_LIMIT = (1 << 64) - 1

S390_CONST_NAMES = ("KVM_S390_VM_MEM_CTRL", "KVM_S390_VM_MEM_LIMIT_SIZE", "KVM_S390_NO_MEM_LIMIT")

# --- PV commands ------------------------------------------------------------------------------------


class PvCmd(enum.IntEnum):
    """``enum pv_cmd_id`` (arch/s390/include/uapi/asm/kvm.h since 6.10; linux/kvm.h before)."""

    KVM_PV_ENABLE = 0
    KVM_PV_DISABLE = 1
    KVM_PV_SET_SEC_PARMS = 2
    KVM_PV_UNPACK = 3
    KVM_PV_VERIFY = 4
    KVM_PV_PREP_RESET = 5
    KVM_PV_UNSHARE_ALL = 6
    KVM_PV_INFO = 7
    KVM_PV_DUMP = 8
    KVM_PV_ASYNC_CLEANUP_PREPARE = 9
    KVM_PV_ASYNC_CLEANUP_PERFORM = 10


PV_CMD_SHORT = {cmd: cmd.name[len("KVM_PV_"):] for cmd in PvCmd}

# Ultravisor rc KVM reports for a set-aside (and for a PERFORM cut short by a fatal signal), with rrc 42.
UVC_RC_EXECUTED = 1
SET_ASIDE_RRC = 42


def pv_cmd(name_or_value: object) -> PvCmd:
    """Accept 9, "ASYNC_CLEANUP_PREPARE", "KVM_PV_ASYNC_CLEANUP_PREPARE" or "prepare"-style aliases."""
    if isinstance(name_or_value, int):
        return PvCmd(name_or_value)
    text = str(name_or_value).upper()
    aliases = {"PREPARE": "ASYNC_CLEANUP_PREPARE", "PERFORM": "ASYNC_CLEANUP_PERFORM"}
    text = aliases.get(text, text)
    if not text.startswith("KVM_PV_"):
        text = "KVM_PV_" + text
    try:
        return PvCmd[text]
    except KeyError:
        raise ValueError(f"unknown PV command {name_or_value!r}") from None


# --- errno names --------------------------------------------------------------------------------------


def errno_name(err: Optional[int]) -> Optional[str]:
    """``22`` -> ``"EINVAL"``; None stays None."""
    if err is None:
        return None
    return _errno.errorcode.get(err, f"E{err}")


# --- every number by name, for the header check -------------------------------------------------------


def abi_values(arch: str) -> Dict[str, int]:
    """Every size, offset, ioctl number, capability and enum value this module defines, keyed like the C probe.

    Keys: ``sizeof.<struct>``, ``offsetof.<struct>.<field>``, and plain macro/enumerator names.
    Items that only s390's uapi headers declare are left out for other architectures.
    """
    arch = check_ioc_arch(arch)
    s390 = arch == "s390x"
    values: Dict[str, int] = {"KVMIO": KVMIO, "KVM_API_VERSION": KVM_API_VERSION}
    for name, (cls, s390_only) in STRUCTS.items():
        if s390_only and not s390:
            continue
        values[f"sizeof.{name}"] = ctypes.sizeof(cls)
        for field_name, *_ in cls._fields_:  # type: ignore[attr-defined]
            values[f"offsetof.{name}.{field_name}"] = getattr(cls, field_name).offset
    values["offsetof.kvm_run.exit_reason"] = KVM_RUN_EXIT_REASON_OFFSET
    g = globals()
    for name in IOCTL_NAMES:
        if name in S390_ONLY_IOCTLS and not s390:
            continue
        values[name] = g[name]
    for name in CAP_NAMES:
        values[name] = g[name]
    if s390:
        for name in S390_CONST_NAMES:
            values[name] = g[name]
        for cmd in PvCmd:
            values[cmd.name] = int(cmd)
    return values
