"""Host install/restore: pure checks and text edits, and whole installs on a fake host in a temporary tree."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from harness.errors import EXIT_INFRA, InfrastructureError, UsageError
from harness.hostops import boot, zipl
from harness.hostops.checks import (
    INITRAMFS_DRACUT,
    INITRAMFS_EXPLICIT,
    INITRAMFS_REPACK,
    LocalKernel,
    check_image_arch,
    check_kexec,
    check_modules_conflict,
    check_space,
    choose_initramfs,
    pv_info,
)
from harness.hostops.install import install_kernel, local_kernel, modules_tarball
from harness.hostops.probe import FsInfo, HostProbe, parse_probe
from harness.hostops.record import HostLayout, InstallRecord, ZiplChange
from harness.hostops.restore import _safe_to_remove, restore
from harness.targets.base import CommandResult
from harness.targets.local import LocalTarget

RELEASE = "6.12.48-kvmh"
UTS = "#7 SMP Tue Nov 18 10:00:00 UTC 2025"
REPACK = Path(__file__).resolve().parents[2] / "harness" / "hostops" / "repack_root.py"


# ---------------------------------------------------------------- fake kernel images


def s390x_image(path: Path, release: str = RELEASE, uts: str = UTS) -> Path:
    """Just enough of an s390x bzImage: the IPL PSW and CCWs, and the decompressor's version string."""
    head = bytes.fromhex("00080000" "80010000" "0200001860000050" "0200006860000050")
    body = head + b"\0" * 4096 + f"{release} (builder@buildhost) {uts}".encode() + b"\0" + os.urandom(8192)
    path.write_bytes(body)
    return path


def x86_bzimage(path: Path) -> Path:
    data = bytearray(0x4000)
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, 0x020F)
    struct.pack_into("<H", data, 0x236, 1)
    struct.pack_into("<H", data, 0x20E, 0x1000 - 0x200)  # kernel_version: offset of the version string - 0x200
    data[0x1000:0x1000 + 40] = f"{RELEASE} (builder@buildhost) {UTS}"[:39].encode() + b"\0"
    path.write_bytes(bytes(data))
    return path


def modules_tree(root: Path, release: str = RELEASE) -> Path:
    rel = root / "lib" / "modules" / release
    (rel / "kernel" / "arch" / "s390" / "kvm").mkdir(parents=True)
    (rel / "kernel" / "arch" / "s390" / "kvm" / "kvm.ko").write_bytes(b"\x7fELF fake module" * 100)
    (rel / "modules.order").write_text("kernel/arch/s390/kvm/kvm.ko\n")
    (rel / "build").symlink_to("/nonexistent/build/tree")
    return root


# ---------------------------------------------------------------- a fake host


