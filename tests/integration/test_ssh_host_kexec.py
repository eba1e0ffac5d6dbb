"""A QEMU s390x guest plays the remote host: install a harness-built kernel with kexec over SSH, verify, restore.

The guest runs the harness's own kernel build (small s390x config with KEXEC and MEMORY_HOTPLUG,
which kexec-tools needs); Debian's s390x kernel is built without KEXEC. The installed kernel is the
same image booted with a different command line, so the check that counts is the new boot id and
the install's ``kvmh.boot=<token>`` in /proc/cmdline, read over a fresh SSH session.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from harness.hostops import install_kernel, restore
from harness.hostops.boot import TOKEN_PARAM
from harness.hostops.record import HostLayout
from harness.targets.spec import TargetOptions, parse_target_spec
from harness.targets.factory import make_target
from harness.targets.ssh_host import SshHostTarget

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOOT_TIMEOUT = 900.0


@pytest.fixture(scope="module")
def kexec_kernel(harness_s390x_kernel):
    """The harness's s390x kernel build: its config has KEXEC and MEMORY_HOTPLUG (checked by the fixture)."""
    return harness_s390x_kernel


@pytest.fixture(scope="module")
def guest(kexec_kernel, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    artifacts = tmp_path_factory.mktemp("kexec-guest")
    target = make_target("qemu:s390x", TargetOptions(kernel=kexec_kernel.image, modules_dir=kexec_kernel.modules_dir,
                                                     boot_timeout=BOOT_TIMEOUT, artifacts_dir=artifacts))
    target.start()
    try:
        yield target
    finally:
        target.close()


def host_of(guest, tmp_path: Path) -> SshHostTarget:
    """An ssh:// target for the guest: its client key and a known_hosts file with its pinned key."""
    known = tmp_path / "known_hosts"
    if not known.exists():
        known.write_text(guest.image.known_hosts_line("127.0.0.1", guest.port) + "\n")
    spec = parse_target_spec(f"ssh://root@127.0.0.1:{guest.port}")
    return SshHostTarget(spec, TargetOptions(ssh_key=guest.image.ssh_key, known_hosts=known))


def _console_tail(guest) -> str:
    return "\n".join(guest.console.last_lines(30)) if guest.console is not None else ""


def test_forwarded_ssh_reaches_a_server_on_the_hosts_loopback(guest, tmp_path: Path) -> None:
    """The nested-guest path: SSH to a server on the host's 127.0.0.1 through a direct-tcpip channel."""
    from harness.targets.nested_qemu import ForwardedSshClient

    host = host_of(guest, tmp_path)
    with host:
        started = host.run("dropbear -s -p 127.0.0.1:2222 -r /etc/dropbear/dropbear_ed25519_host_key "
                           "-P /run/dropbear-2222.pid")
        assert started.ok, started.stderr
        try:
            inner = ForwardedSshClient(host, 2222, guest.image.ssh_key, guest.image.host_key_pub)
            inner.connect(time.monotonic() + 60)
            try:
                result = inner.run("echo through-the-channel; cat /proc/sys/kernel/random/boot_id")
            finally:
                inner.close()
            assert result.ok and result.stdout.startswith("through-the-channel\n")
            assert result.stdout.split()[1] == host.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()
        finally:
            host.run("kill $(cat /run/dropbear-2222.pid)")


def test_install_with_kexec_boots_the_kernel_and_restore_removes_it(guest, kexec_kernel, tmp_path: Path) -> None:
    host = host_of(guest, tmp_path)
    with host:
        before = host.run("cat /proc/sys/kernel/random/boot_id; cat /proc/cmdline").stdout.splitlines()
        facts = host.facts()
        assert facts.kind == "ssh" and facts.arch == "s390x" and facts.kernel_release == kexec_kernel.release
        started = time.monotonic()
        try:
            record = install_kernel(host, kexec_kernel.image, None, boot_timeout=BOOT_TIMEOUT)
        except Exception as err:
            raise AssertionError(f"{err}\nconsole:\n{_console_tail(guest)}") from err
        took = time.monotonic() - started
    assert record.status == "booted" and record.method == "kexec" and record.initramfs == "repack-root"
    assert record.previous_release == kexec_kernel.release
    print(f"install + kexec + SSH back: {took:.0f} s")

    # A fresh SSH session sees the new boot, with the token and the built kernel's version.
    with host_of(guest, tmp_path) as fresh:
        boot_id, cmdline, version = fresh.run(
            "cat /proc/sys/kernel/random/boot_id /proc/cmdline /proc/version").stdout.splitlines()[:3]
        assert boot_id != before[0]
        assert f"{TOKEN_PARAM}={record.token}" in cmdline.split()
        assert TOKEN_PARAM not in before[1]
        assert f"Linux version {kexec_kernel.release} " in version
        listing = fresh.run("ls /boot/kvmh; cat /var/lib/kvmh/installed.json").stdout
        assert kexec_kernel.release in listing and '"status": "booted"' in listing
        # The guest's pinned host key survived the kexec: the repacked root carried it over.
        assert fresh.run("test -s /etc/dropbear/dropbear_ed25519_host_key").ok

        result = restore(fresh)
        assert result.record is not None and result.was_running_installed and not result.rebooted
        assert result.record.paths == [HostLayout().kernel_dir(kexec_kernel.release)]
        left = fresh.run("ls -A /boot/kvmh /var/lib/kvmh/installed.json 2>&1; true").stdout
        assert left.count("No such file") == 2, left
        assert restore(fresh).nothing_to_do
