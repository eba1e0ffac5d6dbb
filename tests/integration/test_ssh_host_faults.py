"""Every bad input to ``kvmh host install`` that can be produced here, against a QEMU s390x guest playing the host.

Each test checks the one-line message, exit status 2 (InfrastructureError) and that nothing was
left on the guest: no install record, no /boot/kvmh, nothing in the test's own install directories.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import paramiko
import pytest

from harness.cli import main as kvmh_main
from harness.errors import EXIT_INFRA, HarnessError, InfrastructureError
from harness.hostops import install_kernel
from harness.transport.known_hosts import fingerprint
from harness.hostops.record import HostLayout
from harness.targets.spec import TargetOptions, parse_target_spec
from harness.targets.factory import make_target
from harness.targets.ssh_host import SshHostTarget
from harness.transport.ssh import parse_public_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOOT_TIMEOUT = 900.0
LEFTOVERS = "ls -d /boot/kvmh /var/lib/kvmh/installed.json /lib/modules/*/kvmh 2>/dev/null; true"


@pytest.fixture(scope="module")
def kexec_kernel(harness_s390x_kernel):
    return harness_s390x_kernel


def _boot(kernel, artifacts: Path):
    target = make_target("qemu:s390x", TargetOptions(kernel=kernel.image, modules_dir=kernel.modules_dir,
                                                     boot_timeout=BOOT_TIMEOUT, artifacts_dir=artifacts))
    target.start()
    return target


@pytest.fixture(scope="module")
def guest(kexec_kernel, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    target = _boot(kexec_kernel, tmp_path_factory.mktemp("faults-guest"))
    try:
        yield target
    finally:
        target.close()


@pytest.fixture()
def known_hosts(guest, tmp_path: Path) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(guest.image.known_hosts_line("127.0.0.1", guest.port) + "\n")
    return path


def _host(guest, known: Path, user: str = "root", key: Path = None) -> SshHostTarget:  # type: ignore[assignment]
    spec = parse_target_spec(f"ssh://{user}@127.0.0.1:{guest.port}")
    return SshHostTarget(spec, TargetOptions(ssh_key=key or guest.image.ssh_key, known_hosts=known))


def _leftovers(guest) -> str:
    return guest.run(LEFTOVERS).stdout.strip()


def _cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    status = kvmh_main(args)
    return status, capsys.readouterr().err.strip().splitlines()


def _install_args(guest, kernel, key: Path, known: Path) -> list[str]:
    return ["host", "install", "--target", f"ssh://root@127.0.0.1:{guest.port}", "--kernel", str(kernel.image),
            "--ssh-key", str(key), "--known-hosts", str(known)]


def _one_line_infra_error(action) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(HarnessError) as info:
        action()
    assert isinstance(info.value, InfrastructureError) and info.value.exit_status == EXIT_INFRA
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- reaching the host


def test_unreachable_port(kexec_kernel, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = tmp_path / "id"
    paramiko.ECDSAKey.generate().write_private_key_file(str(key))
    status, err = _cli(["host", "install", "--target", f"ssh://root@127.0.0.1:{port}", "--kernel",
                        str(kexec_kernel.image), "--ssh-key", str(key), "--known-hosts", str(tmp_path / "kh")], capsys)
    assert status == EXIT_INFRA
    assert err == [f"kvmh: error: cannot reach 127.0.0.1:{port}: connection refused"]


def test_wrong_client_key(guest, kexec_kernel, known_hosts: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture) -> None:
    wrong = tmp_path / "id_wrong"
    paramiko.ECDSAKey.generate().write_private_key_file(str(wrong))
    status, err = _cli(_install_args(guest, kexec_kernel, wrong, known_hosts), capsys)
    assert status == EXIT_INFRA and len(err) == 1
    assert err[0].startswith(f"kvmh: error: authentication as root to 127.0.0.1:{guest.port} failed with key {wrong}")
    assert _leftovers(guest) == ""


def test_host_key_mismatch_is_refused_even_with_accept_new(guest, kexec_kernel, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    impostor = paramiko.ECDSAKey.generate()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{guest.port} {impostor.get_name()} {impostor.get_base64()}\n")
    before = known.read_text()
    status, err = _cli(_install_args(guest, kexec_kernel, guest.image.ssh_key, known) + ["--accept-new-host-key"],
                       capsys)
    assert status == EXIT_INFRA and len(err) == 1
    assert f"host key of [127.0.0.1]:{guest.port} does NOT match {known}" in err[0]
    assert fingerprint(impostor) in err[0]
    assert known.read_text() == before
    assert _leftovers(guest) == ""


def test_unknown_host_key_names_its_fingerprint_and_the_flag(guest, kexec_kernel, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    known = tmp_path / "known_hosts"
    status, err = _cli(_install_args(guest, kexec_kernel, guest.image.ssh_key, known), capsys)
    assert status == EXIT_INFRA and len(err) == 1
    assert fingerprint(parse_public_key(guest.image.host_key_pub)) in err[0] and "--accept-new-host-key" in err[0]
    assert not known.exists()
    # With the flag the key is trusted and written down; restore finds nothing to do.
    status = kvmh_main(["host", "restore", "--target", f"ssh://root@127.0.0.1:{guest.port}", "--ssh-key",
                        str(guest.image.ssh_key), "--known-hosts", str(known), "--accept-new-host-key"])
    assert status == 0 and "nothing to restore" in capsys.readouterr().out
    assert known.read_text().split()[:2] == [f"[127.0.0.1]:{guest.port}", "ssh-ed25519"]


def test_not_root_and_no_sudo(guest, kexec_kernel, known_hosts: Path) -> None:
    guest.run("grep -q '^tester:' /etc/passwd || { echo 'tester:x:1000:1000::/home/tester:/bin/sh' >> /etc/passwd; "
              "echo 'tester:*:20000:0:99999:7:::' >> /etc/shadow; echo 'tester:x:1000:' >> /etc/group; "
              "mkdir -p /home/tester/.ssh; cp /root/.ssh/authorized_keys /home/tester/.ssh/; "
              "chown -R 1000:1000 /home/tester; chmod 700 /home/tester/.ssh; }")
    with _host(guest, known_hosts, user="tester") as host:
        assert host.run("id -u").stdout.strip() == "1000"
        message = _one_line_infra_error(lambda: install_kernel(host, kexec_kernel.image))
    assert message.startswith(f"tester on ssh://tester@127.0.0.1:{guest.port} is not root and cannot use sudo "
                              f"without a password")
    assert _leftovers(guest) == ""


# ---------------------------------------------------------------- bad inputs and full disks


def test_wrong_architecture_image(guest, known_hosts: Path) -> None:
    from guest_images import build_image

    x86 = build_image("x86_64").kernel
    with _host(guest, known_hosts) as host:
        message = _one_line_infra_error(lambda: install_kernel(host, x86))
    assert message == (f"{x86} is an x86_64 kernel but ssh://root@127.0.0.1:{guest.port} is s390x: "
                       f"build the kernel for s390x (kvmh build --arch s390x)")
    assert _leftovers(guest) == ""


def test_full_boot_filesystem_is_refused_before_copying(guest, kexec_kernel, known_hosts: Path) -> None:
    guest.run("mkdir -p /mnt/tiny && (mountpoint -q /mnt/tiny || mount -t tmpfs -o size=1m tmpfs /mnt/tiny) && "
              "mkdir -p /mnt/tiny/boot")
    layout = HostLayout(boot_dir="/mnt/tiny/boot")
    try:
        with _host(guest, known_hosts) as host:
            message = _one_line_infra_error(lambda: install_kernel(host, kexec_kernel.image, layout=layout))
        assert message.startswith(f"not enough space on ssh://root@127.0.0.1:{guest.port} for /mnt/tiny/boot "
                                  f"(filesystem /mnt/tiny): need ")
        assert guest.run("find /mnt/tiny -mindepth 2").stdout == ""
        assert _leftovers(guest) == ""
    finally:
        guest.run("umount /mnt/tiny")


def _modules_staging(root: Path, release: str, files: int = 40) -> Path:
    rel = root / "lib" / "modules" / release
    (rel / "kernel" / "extra").mkdir(parents=True)
    (rel / "modules.order").write_text("")
    for i in range(files):
        (rel / "kernel" / "extra" / f"m{i}.ko").write_bytes(b"\x7fELF" + bytes(1000))
    return root


def test_copy_that_runs_out_of_space_midway_is_rolled_back(guest, kexec_kernel, known_hosts: Path,
                                                           tmp_path: Path) -> None:
    # Blocks are plentiful but the modules filesystem has only a handful of inodes: the pre-check
    # (which counts blocks) passes, the copy fails halfway, and everything copied must go again.
    guest.run("mkdir -p /mnt/bootok /mnt/fewinodes && "
              "(mountpoint -q /mnt/bootok || mount -t tmpfs -o size=512m tmpfs /mnt/bootok) && "
              "(mountpoint -q /mnt/fewinodes || mount -t tmpfs -o size=64m,nr_inodes=6 tmpfs /mnt/fewinodes) && "
              "mkdir -p /mnt/bootok/boot /mnt/fewinodes/modules")
    layout = HostLayout(boot_dir="/mnt/bootok/boot", modules_root="/mnt/fewinodes/modules")
    staging = _modules_staging(tmp_path / "staging", kexec_kernel.release)
    try:
        with _host(guest, known_hosts) as host:
            message = _one_line_infra_error(
                lambda: install_kernel(host, kexec_kernel.image, staging, layout=layout))
        assert message.startswith(f"copying the modules to /mnt/fewinodes/modules/{kexec_kernel.release} failed on "
                                  f"ssh://root@127.0.0.1:{guest.port}: ")
        assert "No space left on device" in message and "rolled back" in message
        assert guest.run("find /mnt/bootok/boot /mnt/fewinodes/modules -mindepth 1").stdout == ""
        assert _leftovers(guest) == ""
    finally:
        guest.run("umount /mnt/bootok /mnt/fewinodes")


def test_foreign_modules_are_not_overwritten(guest, kexec_kernel, known_hosts: Path, tmp_path: Path) -> None:
    # The guest already has /lib/modules/<release> from its own image, which kvmh did not install.
    staging = _modules_staging(tmp_path / "staging", kexec_kernel.release, files=2)
    with _host(guest, known_hosts) as host:
        message = _one_line_infra_error(lambda: install_kernel(host, kexec_kernel.image, staging))
    assert message.startswith(f"ssh://root@127.0.0.1:{guest.port} already has /lib/modules/{kexec_kernel.release}, "
                              f"which kvmh did not install")
    assert guest.run(f"ls /lib/modules/{kexec_kernel.release}/kernel/extra 2>&1").stdout.count("No such file") == 1
    assert _leftovers(guest) == ""


def test_kexec_disabled(guest, kexec_kernel, known_hosts: Path) -> None:
    # Irreversible until the guest reboots: keep this the last test that needs kexec on this guest.
    guest.run("echo 1 > /proc/sys/kernel/kexec_load_disabled")
    with _host(guest, known_hosts) as host:
        message = _one_line_infra_error(lambda: install_kernel(host, kexec_kernel.image))
    assert message.startswith(f"kexec is disabled on ssh://root@127.0.0.1:{guest.port} "
                              f"(kernel.kexec_load_disabled=1")
    assert _leftovers(guest) == ""


# ---------------------------------------------------------------- a host that does not come back


def test_host_that_never_comes_back(kexec_kernel, tmp_path: Path) -> None:
    # The installed kernel gets a command line under which it cannot start init: it panics
    # ("Requested init /nonexistent failed"), QEMU (-no-reboot) exits, and SSH never answers again.
    doomed = _boot(kexec_kernel, tmp_path / "doomed")
    try:
        known = tmp_path / "known_hosts"
        known.write_text(doomed.image.known_hosts_line("127.0.0.1", doomed.port) + "\n")
        with _host(doomed, known) as host:
            started = time.monotonic()
            message = _one_line_infra_error(lambda: install_kernel(
                host, kexec_kernel.image, cmdline="console=ttysclp0 panic=-1 rdinit=/nonexistent init=/nonexistent",
                deadline=time.monotonic() + 45))
        assert time.monotonic() - started < 120
        assert message.startswith(f"ssh://root@127.0.0.1:{doomed.port} did not answer SSH within")
        assert "an IPL of its default entry (or a hard reset) brings it back with its installed default kernel" \
            in message
        assert doomed.console is not None and doomed.console.wait_exit(30), "QEMU should have exited after the panic"
        assert "Kernel panic" in "\n".join(doomed.console.last_lines(60))
    finally:
        doomed.close()


def test_running_kernel_without_kexec(kexec_kernel, tmp_path: Path) -> None:
    # Debian's s390x kernel (the default guest image) is built without CONFIG_KEXEC.
    debian = make_target("qemu:s390x", TargetOptions(boot_timeout=BOOT_TIMEOUT, artifacts_dir=tmp_path / "debian"))
    debian.start()
    try:
        known = tmp_path / "known_hosts"
        known.write_text(debian.image.known_hosts_line("127.0.0.1", debian.port) + "\n")
        with _host(debian, known) as host:
            release = host.run("uname -r").stdout.strip()
            message = _one_line_infra_error(lambda: install_kernel(host, kexec_kernel.image))
        assert message == (f"the running kernel {release} on ssh://root@127.0.0.1:{debian.port} has no kexec support "
                           f"(no /proc/sys/kernel/kexec_load_disabled): boot a kernel built with CONFIG_KEXEC, "
                           f"or use --zipl")
        assert debian.run(LEFTOVERS).stdout.strip() == ""
    finally:
        debian.close()