class FakeHost(LocalTarget):
    """A host whose files live in a temporary tree: ordinary shell commands run for real there, while
    the probe's host facts, kexec, zipl, initramfs tools and reboots are simulated."""

    def __init__(self, layout: HostLayout, fake_root: Path, **probe: str) -> None:
        super().__init__("ssh://root@fakehost:22")
        self.layout = layout
        self.fake_root = fake_root
        self.probe = {
            "arch": "s390x", "release": "6.1.0-old", "boot_id": "boot-1",
            "cmdline": "root=/dev/dasda1 BOOT_IMAGE=0 console=ttysclp0 kvmh.boot=stale crashkernel=\"196M\"",
            "kexec_load_disabled": "0", "memory_block_size": "yes", "systemd": "yes", "lockdown": "",
            "prot_virt_host": "1", "facilities": "0 1 2 158 161", "kvm": "yes", "root_fstype": "ext4",
            "tool_kexec": "/usr/sbin/kexec", "tool_systemctl": "/usr/bin/systemctl", "tool_setsid": "/usr/bin/setsid",
            "tool_python3": "/usr/bin/python3", "tool_zipl": "/usr/sbin/zipl", "tool_dracut": "/usr/bin/dracut",
            "zipl_conf": "yes",
        }
        self.probe.update(probe)
        self.state = {"release": "6.1.0-old", "version": "#1 SMP old", "cmdline": self.probe["cmdline"],
                      "boot_id": "boot-1"}
        self.commands: list[str] = []
        self.loaded: Optional[str] = None  # command line of the kernel kexec -l loaded
        self.reboot_started = False
        self.boots = True  # the reboot brings the new kernel up
        self.reachable_after = True
        self.boot_release = RELEASE
        self.fail: dict[str, str] = {}  # substring of a command -> stderr it fails with

    def run(self, command: str, timeout: float = 60.0, *, stdin: Optional[bytes] = None,
            on_output=None) -> CommandResult:
        self.commands.append(command)
        for needle, stderr in self.fail.items():
            if needle in command:
                return CommandResult(command, 1, "", stderr + "\n", 0.0)
        if 'echo "uid=$(id -u)"' in command:
            real = super().run(command, timeout)
            lines = [line for line in real.stdout.splitlines()
                     if line.partition("=")[0] not in self.probe and not line.startswith("tool_")]
            lines += [f"{key}={value}" for key, value in self.probe.items() if value is not None]
            return CommandResult(command, 0, "\n".join(lines) + "\n", "", 0.0)
        if command.startswith("uname -r; uname -v; cat /proc/cmdline"):
            s = self.state
            return CommandResult(command, 0, f"{s['release']}\n{s['version']}\n{s['cmdline']}\n{s['boot_id']}\n",
                                 "", 0.0)
        if "kexec -l " in command:
            self.loaded = command.split("--command-line=", 1)[1].strip().strip("'")
            return CommandResult(command, 0, "", "", 0.0)
        if "kexec -u" in command:
            return CommandResult(command, 0, "", "", 0.0)
        if command.startswith("du -skx /"):
            return CommandResult(command, 0, "20000\n", "", 0.0)
        if command.rstrip().endswith("; zipl"):
            conf = Path(self.layout.zipl_conf).read_text()
            if "[kvmh]" in conf:
                self.loaded = conf.split("[kvmh]")[1].split('parameters = "')[1].split('"')[0]
            return CommandResult(command, 0, "", "", 0.0)
        if any(word in command for word in ("systemctl kexec", "kexec -e", "systemctl reboot", "sync; reboot")):
            self.reboot_started = True
            return CommandResult(command, 0, "", "", 0.0)
        if "dracut --force" in command:
            out = command.split("dracut --force ", 1)[1].split()[0].strip("'")
            Path(out).write_bytes(b"dracut initramfs")
            return CommandResult(command, 0, "", "", 0.0)
        if "python3 - " in command and stdin is not None:
            command = command.replace("python3 - ", f"python3 - --root={self.fake_root} ")
        return super().run(command, timeout, stdin=stdin, on_output=on_output)

    def reconnect(self, deadline: float) -> None:
        if self.reboot_started and not self.reachable_after:
            time.sleep(max(0.0, deadline - time.monotonic()))
            raise InfrastructureError("cannot reach fakehost:22: connection refused")
        if self.reboot_started and self.boots:
            self.state = {"release": self.boot_release, "version": UTS,
                          "cmdline": self.loaded or "zipl-default-entry", "boot_id": "boot-2"}
            self.reboot_started = False


@pytest.fixture()
def layout(tmp_path: Path) -> HostLayout:
    root = tmp_path / "host"
    for sub in ("boot", "lib/modules", "var/lib", "etc"):
        (root / sub).mkdir(parents=True)
    return HostLayout(boot_dir=str(root / "boot"), modules_root=str(root / "lib/modules"),
                      state_dir=str(root / "var/lib/kvmh"), zipl_conf=str(root / "etc/zipl.conf"),
                      bls_dir=str(root / "boot/loader/entries"))


@pytest.fixture()
def fast_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot, "FIRST_WAIT_S", 0.0)
    monkeypatch.setattr(boot, "POLL_S", 0.05)
    for style in list(boot.SAME_BOOT_GRACE_S):
        monkeypatch.setitem(boot.SAME_BOOT_GRACE_S, style, 0.3)


def _host_files(layout: HostLayout) -> list[str]:
    root = Path(layout.boot_dir).parent
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def _fake_host(layout: HostLayout, tmp_path: Path, **probe: str) -> FakeHost:
    fake_root = tmp_path / "fake-root"
    (fake_root / "etc").mkdir(parents=True, exist_ok=True)
    (fake_root / "etc" / "hostname").write_text("fake\n")
    return FakeHost(layout, fake_root, **probe)


# ---------------------------------------------------------------- probe parsing and checks

PROBE_TEXT = """uid=0
user=root
arch=s390x
release=6.1.0-old
boot_id=0b8c
cmdline=root=/dev/dasda1 console=ttysclp0
kexec_load_disabled=0
memory_block_size=yes
systemd=yes
lockdown=[none] integrity confidentiality
prot_virt_host=1
facilities= 0 1 2 3 158 161
kvm=yes
root_fstype=ext4
mem_available_kb=4000000
tool_kexec=/usr/sbin/kexec
tool_python3=/usr/bin/python3
record=no
modules_exist=no
DIR=/boot /dev/dasda1 1000000 400000 600000 40% /boot
DIR=/lib/modules /dev/dasda2 8000000 1000000 7000000 13% /
DIR=/var/lib/kvmh /dev/dasda2 8000000 1000000 7000000 13% /
zipl_conf=yes
bls=no
"""


