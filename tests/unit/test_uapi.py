"""harness.kvm.uapi: ioctl encoding, struct layouts, names; the ABI comparison reports exactly what differs."""

from __future__ import annotations

import ctypes

import pytest

from harness.kvm import abi_check, uapi


def test_pv_command_number_matches_the_documented_value() -> None:
    assert uapi.KVM_S390_PV_COMMAND == 0xC020AEC5


def test_generic_encoding_bit_fields() -> None:
    request = uapi.IOC(uapi.IOC_READ | uapi.IOC_WRITE, 0xAE, 0xC5, 32)
    assert request >> 30 == 3
    assert (request >> 16) & 0x3FFF == 32
    assert (request >> 8) & 0xFF == 0xAE
    assert request & 0xFF == 0xC5
    assert uapi.ioc_decode(request) == (3, 0xAE, 0xC5, 32)


@pytest.mark.parametrize("name, direction, nr, size", [
    ("KVM_GET_API_VERSION", uapi.IOC_NONE, 0x00, 0),
    ("KVM_CREATE_VM", uapi.IOC_NONE, 0x01, 0),
    ("KVM_CHECK_EXTENSION", uapi.IOC_NONE, 0x03, 0),
    ("KVM_CREATE_VCPU", uapi.IOC_NONE, 0x41, 0),
    ("KVM_SET_USER_MEMORY_REGION", uapi.IOC_WRITE, 0x46, 32),
    ("KVM_RUN", uapi.IOC_NONE, 0x80, 0),
    ("KVM_S390_PV_CPU_COMMAND", uapi.IOC_READ | uapi.IOC_WRITE, 0xD0, 32),
    ("KVM_SET_DEVICE_ATTR", uapi.IOC_WRITE, 0xE1, 24),
    ("KVM_HAS_DEVICE_ATTR", uapi.IOC_WRITE, 0xE3, 24),
])
def test_ioctl_numbers_decode_to_their_definition(name: str, direction: int, nr: int, size: int) -> None:
    assert uapi.ioc_decode(getattr(uapi, name)) == (direction, uapi.KVMIO, nr, size)


def test_struct_layouts() -> None:
    assert ctypes.sizeof(uapi.KvmPvCmd) == 32
    assert [(f, getattr(uapi.KvmPvCmd, f).offset) for f in ("cmd", "rc", "rrc", "data", "flags", "reserved")] == [
        ("cmd", 0), ("rc", 4), ("rrc", 6), ("data", 8), ("flags", 16), ("reserved", 20)]
    assert ctypes.sizeof(uapi.KvmUserspaceMemoryRegion) == 32
    assert uapi.KvmUserspaceMemoryRegion.userspace_addr.offset == 24
    assert ctypes.sizeof(uapi.KvmDeviceAttr) == 24
    assert uapi.KvmDeviceAttr.addr.offset == 16


def test_size_too_large_for_the_field_is_refused() -> None:
    with pytest.raises(ValueError, match="14 bits"):
        uapi.IOC(uapi.IOC_READ, uapi.KVMIO, 1, 1 << 14)


def test_pv_cmd_enum_and_aliases() -> None:
    assert [int(c) for c in uapi.PvCmd] == list(range(11))
    assert uapi.pv_cmd("prepare") == uapi.PvCmd.KVM_PV_ASYNC_CLEANUP_PREPARE == 9
    assert uapi.pv_cmd("KVM_PV_ASYNC_CLEANUP_PERFORM") == 10
    assert uapi.pv_cmd("disable") == 1
    with pytest.raises(ValueError, match="unknown PV command"):
        uapi.pv_cmd("reboot")


def test_caps_and_attributes() -> None:
    assert (uapi.KVM_CAP_S390_PROTECTED, uapi.KVM_CAP_S390_PROTECTED_DUMP,
            uapi.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE) == (180, 217, 224)
    assert (uapi.KVM_S390_VM_MEM_CTRL, uapi.KVM_S390_VM_MEM_LIMIT_SIZE) == (0, 2)


