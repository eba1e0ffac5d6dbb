"""Architecture facts, accelerator choice and the QEMU command line (no guest is booted here)."""

from __future__ import annotations

import dataclasses
import os
import types
from pathlib import Path

import pytest

from harness import accel
from harness.arch import ArchSpec, get_arch
from harness.errors import InfrastructureError, UsageError
from harness.targets.qemu import QemuTarget, qemu_version
from harness.targets.spec import TargetOptions


def fake_image(tmp_path: Path) -> types.SimpleNamespace:
    kernel = tmp_path / "vmlinuz"
    initrd = tmp_path / "initrd.img"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    return types.SimpleNamespace(kernel=kernel, initrd=initrd, ssh_key=tmp_path / "key", host_key_pub="",
                                 image_hash="abc", kernel_release="6.12-test")


def test_get_arch_names_and_aliases():
    assert get_arch("s390x").machine == "s390-ccw-virtio"
    assert get_arch("amd64") is get_arch("x86_64")
    with pytest.raises(UsageError, match="unknown guest architecture 'arm64'"):
        get_arch("arm64")


def test_arch_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_arch("s390x").machine = "x"  # type: ignore[misc]


@pytest.mark.parametrize("name, binary, package, console, nic", [
    ("s390x", "qemu-system-s390x", "qemu-system-misc", "ttysclp0", "virtio-net-ccw"),
    ("x86_64", "qemu-system-x86_64", "qemu-system-x86", "ttyS0", "virtio-net-pci"),
])
def test_arch_facts(name, binary, package, console, nic):
    spec = get_arch(name)
    assert (spec.qemu_binary, spec.qemu_package, spec.console, spec.nic_device) == (binary, package, console, nic)
    assert spec.cpu("kvm") == "host"
    assert "panic=-1" in spec.cmdline


def test_s390x_tcg_cpu_has_no_vector_facility():
    # QEMU 7.2 TCG computes VCKSM wrongly, which breaks every inbound TCP checksum in the guest.
    cpu = get_arch("s390x").cpu("tcg")
    assert cpu.startswith("qemu,") and "vx=off" in cpu.split(",")
    assert get_arch("x86_64").cpu("tcg") == "max"


def test_kernel_cmdline_puts_console_first_and_extra_last():
    spec = get_arch("s390x")
    line = spec.kernel_cmdline("  rdinit=/nonexistent ")
    assert line.startswith("console=ttysclp0 ")
    assert line.endswith(" rdinit=/nonexistent")
    assert spec.kernel_cmdline() == "console=ttysclp0 " + " ".join(spec.cmdline)


def test_smp_is_capped_under_tcg_only():
    spec: ArchSpec = get_arch("s390x")
    assert spec.smp("tcg", None, 64) == 8
    assert spec.smp("kvm", None, 64) == 64
    assert spec.smp("tcg", 3, 64) == 3
    assert spec.smp("tcg", None, 0) == 1


def test_choose_tcg_when_requested_or_foreign(monkeypatch):
    assert accel.choose_accelerator("tcg", "s390x").name == "tcg"
    monkeypatch.setattr(accel, "host_arch", lambda: "x86_64")
    choice = accel.choose_accelerator("auto", "s390x")
    assert (choice.name, choice.may_fall_back) == ("tcg", False)
    assert "host is x86_64" in choice.reason
    with pytest.raises(UsageError, match="KVM cannot run a s390x guest on this x86_64 host"):
        accel.choose_accelerator("kvm", "s390x")
    with pytest.raises(UsageError, match="unknown accelerator 'hvf'"):
        accel.choose_accelerator("hvf", "s390x")