def test_parse_probe_reads_every_field() -> None:
    probe = parse_probe(PROBE_TEXT)
    assert (probe.uid, probe.arch, probe.release, probe.kexec_load_disabled) == (0, "s390x", "6.1.0-old", "0")
    assert probe.memory_block_size and probe.systemd and probe.kvm and probe.zipl_conf and not probe.bls
    assert probe.facilities == [0, 1, 2, 3, 158, 161]
    assert probe.tools == {"kexec": "/usr/sbin/kexec", "python3": "/usr/bin/python3"}
    assert probe.filesystems["/boot"] == FsInfo("/boot", "/dev/dasda1", "/boot", 600000)
    assert probe.filesystems["/lib/modules"].mount == "/"
    assert not probe.root_is_initramfs


def _probe(**changes: object) -> HostProbe:
    probe = parse_probe(PROBE_TEXT)
    for key, value in changes.items():
        setattr(probe, key, value)
    return probe


def test_check_kexec_names_each_missing_piece() -> None:
    assert check_kexec(_probe(), "h") == []
    with pytest.raises(InfrastructureError, match="kexec is not installed on h: install kexec-tools"):
        check_kexec(_probe(tools={}), "h")
    with pytest.raises(InfrastructureError, match="has no kexec support .*CONFIG_KEXEC"):
        check_kexec(_probe(kexec_load_disabled="missing"), "h")
    with pytest.raises(InfrastructureError, match=r"kexec is disabled on h \(kernel.kexec_load_disabled=1"):
        check_kexec(_probe(kexec_load_disabled="1"), "h")
    with pytest.raises(InfrastructureError, match="block_size_bytes.*CONFIG_MEMORY_HOTPLUG"):
        check_kexec(_probe(memory_block_size=False), "h")
    assert check_kexec(_probe(memory_block_size=False, arch="x86_64"), "h") == []
    warnings = check_kexec(_probe(lockdown="none [integrity] confidentiality"), "h")
    assert len(warnings) == 1 and "lockdown" in warnings[0]


def test_check_space_adds_up_directories_on_one_filesystem() -> None:
    probe = _probe()
    check_space(probe, {"/boot": 500_000, "/lib/modules": 3_000_000, "/var/lib/kvmh": 8}, "h")
    with pytest.raises(InfrastructureError) as info:
        check_space(probe, {"/boot": 590_000, "/lib/modules": 10, "/var/lib/kvmh": 8}, "h")
    message = str(info.value)
    assert "not enough space on h for /boot (filesystem /boot)" in message and "585 MiB free" in message
    # /lib/modules and the state directory share "/": their needs add up.
    with pytest.raises(InfrastructureError, match="/lib/modules, /var/lib/kvmh"):
        check_space(probe, {"/boot": 10, "/lib/modules": 3_400_000, "/var/lib/kvmh": 3_400_000}, "h")


def test_check_space_on_ramfs_root_uses_available_memory() -> None:
    ramfs = FsInfo("/boot", "rootfs", "/", 0)
    probe = _probe(root_fstype="rootfs", mem_available_kb=200_000,
                   filesystems={"/boot": ramfs, "/lib/modules": ramfs, "/var/lib/kvmh": ramfs})
    check_space(probe, {"/boot": 50_000, "/lib/modules": 50_000, "/var/lib/kvmh": 8}, "h")
    with pytest.raises(InfrastructureError, match="195 MiB free"):
        check_space(probe, {"/boot": 150_000, "/lib/modules": 50_000, "/var/lib/kvmh": 8}, "h")


def test_image_without_a_release_is_refused(layout: HostLayout, tmp_path: Path) -> None:
    host = _fake_host(layout, tmp_path)
    image = tmp_path / "stripped"
    image.write_bytes(bytes.fromhex("00080000" "80010000" "0200001860000050" "0200006860000050") + bytes(8192))
    with pytest.raises(InfrastructureError, match="cannot read the kernel release from .*stripped"):
        install_kernel(host, image, layout=layout)
    assert _host_files(layout) == []


def test_image_arch_check(tmp_path: Path) -> None:
    check_image_arch(s390x_image(tmp_path / "s390"), "s390x", "h")
    with pytest.raises(InfrastructureError) as info:
        check_image_arch(x86_bzimage(tmp_path / "bzImage"), "s390x", "ssh://root@h:22")
    assert str(info.value) == (f"{tmp_path / 'bzImage'} is an x86_64 kernel but ssh://root@h:22 is s390x: "
                               f"build the kernel for s390x (kvmh build --arch s390x)")
    junk = tmp_path / "junk"
    junk.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(InfrastructureError, match="is not a kernel image for s390x"):
        check_image_arch(junk, "s390x", "h")


