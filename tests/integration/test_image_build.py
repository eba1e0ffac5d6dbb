"""Build the real s390x guest image from Debian trixie, check its content, and boot it under QEMU TCG."""

from __future__ import annotations

import gzip
import json
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from guest_images import GuestImage, build_image, looks_like_kernel
from guest_images.elf import ElfFile
from guest_images.kernels import kernel_release_of
from harness.debian import MIRROR
from tests.ci import need

pytestmark = pytest.mark.integration

MAX_INITRD_BYTES = 16 * 2**20


def _debian_reachable() -> bool:
    if shutil.which("dpkg") is None:
        return False
    mirror = urlsplit(MIRROR)
    try:
        socket.create_connection((mirror.hostname, mirror.port or 80), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def image() -> GuestImage:
    need(_debian_reachable(), f"no s390x guest image: needs dpkg and the Debian mirror {MIRROR}")
    started = time.monotonic()
    built = build_image("s390x")
    print(f"\ns390x image {built.image_hash[:16]}: build/lookup {time.monotonic() - started:.1f} s, "
          f"initrd {built.initrd.stat().st_size / 2**20:.1f} MiB")
    return built


def _newc_names(data: bytes) -> dict[str, int]:
    """name -> mode of every entry of a newc archive (read by position, not with the builder's code)."""
    names = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        mode = int(data[pos + 14:pos + 22], 16)
        size = int(data[pos + 54:pos + 62], 16)
        namesize = int(data[pos + 94:pos + 102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos = ((pos + 110 + namesize + 3) & ~3) + size
        pos = (pos + 3) & ~3
        if name == "TRAILER!!!":
            return names
        names[name] = mode


def test_image_files_and_metadata(image: GuestImage) -> None:
    assert image.arch == "s390x"
    assert looks_like_kernel(image.kernel, "s390x") and not looks_like_kernel(image.kernel, "x86_64")
    assert kernel_release_of(image.kernel, "s390x") == image.kernel_release
    assert image.kernel_release.startswith("6.12.") and image.kernel_release.endswith("-s390x")
    assert 0 < image.initrd.stat().st_size <= MAX_INITRD_BYTES
    assert image.host_key_pub.startswith("ssh-ed25519 AAAA")
    assert oct(image.ssh_key.stat().st_mode & 0o777) == oct(0o600)
    paramiko = pytest.importorskip("paramiko")
    paramiko.Ed25519Key.from_private_key_file(str(image.ssh_key))
    manifest = image.manifest()
    assert manifest["image_hash"] == image.image_hash
    assert manifest["packages"]["busybox"] and manifest["packages"]["dropbear-bin"]
    assert any(name.startswith("linux-image-6.12.") for name in manifest["packages"])


def test_initrd_content(image: GuestImage) -> None:
    entries = _newc_names(gzip.decompress(image.initrd.read_bytes()))
    release = image.kernel_release
    for name in ("init", "usr/bin/busybox", "usr/sbin/dropbear", "usr/bin/python3.13", "usr/sbin/kexec",
                 "usr/bin/kmod", "usr/lib/sftp-server", "etc/dropbear/dropbear_ed25519_host_key",
                 "root/.ssh/authorized_keys", "usr/lib/python3.13/json/__init__.py",
                 "usr/lib/python3.13/threading.py", "usr/lib/python3.13/ctypes/__init__.py",
                 f"usr/lib/modules/{release}/modules.dep.bin", "etc/inittab", "dev/console"):
        assert name in entries, name
    assert entries["init"] & 0o777 == 0o755
    assert any(n.startswith("usr/lib/python3.13/lib-dynload/_ctypes.") for n in entries)
    modules = {Path(n).name.split(".")[0] for n in entries if n.startswith(f"usr/lib/modules/{release}/kernel/")}
    assert {"virtio_net", "kvm", "net_failover", "failover"} <= modules
    for unwanted in ("usr/share/doc", "usr/share/man", "usr/lib/python3.13/test", "usr/lib/python3.13/idlelib",
                     "usr/lib/python3.13/ensurepip", "usr/lib/python3.13/tkinter"):
        assert not any(n == unwanted or n.startswith(unwanted + "/") for n in entries), unwanted
    for link in ("bin", "sbin", "lib"):
        assert entries[link] & 0o170000 == 0o120000, link


def test_rootfs_binaries_are_s390x_and_complete(image: GuestImage) -> None:
    root = image.root
    for rel in ("usr/sbin/dropbear", "usr/bin/python3.13", "usr/sbin/kexec", "usr/bin/busybox",
                "usr/lib/openssh/sftp-server"):
        elf = ElfFile((root / rel).read_bytes())
        assert elf.machine == 22 and elf.endian == ">", rel
    guest_manifest = json.loads((root / "etc/kvmh/image.json").read_text())
    assert guest_manifest["image_hash"] == image.image_hash
    assert (root / "etc/kvmh/modules").read_text().split() == ["virtio_net", "kvm"]
    authorized = (root / "root/.ssh/authorized_keys").read_text().split()
    assert authorized[:2] == image.ssh_key.with_name(image.ssh_key.name + ".pub").read_text().split()[:2]


def test_cached_build_is_fast_and_identical(image: GuestImage) -> None:
    started = time.monotonic()
    again = build_image("s390x")
    elapsed = time.monotonic() - started
    print(f"\ncached s390x build: {elapsed:.3f} s")
    assert again == image
    assert elapsed < 5.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("qemu-system-s390x") is None,
                    reason="qemu-system-s390x not installed (apt-get install qemu-system-misc)")
def test_boots_to_ssh_and_python(image: GuestImage, tmp_path: Path) -> None:
    paramiko = pytest.importorskip("paramiko")
    port = _free_port()
    cmd = ["qemu-system-s390x", "-M", "s390-ccw-virtio", "-cpu", "qemu,vx=off", "-m", "1024", "-smp", "2",
           "-nographic", "-no-reboot", "-kernel", str(image.kernel), "-initrd", str(image.initrd),
           "-append", "console=ttysclp0 panic=-1",
           "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
           "-device", "virtio-net-ccw,netdev=n0"]
    started = time.monotonic()
    qemu = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    console = b""

    def read_console_until(marker: bytes, timeout: float) -> bool:
        nonlocal console
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([qemu.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(qemu.stdout.fileno(), 65536)
                if not chunk:
                    return False
                console += chunk
                if marker in console:
                    return True
        return False

    try:
        assert read_console_until(b"KVMH-READY", 240), console.decode(errors="replace")[-3000:]
        print(f"\nboot to KVMH-READY: {time.monotonic() - started:.1f} s")
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(image.known_hosts_line("127.0.0.1", port) + "\n")
        client = paramiko.SSHClient()
        client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=port, username="root", key_filename=str(image.ssh_key),
                       look_for_keys=False, allow_agent=False, timeout=30, banner_timeout=60)
        try:
            _, out, err = client.exec_command(
                "python3 -c 'import json, ctypes, threading, sqlite3, hashlib, ssl; "
                "print(json.dumps([ctypes.sizeof(ctypes.c_long), threading.active_count()]))'; "
                "uname -r; cat /proc/sys/kernel/hostname", timeout=120)
            lines = out.read().decode().split()
            assert out.channel.recv_exit_status() == 0, err.read().decode()
            assert lines == ["[8,", "1]", image.kernel_release, "kvmh-s390x"]
            sftp = client.open_sftp()
            with sftp.open("/tmp/probe", "wb") as handle:
                handle.write(b"\x00\xffkvmh")
            assert sftp.open("/tmp/probe", "rb").read() == b"\x00\xffkvmh"
            sftp.close()
            _, out, _ = client.exec_command("lsmod | cut -d' ' -f1; ip -4 addr show eth0", timeout=60)
            text = out.read().decode()
            assert "virtio_net" in text and "10.0.2.15/24" in text
        finally:
            client.close()
        qemu.stdin.write(b"echo console-$((6*7))\n")
        qemu.stdin.flush()
        assert read_console_until(b"console-42", 30), console.decode(errors="replace")[-2000:]
        qemu.stdin.write(b"poweroff\n")
        qemu.stdin.flush()
        assert qemu.wait(timeout=60) == 0
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()


def test_two_builds_from_empty_caches_are_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The committed lock makes the image reproducible: same identity and same root tree on a fresh cache."""
    need(_debian_reachable(), f"no s390x guest image: needs dpkg and the Debian mirror {MIRROR}")
    built = []
    for name in ("first", "second"):
        monkeypatch.setenv("KVMH_CACHE", str(tmp_path / name))
        image = build_image("s390x")
        assert str(image.initrd).startswith(str(tmp_path / name)), "each build had its own empty cache"
        built.append(image)
    first, second = (image.manifest() for image in built)
    print(f"\nimage hash {built[0].image_hash[:16]}, rootfs {first['rootfs_sha256'][:16]} (twice)")
    assert built[0].image_hash == built[1].image_hash
    assert first["rootfs_sha256"] == second["rootfs_sha256"]
    assert first["packages"] == second["packages"] and first["package_sha256"] == second["package_sha256"]
    assert built[0].host_key_pub != built[1].host_key_pub, "keys are made per image, never shared"
    for image in built:
        for secret in (image.ssh_key, image.initrd):
            assert secret.stat().st_mode & 0o077 == 0, f"{secret.name} is readable by others"
        assert image.directory.parent.stat().st_mode & 0o077 == 0, "the image cache holds keys: 0700"