def test_choose_without_usable_kvm(monkeypatch, tmp_path):
    monkeypatch.setattr(accel, "host_arch", lambda: "x86_64")
    missing = str(tmp_path / "no-kvm")
    choice = accel.choose_accelerator("auto", "x86_64", device=missing)
    assert choice.name == "tcg" and "cannot open" in choice.reason
    with pytest.raises(InfrastructureError, match="KVM requested but cannot open"):
        accel.choose_accelerator("kvm", "x86_64", device=missing)
    not_kvm = tmp_path / "file"
    not_kvm.write_text("")
    usable, reason = accel.kvm_status(str(not_kvm))
    assert not usable and reason.endswith("is not a KVM device: Inappropriate ioctl for device")


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no accessible /dev/kvm on this host")
def test_auto_picks_kvm_with_fallback_when_kvm_works(monkeypatch):
    usable, reason = accel.kvm_status()
    if not usable:
        pytest.skip(f"/dev/kvm does not work here: {reason}")
    choice = accel.choose_accelerator("auto", accel.host_arch())
    assert (choice.name, choice.may_fall_back) == ("kvm", True)
    assert accel.choose_accelerator("kvm", accel.host_arch()).may_fall_back is False


def test_qemu_argv(tmp_path):
    options = TargetOptions(memory_mb=1024, smp=2, extra_cmdline="quiet")
    target = QemuTarget("s390x", options, image=fake_image(tmp_path))
    argv = target.qemu_argv("/usr/bin/qemu-system-s390x", "tcg", 40022)

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert argv[0] == "/usr/bin/qemu-system-s390x"
    assert value("-machine") == "s390-ccw-virtio" and value("-accel") == "tcg"
    assert value("-cpu") == "qemu,vx=off,vxeh=off"
    assert (value("-m"), value("-smp")) == ("1024", "2")
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert value("-netdev") == "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
    assert "virtio-net-ccw,netdev=n0" in argv
    assert value("-append") == "console=ttysclp0 panic=-1 loglevel=7 quiet"
    assert value("-kernel") == str(tmp_path / "vmlinuz")


def test_missing_qemu_binary_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    target = QemuTarget("s390x", TargetOptions(artifacts_dir=tmp_path / "art"), image=fake_image(tmp_path))
    with pytest.raises(InfrastructureError,
                       match="qemu-system-s390x not found: install the Debian package qemu-system-misc"):
        target.start()
    target.close()


@pytest.fixture
def fake_qemu(monkeypatch, tmp_path):
    """A PATH with a qemu-system-s390x that must never be run."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    qemu = bindir / "qemu-system-s390x"
    qemu.write_text("#!/bin/sh\necho 'must not run' >&2\nexit 99\n")
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_missing_kernel_path_is_a_usage_error(fake_qemu, tmp_path):
    target = QemuTarget("s390x", TargetOptions(kernel=tmp_path / "nope" / "bzImage"))
    with pytest.raises(UsageError, match=r"kernel image .*nope/bzImage does not exist"):
        target.start()
    target.close()


def test_garbage_kernel_is_a_usage_error(fake_qemu, tmp_path):
    garbage = tmp_path / "bzImage"
    garbage.write_bytes(os.urandom(4096))
    target = QemuTarget("s390x", TargetOptions(kernel=garbage))
    with pytest.raises(UsageError, match=rf"{garbage} is not a kernel image, not a s390x kernel: .*arch/s390/boot"):
        target.start()


def test_x86_kernel_for_s390x_guest_is_named(fake_qemu, tmp_path):
    bzimage = bytearray(0x400)
    bzimage[0x1FE:0x200] = b"\x55\xaa"
    bzimage[0x202:0x206] = b"HdrS"
    bzimage[0x206:0x208] = (0x20F).to_bytes(2, "little")
    bzimage[0x236:0x238] = (1).to_bytes(2, "little")  # XLF_KERNEL_64
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(bzimage))
    target = QemuTarget("s390x", TargetOptions(kernel=path))
    with pytest.raises(UsageError, match="is an x86_64 kernel, not a s390x kernel"):
        target.start()


def test_close_before_start_is_harmless(tmp_path):
    target = QemuTarget("x86_64", TargetOptions(), image=fake_image(tmp_path))
    target.close()
    target.close()
    with pytest.raises(InfrastructureError, match="not started"):
        target.run("true")


def test_qemu_version_of_missing_binary_is_empty():
    assert qemu_version("/nonexistent/qemu-system-s390x") == ""