def test_choose_initramfs_order(tmp_path: Path) -> None:
    kernel = LocalKernel(image=tmp_path / "k", arch="s390x", release=RELEASE, modules_dir=None)
    assert choose_initramfs(_probe(tools={"dracut": "/x"}), kernel, "h") == INITRAMFS_DRACUT
    assert choose_initramfs(_probe(root_fstype="rootfs", tools={"dracut": "/x", "python3": "/p"}),
                            kernel, "h") == INITRAMFS_REPACK
    with pytest.raises(InfrastructureError, match="neither dracut nor mkinitramfs"):
        choose_initramfs(_probe(tools={}), kernel, "h")
    with pytest.raises(InfrastructureError, match="no python3 to repack it"):
        choose_initramfs(_probe(root_fstype="tmpfs", tools={}), kernel, "h")
    kernel.initrd = tmp_path / "initrd"
    assert choose_initramfs(_probe(tools={}), kernel, "h") == INITRAMFS_EXPLICIT


def test_foreign_modules_directory_is_never_overwritten(tmp_path: Path) -> None:
    layout = HostLayout()
    kernel = LocalKernel(image=tmp_path / "k", arch="s390x", release=RELEASE, modules_dir=tmp_path)
    with pytest.raises(InfrastructureError, match=f"already has /lib/modules/{RELEASE}, which kvmh did not install"):
        check_modules_conflict(_probe(modules_exist=True), kernel, None, layout, "h")
    ours = InstallRecord(RELEASE, "kexec", "t", "", "", "", "", paths=[f"/lib/modules/{RELEASE}"])
    check_modules_conflict(_probe(modules_exist=True), kernel, ours, layout, "h")
    kernel.modules_dir = None
    check_modules_conflict(_probe(modules_exist=True), kernel, None, layout, "h")


def test_pv_info_reports_facilities_and_prot_virt() -> None:
    lines = pv_info(_probe())
    assert lines[0].startswith("prot_virt_host: 1")
    assert "facility 158 (ultravisor call): yes" in lines[1] and "facility 161 (secure execution): yes" in lines[1]
    assert "no" in pv_info(_probe(facilities=[1, 2]))[1]
    assert pv_info(_probe(arch="x86_64")) == ["protected virtualization: not applicable on x86_64"]


# ---------------------------------------------------------------- command lines and text edits


def test_compose_cmdline_keeps_the_host_options_and_adds_the_token() -> None:
    line = boot.compose_cmdline('root=/dev/dasda1 BOOT_IMAGE=0 initrd=/x foo="a b" kvmh.boot=old quiet',
                                "abc", "loglevel=7")
    assert line == 'root=/dev/dasda1 foo="a b" quiet loglevel=7 kvmh.boot=abc'
    assert boot.compose_cmdline("", "t") == "kvmh.boot=t"


def test_kexec_commands() -> None:
    cmd = boot.kexec_load_command("/boot/kvmh/r/vmlinuz", "/boot/kvmh/r/initrd.img", 'a b="c d" kvmh.boot=t')
    assert cmd == ("kexec -l /boot/kvmh/r/vmlinuz --initrd=/boot/kvmh/r/initrd.img "
                   "'--command-line=a b=\"c d\" kvmh.boot=t'")
    systemd = _probe(tools={"systemctl": "/bin/systemctl", "setsid": "/bin/setsid"})
    command, style = boot.kexec_exec_command(systemd)
    # Without the session's marks: the session keeper must not end the reboot when the connection closes.
    assert style == "systemctl" and command == ("(env -u KVMH_SESSION -u KVMH_CMD setsid sh -c 'sleep 1; "
                                                "systemctl kexec' </dev/null >/dev/null 2>&1 &)")
    command, style = boot.kexec_exec_command(_probe(systemd=False, tools={}))
    assert style == "kexec-e" and command.startswith("(env -u KVMH_SESSION -u KVMH_CMD nohup sh -c 'sleep 1; sync; ")


def test_image_uts_version(tmp_path: Path) -> None:
    assert boot.image_uts_version(s390x_image(tmp_path / "k")) == UTS
    junk = tmp_path / "junk"
    junk.write_bytes(b"no version string here" * 100)
    assert boot.image_uts_version(junk) is None


DEBIAN_ZIPL = """[defaultboot]
defaultmenu=menu

[debian]
target=/boot
image=/vmlinuz
ramdisk=/initrd.img
parameters=root=/dev/dasda1

:menu
target=/boot
1=debian
default=1
"""

RHEL_ZIPL = """[defaultboot]
defaultauto
prompt=1
timeout=5
target=/boot
"""