def test_errno_names() -> None:
    assert uapi.errno_name(22) == "EINVAL"
    assert uapi.errno_name(25) == "ENOTTY"
    assert uapi.errno_name(None) is None


def test_arch_handling() -> None:
    assert uapi.check_ioc_arch("amd64") == "x86_64"
    assert uapi.check_ioc_arch("s390") == "s390x"
    with pytest.raises(ValueError, match="ppc64le"):
        uapi.check_ioc_arch("ppc64le")


def test_abi_values_leave_s390_only_items_out_on_x86() -> None:
    s390 = uapi.abi_values("s390x")
    x86 = uapi.abi_values("x86_64")
    assert s390["KVM_S390_PV_COMMAND"] == 0xC020AEC5
    assert s390["KVM_PV_ASYNC_CLEANUP_PERFORM"] == 10
    assert s390["sizeof.kvm_pv_cmd"] == 32
    for key in ("KVM_S390_PV_COMMAND", "sizeof.kvm_pv_cmd", "KVM_PV_ENABLE", "KVM_S390_VM_MEM_CTRL"):
        assert key not in x86
    assert set(x86) < set(s390)


def test_compare_reports_exactly_the_perturbed_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    headers = uapi.abi_values("s390x")  # stands in for a probe that agrees with the module
    assert abi_check.compare_abi(uapi.abi_values("s390x"), headers) == []
    monkeypatch.setattr(uapi, "KVM_CAP_S390_PROTECTED_ASYNC_DISABLE", 225)
    problems = abi_check.compare_abi(uapi.abi_values("s390x"), headers)
    assert problems == ["KVM_CAP_S390_PROTECTED_ASYNC_DISABLE: python 0xe1 != headers 0xe0"]


def test_compare_reports_a_wrong_struct_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    headers = uapi.abi_values("s390x")

    class LongerReserved(ctypes.Structure):
        _fields_ = [("cmd", ctypes.c_uint32), ("rc", ctypes.c_uint16), ("rrc", ctypes.c_uint16),
                    ("data", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32 * 4)]

    monkeypatch.setitem(uapi.STRUCTS, "kvm_pv_cmd", (LongerReserved, True))
    problems = abi_check.compare_abi(uapi.abi_values("s390x"), headers)
    assert problems == ["sizeof.kvm_pv_cmd: python 0x28 != headers 0x20"]


def test_compare_reports_names_only_one_side_has() -> None:
    python = {"A": 1, "B": 2}
    headers = {"B": 2, "C": 3}
    assert abi_check.compare_abi(python, headers) == [
        "A: python 0x1, not printed by the header probe",
        "C: headers 0x3, missing in harness.kvm.uapi",
    ]


def test_probe_output_parsing() -> None:
    assert abi_check.parse_probe_output("A=1\n\nsizeof.x=32\n") == {"A": 1, "sizeof.x": 32}
    with pytest.raises(ValueError, match="not name=value"):
        abi_check.parse_probe_output("A=oops\n")
    with pytest.raises(ValueError, match="twice"):
        abi_check.parse_probe_output("A=1\nA=1\n")


def test_every_c_probe_key_is_a_python_key() -> None:
    """The C probe prints exactly the keys abi_values() defines (checked on the source, no compiler)."""
    import re

    source = "\n".join(ln for ln in abi_check.PROBE_SOURCE.read_text().splitlines()
                       if not ln.startswith("#define"))
    keys = set(re.findall(r"\bNUM\((\w+)\)", source))
    keys |= {f"sizeof.{s}" for s in re.findall(r"\bSIZE\((\w+)\)", source)}
    keys |= {f"offsetof.{s}.{f}" for s, f in re.findall(r"\bOFF\((\w+),\s*(\w+)\)", source)}
    assert keys == set(uapi.abi_values("s390x"))