def test_zipl_section_is_added_before_menus_and_made_default() -> None:
    entry = zipl.BootEntry("/boot/kvmh/r/vmlinuz", "/boot/kvmh/r/initrd.img", "root=/dev/dasda1 kvmh.boot=t", "r")
    text = zipl.add_section(DEBIAN_ZIPL, entry)
    assert "default = kvmh" in text.split("[debian]")[0]
    section = text.split("[kvmh]")[1].split(":menu")[0]
    assert "target = /boot" in section and "image = /boot/kvmh/r/vmlinuz" in section
    assert 'parameters = "root=/dev/dasda1 kvmh.boot=t"' in section
    assert text.index("[kvmh]") < text.index(":menu")
    assert "[debian]\ntarget=/boot\nimage=/vmlinuz" in text
    # Adding again replaces the old section instead of duplicating it.
    assert zipl.add_section(text, entry).count("[kvmh]") == 1
    assert not zipl.uses_defaultauto(DEBIAN_ZIPL) and zipl.uses_defaultauto(RHEL_ZIPL)


def test_zipl_bls_entry_and_default() -> None:
    entry = zipl.BootEntry("/boot/kvmh/r/vmlinuz", None, "root=UUID=x kvmh.boot=t", "6.12.0")
    snippet = zipl.bls_entry(entry)
    assert snippet.splitlines()[0] == "title kvmh-6.12.0"
    assert "linux /boot/kvmh/r/vmlinuz" in snippet and "initrd" not in snippet
    text = zipl.set_default(RHEL_ZIPL, zipl.bls_title("6.12.0"))
    assert text.splitlines()[:3] == ["[defaultboot]", "default = kvmh-6.12.0", "defaultauto"]
    assert zipl.set_default(text, "other").count("default =") == 1


def test_record_round_trip_and_bad_versions() -> None:
    record = InstallRecord("r", "zipl", "tok", "c", "sha", "old", "now", paths=["/boot/kvmh/r"],
                           zipl=ZiplChange("/etc/zipl.conf", "/var/lib/kvmh/zipl.conf.orig"))
    again = InstallRecord.from_json(record.to_json())
    assert again == record and again.zipl.backup == "/var/lib/kvmh/zipl.conf.orig"
    with pytest.raises(ValueError, match="version 9"):
        InstallRecord.from_json(json.dumps({"version": 9}))


def test_restore_only_removes_paths_below_the_install_directories() -> None:
    layout = HostLayout()
    assert _safe_to_remove("/boot/kvmh/6.12", layout)
    assert _safe_to_remove("/lib/modules/6.12-kvmh", layout)
    assert _safe_to_remove("/boot/loader/entries/kvmh-6.12.conf", layout)
    for bad in ("/boot", "/boot/vmlinuz", "/lib/modules/", "/boot/kvmh/../../etc", "/etc/zipl.conf",
                "/boot/loader/entries/other.conf"):
        assert not _safe_to_remove(bad, layout), bad


def test_modules_tarball_leaves_out_build_links(tmp_path: Path) -> None:
    import io
    import tarfile

    rel = modules_tree(tmp_path / "staging") / "lib" / "modules" / RELEASE
    names = tarfile.open(fileobj=io.BytesIO(modules_tarball(rel))).getnames()
    assert "modules.order" in names and "kernel/arch/s390/kvm/kvm.ko" in names
    assert "build" not in names


def test_local_kernel_matches_image_and_modules(tmp_path: Path) -> None:
    image = s390x_image(tmp_path / "bzImage")
    kernel = local_kernel(image, modules_tree(tmp_path / "staging"))
    assert (kernel.arch, kernel.release) == ("s390x", RELEASE)
    assert kernel.modules_dir == tmp_path / "staging" / "lib" / "modules" / RELEASE and kernel.modules_kb > 0
    with pytest.raises(UsageError, match="are 6.1.0-other"):
        local_kernel(image, modules_tree(tmp_path / "other", "6.1.0-other"))
    with pytest.raises(UsageError, match="does not exist"):
        local_kernel(tmp_path / "missing", None)


# ---------------------------------------------------------------- the repack script


def _read_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    entries, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        pos = (name_start + namesize + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries.append((name, mode, body))


def test_repack_root_packs_the_tree_parents_first(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "dropbear").mkdir(parents=True)
    (root / "etc" / "dropbear" / "host_key").write_bytes(b"\x00\x01key")
    (root / "boot" / "kvmh" / "r").mkdir(parents=True)
    (root / "boot" / "kvmh" / "r" / "vmlinuz").write_bytes(b"big kernel")
    (root / "bin").symlink_to("usr/bin")
    (root / "dev").mkdir()
    out = tmp_path / "initrd.img"
    subprocess.run([sys.executable, "-", f"--root={root}", str(out), "/boot/kvmh"], input=REPACK.read_bytes(),
                   check=True)
    entries = _read_newc(out.read_bytes())
    names = [name for name, _mode, _body in entries]
    assert "etc/dropbear/host_key" in names and "boot" in names
    assert not any(name.startswith("boot/kvmh") for name in names)
    assert dict((n, b) for n, _m, b in entries)["etc/dropbear/host_key"] == b"\x00\x01key"
    assert dict((n, b) for n, _m, b in entries)["bin"] == b"usr/bin"
    assert "dev/console" in names
    for name in names:
        if "/" in name:
            assert names.index(name.rsplit("/", 1)[0]) < names.index(name), name


# ---------------------------------------------------------------- whole installs on the fake host


def test_kexec_install_boots_verifies_and_restores(layout: HostLayout, tmp_path: Path, fast_boot: None) -> None:
    host = _fake_host(layout, tmp_path)
    image = s390x_image(tmp_path / "bzImage")
    record = install_kernel(host, image, modules_tree(tmp_path / "staging"), layout=layout, boot_timeout=10)
    kdir = Path(layout.kernel_dir(RELEASE))
    assert (kdir / "vmlinuz").read_bytes() == image.read_bytes()
    assert (kdir / "initrd.img").read_bytes() == b"dracut initramfs"
    assert (Path(layout.modules_dir(RELEASE)) / "kernel/arch/s390/kvm/kvm.ko").is_file()
    assert record.status == "booted" and record.initramfs == INITRAMFS_DRACUT
    assert record.cmdline == f'root=/dev/dasda1 console=ttysclp0 crashkernel="196M" kvmh.boot={record.token}'
    assert host.loaded == record.cmdline
    saved = InstallRecord.from_json(Path(layout.record_path).read_text())
    assert saved.status == "booted" and saved.paths == [str(kdir), layout.modules_dir(RELEASE)]
    kexec = [c for c in host.commands if "kexec -l" in c][0]
    assert f"--initrd={kdir}/initrd.img" in kexec
    assert any("systemctl kexec" in c for c in host.commands)

    result = restore(host, layout)
    assert result.was_running_installed and not result.rebooted
    assert sorted(result.removed) == sorted(saved.paths)
    assert _host_files(layout) == []
    assert restore(host, layout).nothing_to_do


def test_wrong_architecture_changes_nothing(layout: HostLayout, tmp_path: Path) -> None:
    host = _fake_host(layout, tmp_path)
    with pytest.raises(InfrastructureError) as info:
        install_kernel(host, x86_bzimage(tmp_path / "bzImage"), layout=layout)
    assert "is an x86_64 kernel but ssh://root@fakehost:22 is s390x" in str(info.value)
    assert info.value.exit_status == EXIT_INFRA
    assert _host_files(layout) == []
    assert not any("mkdir" in c or "kexec -l" in c for c in host.commands)


@pytest.mark.parametrize("probe, message", [
    ({"kexec_load_disabled": "1"}, "kexec is disabled on ssh://root@fakehost:22"),
    ({"tool_kexec": None}, "kexec is not installed"),
    ({"kexec_load_disabled": "missing"}, "has no kexec support"),
])
def test_kexec_prerequisites_fail_before_any_change(layout: HostLayout, tmp_path: Path, probe: dict,
                                                    message: str) -> None:
    host = _fake_host(layout, tmp_path, **probe)
    with pytest.raises(InfrastructureError, match=message):
        install_kernel(host, s390x_image(tmp_path / "bzImage"), layout=layout)
    assert _host_files(layout) == []


def test_full_boot_filesystem_is_refused_before_copying(layout: HostLayout, tmp_path: Path) -> None:
    host = _fake_host(layout, tmp_path)
    boot_dir = layout.boot_dir
    original_run = host.run

    def run(command: str, timeout: float = 60.0, **kw):  # type: ignore[no-untyped-def]
        result = original_run(command, timeout, **kw)
        if 'echo "uid=$(id -u)"' in command:
            lines = [line if not line.startswith(f"DIR={boot_dir} ") else
                     f"DIR={boot_dir} tmpfs 1024 1000 24 98% {boot_dir}" for line in result.stdout.splitlines()]
            result = CommandResult(command, 0, "\n".join(lines) + "\n", "", 0.0)
        return result

    host.run = run  # type: ignore[method-assign]
    with pytest.raises(InfrastructureError) as info:
        install_kernel(host, s390x_image(tmp_path / "bzImage"), layout=layout)
    assert f"not enough space on ssh://root@fakehost:22 for {boot_dir} (filesystem {boot_dir})" in str(info.value)
    assert _host_files(layout) == []


def test_failed_copy_rolls_back_everything(layout: HostLayout, tmp_path: Path) -> None:
    host = _fake_host(layout, tmp_path)
    host.fail["tar -xzf"] = "tar: kvm.ko: Cannot write: No space left on device"
    with pytest.raises(InfrastructureError) as info:
        install_kernel(host, s390x_image(tmp_path / "bzImage"), modules_tree(tmp_path / "staging"), layout=layout)
    message = str(info.value)
    assert message.startswith(f"copying the modules to {layout.modules_dir(RELEASE)} failed on "
                              f"ssh://root@fakehost:22: tar: kvm.ko: Cannot write: No space left on device")
    assert "rolled back" in message and "\n" not in message
    assert _host_files(layout) == []
    assert not Path(layout.kernel_dir(RELEASE)).exists()


def test_failed_kexec_load_rolls_back(layout: HostLayout, tmp_path: Path) -> None:
    host = _fake_host(layout, tmp_path)
    host.fail["kexec -l"] = "kexec_load failed: Operation not permitted"
    with pytest.raises(InfrastructureError, match="kexec -l failed on .*Operation not permitted; rolled back"):
        install_kernel(host, s390x_image(tmp_path / "bzImage"), layout=layout)
    assert _host_files(layout) == []


def test_host_that_never_returns_says_how_it_comes_back(layout: HostLayout, tmp_path: Path,
                                                        fast_boot: None) -> None:
    host = _fake_host(layout, tmp_path)
    host.reachable_after = False
    with pytest.raises(InfrastructureError) as info:
        install_kernel(host, s390x_image(tmp_path / "bzImage"), layout=layout, deadline=time.monotonic() + 1.0)
    message = str(info.value)
    assert message.startswith("ssh://root@fakehost:22 did not answer SSH within")
    assert "IPL of its default entry (or a hard reset)" in message and "kexec did not change the boot" in message
    assert "kvmh host restore --target ssh://root@fakehost:22" in message
    # The files stay, listed in the record, so that restore can remove them later.
    assert InstallRecord.from_json(Path(layout.record_path).read_text()).status == "loaded"


def test_host_that_does_not_reboot_is_rolled_back(layout: HostLayout, tmp_path: Path, fast_boot: None) -> None:
    host = _fake_host(layout, tmp_path)
    host.boots = False
    with pytest.raises(InfrastructureError, match="still runs the old kernel .* the installed files were removed"):
        install_kernel(host, s390x_image(tmp_path / "bzImage"), layout=layout, boot_timeout=10)
    assert _host_files(layout) == []


def test_wrong_kernel_after_reboot_is_reported(layout: HostLayout, tmp_path: Path, fast_boot: None) -> None:
    host = _fake_host(layout, tmp_path)
    host.boot_release = "6.1.0-old"
    with pytest.raises(InfrastructureError, match=f"runs release 6.1.0-old, not the installed {RELEASE}"):
        install_kernel(host, s390x_image(tmp_path / "bzImage"), layout=layout, boot_timeout=10)


def test_initramfs_host_gets_its_root_repacked(layout: HostLayout, tmp_path: Path, fast_boot: None) -> None:
    host = _fake_host(layout, tmp_path, root_fstype="rootfs", tool_dracut=None)
    record = install_kernel(host, s390x_image(tmp_path / "bzImage"), layout=layout, boot_timeout=10)
    assert record.initramfs == INITRAMFS_REPACK
    initrd = Path(layout.kernel_dir(RELEASE)) / "initrd.img"
    names = [name for name, _m, _b in _read_newc(initrd.read_bytes())]
    assert "etc/hostname" in names and "dev/console" in names


def test_a_repacked_host_root_is_readable_by_root_only(layout: HostLayout, tmp_path: Path,
                                                       fast_boot: None) -> None:
    host = _fake_host(layout, tmp_path, root_fstype="rootfs", tool_dracut=None)
    old = os.umask(0o022)
    try:
        install_kernel(host, s390x_image(tmp_path / "bzImage"), layout=layout, boot_timeout=10)
    finally:
        os.umask(old)
    kdir = Path(layout.kernel_dir(RELEASE))
    # The initramfs holds the host's /etc/shadow and SSH host keys.
    assert stat.S_IMODE((kdir / "initrd.img").stat().st_mode) == 0o600
    assert stat.S_IMODE(kdir.stat().st_mode) == 0o700
    assert stat.S_IMODE(kdir.parent.stat().st_mode) == 0o700


def test_zipl_install_and_restore(layout: HostLayout, tmp_path: Path, fast_boot: None) -> None:
    Path(layout.zipl_conf).write_text(DEBIAN_ZIPL)
    host = _fake_host(layout, tmp_path)
    record = install_kernel(host, s390x_image(tmp_path / "bzImage"), method="zipl", layout=layout,
                            boot_timeout=10, cmdline="root=/dev/dasda1")
    kdir = layout.kernel_dir(RELEASE)
    conf = Path(layout.zipl_conf).read_text()
    assert "default = kvmh" in conf and f"image = {kdir}/vmlinuz" in conf
    assert f'parameters = "root=/dev/dasda1 kvmh.boot={record.token}"' in conf
    assert record.zipl is not None and Path(record.zipl.backup).read_text() == DEBIAN_ZIPL
    assert any(c.rstrip().endswith("; zipl") for c in host.commands)
    assert any("systemctl reboot" in c for c in host.commands)
    assert not any("kexec -l" in c for c in host.commands)

    restore(host, layout)
    assert Path(layout.zipl_conf).read_text() == DEBIAN_ZIPL
    assert _host_files(layout) == ["etc/zipl.conf"]


def test_zipl_on_a_host_that_is_not_s390x(layout: HostLayout, tmp_path: Path) -> None:
    host = _fake_host(layout, tmp_path, arch="x86_64")
    with pytest.raises(InfrastructureError, match="--zipl is for s390x hosts"):
        install_kernel(host, x86_bzimage(tmp_path / "bzImage"), method="zipl", layout=layout)


# ---------------------------------------------------------------- nested QEMU on the host


def test_nested_skip_reasons() -> None:
    from harness.targets.nested_qemu import NestedHostInfo, nested_skip_reason

    assert nested_skip_reason(NestedHostInfo("s390x", False, "/usr/bin/qemu-system-s390x", 4)) == \
        "host has no /dev/kvm"
    assert "no qemu-system-s390x" in nested_skip_reason(NestedHostInfo("s390x", True, "", 4))
    assert "needs s390x" in nested_skip_reason(NestedHostInfo("x86_64", True, "/q", 4))
    assert nested_skip_reason(NestedHostInfo("s390x", True, "/usr/bin/qemu-system-s390x", 4)) is None


def test_nested_probe_on_this_machine_gives_a_reason_or_none() -> None:
    from harness.targets.nested_qemu import nested_skip_reason, probe_nested

    info = probe_nested(LocalTarget())
    assert info.arch == os.uname().machine and info.cpus >= 1
    assert (nested_skip_reason(info) is None) == (info.arch == "s390x" and info.kvm and bool(info.qemu))


def test_nested_qemu_command_line_is_the_qemu_targets_with_kvm_and_a_console_file() -> None:
    from harness.targets.nested_qemu import nested_qemu_argv
    from harness.targets.spec import TargetOptions

    argv = nested_qemu_argv("s390x", TargetOptions(memory_mb=1024, extra_cmdline="kvmh.x=1"),
                            "/var/tmp/kvmh-nested/g.1", 41234, host_cpus=16, binary="/usr/bin/qemu-system-s390x")
    assert argv[0] == "/usr/bin/qemu-system-s390x"
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-machine") + 1] == "s390-ccw-virtio"
    assert argv[argv.index("-chardev") + 1] == "file,id=con0,path=/var/tmp/kvmh-nested/g.1/console.log"
    assert "hostfwd=tcp:127.0.0.1:41234-:22" in argv[argv.index("-netdev") + 1]
    assert argv[argv.index("-kernel") + 1] == "/var/tmp/kvmh-nested/g.1/vmlinuz"
    assert argv[argv.index("-initrd") + 1] == "/var/tmp/kvmh-nested/g.1/initrd.img"
    assert argv[argv.index("-smp") + 1] == "16" and argv[argv.index("-m") + 1] == "1024"
    assert "kvmh.x=1" in argv[argv.index("-append") + 1] and "-no-reboot" in argv


def test_nested_target_refuses_a_host_without_kvm(tmp_path: Path) -> None:
    from harness.targets.nested_qemu import NestedQemuTarget

    class NoKvmHost(LocalTarget):
        def run(self, command: str, timeout: float = 60.0, **kw):  # type: ignore[no-untyped-def]
            if command.startswith("echo arch="):
                return CommandResult(command, 0, "arch=s390x\nkvm=no\nqemu=/usr/bin/qemu-system-s390x\ncpus=2\n",
                                     "", 0.0)
            raise AssertionError(f"nothing may run on the host after the probe: {command}")

    host = NoKvmHost("ssh://root@lpar:22")
    nested = NestedQemuTarget(host, image=None)
    assert nested.skip_reason() == "host has no /dev/kvm"
    with pytest.raises(InfrastructureError, match="cannot run a nested guest on ssh://root@lpar:22: host has no"):
        nested.start()
