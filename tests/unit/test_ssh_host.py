"""SshHostTarget against an in-process paramiko SSH server on 127.0.0.1 that runs commands locally."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from harness.cli import main as kvmh_main
from harness.errors import EXIT_INFRA, EXIT_USAGE, InfrastructureError, UsageError
from harness.transport.known_hosts import HostKeyError, fingerprint
from harness.targets.spec import TargetOptions, parse_target_spec
from harness.targets.factory import make_target
from harness.targets.ssh_host import AuthFailed, HostUnreachable, SshHostTarget, accelerator_label

UNPRIVILEGED = "nobody-user"


class _Server(paramiko.ServerInterface):
    def __init__(self, allowed: paramiko.PKey) -> None:
        self.allowed = allowed
        self.username = ""

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if key.asbytes() == self.allowed.asbytes():
            self.username = username
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        argv = ["/bin/sh", "-c", command.decode()]
        if self.username == UNPRIVILEGED:
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        threading.Thread(target=_serve_exec, args=(channel, argv), daemon=True).start()
        return True


def _serve_exec(channel: paramiko.Channel, argv: list[str]) -> None:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)

    def feed() -> None:
        while True:
            try:
                data = channel.recv(65536)
            except (OSError, EOFError):  # the client went away
                data = b""
            if not data:
                break
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except BrokenPipeError:
                break
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass

    def pump(stream, send) -> None:
        try:
            for chunk in iter(lambda: stream.read1(65536), b""):
                send(chunk)
        except (OSError, EOFError):  # the client went away
            pass

    threads = [threading.Thread(target=feed, daemon=True),
               threading.Thread(target=pump, args=(proc.stdout, channel.sendall), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, channel.sendall_stderr), daemon=True)]
    for thread in threads:
        thread.start()
    status = proc.wait()
    threads[1].join(5)
    threads[2].join(5)
    try:
        channel.send_exit_status(status if status >= 0 else 128 - status)
        channel.shutdown_write()
        channel.close()
    except (OSError, EOFError):  # the client went away
        pass


class FakeSshd:
    """Accepts SSH connections on 127.0.0.1 with ``host_key``; ``client_key`` is the one key allowed."""

    def __init__(self, host_key: paramiko.PKey, client_key: paramiko.PKey, port: int = 0) -> None:
        self.host_key = host_key
        self.client_key = client_key
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            self.transports.append(transport)
            try:
                transport.start_server(server=_Server(self.client_key))
            except (paramiko.SSHException, EOFError, OSError):
                continue

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        for transport in self.transports:
            transport.close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory = tmp_path_factory.mktemp("keys")
    client = paramiko.ECDSAKey.generate()
    client.write_private_key_file(str(directory / "id_ecdsa"))
    other = paramiko.ECDSAKey.generate()
    other.write_private_key_file(str(directory / "other_ecdsa"))
    return {"host": paramiko.ECDSAKey.generate(), "other_host": paramiko.ECDSAKey.generate(), "client": client,
            "client_file": directory / "id_ecdsa", "other_file": directory / "other_ecdsa"}


@pytest.fixture()
def sshd(keys: dict):
    server = FakeSshd(keys["host"], keys["client"])
    yield server
    server.stop()


def _known_hosts(path: Path, port: int, key: paramiko.PKey, extra: str = "") -> Path:
    path.write_text(f"{extra}[127.0.0.1]:{port} {key.get_name()} {key.get_base64()}\n")
    return path


def _target(port: int, key: Path, known_hosts: Path, user: str = "root", accept: bool = False,
            connect_timeout: float = 5.0) -> SshHostTarget:
    spec = parse_target_spec(f"ssh://{user}@127.0.0.1:{port}")
    return SshHostTarget(spec, TargetOptions(ssh_key=key, known_hosts=known_hosts, accept_new_host_key=accept),
                         connect_timeout=connect_timeout)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- connecting and host keys


def test_make_target_builds_an_ssh_host_target(tmp_path: Path, keys: dict) -> None:
    target = make_target("ssh://alice@example.org:2222", TargetOptions(ssh_key=keys["client_file"]))
    assert isinstance(target, SshHostTarget)
    assert (target.user, target.host, target.port, target.kind) == ("alice", "example.org", 2222, "ssh")
    assert target.spec == "ssh://alice@example.org:2222"


def test_missing_key_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="SSH key .*nokey does not exist"):
        _target(22, tmp_path / "nokey", tmp_path / "kh")


def test_known_host_connects_runs_and_reports_facts(sshd: FakeSshd, keys: dict, tmp_path: Path) -> None:
    known = _known_hosts(tmp_path / "known_hosts", sshd.port, keys["host"])
    with _target(sshd.port, keys["client_file"], known) as target:
        assert target.arch == os.uname().machine
        result = target.run("echo out; echo err >&2; exit 3")
        assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert target.run("cat | tr a-z A-Z", stdin=b"hello").stdout == "HELLO"
        facts = target.facts()
        assert facts.kind == "ssh" and facts.arch == os.uname().machine
        assert facts.kernel_release == os.uname().release
        assert facts.accelerator.startswith("n/a")
        assert facts.extra["host_kvm"] in ("yes", "no")


def test_put_and_get_are_byte_exact(sshd: FakeSshd, keys: dict, tmp_path: Path) -> None:
    known = _known_hosts(tmp_path / "known_hosts", sshd.port, keys["host"])
    blob = bytes(range(256)) * 1000 + b"\r\n\x00end"
    src = tmp_path / "src.bin"
    src.write_bytes(blob)
    remote = tmp_path / "remote" / "dir" / "copy.bin"
    back = tmp_path / "back.bin"
    with _target(sshd.port, keys["client_file"], known) as target:
        target.put(src, str(remote), mode=0o640)
        target.get(str(remote), back)
    assert remote.read_bytes() == blob
    assert (remote.stat().st_mode & 0o777) == 0o640
    assert back.read_bytes() == blob


def test_command_past_its_timeout_is_killed(sshd: FakeSshd, keys: dict, tmp_path: Path) -> None:
    known = _known_hosts(tmp_path / "known_hosts", sshd.port, keys["host"])
    marker = tmp_path / "still-running"
    with _target(sshd.port, keys["client_file"], known) as target:
        started = time.monotonic()
        result = target.run(f"sleep 30; touch {marker}", timeout=1.5)
        assert result.timed_out and not result.ok
        assert time.monotonic() - started < 15
        left = subprocess.run(["pgrep", "-f", f"touch {marker}"], capture_output=True, text=True).stdout.split()
        assert left == []


def test_unknown_host_key_is_refused_with_its_fingerprint(sshd: FakeSshd, keys: dict, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("# my hosts\n")
    target = _target(sshd.port, keys["client_file"], known)
    with pytest.raises(HostKeyError) as info:
        target.start()
    message = str(info.value)
    assert "\n" not in message
    assert f"[127.0.0.1]:{sshd.port}" in message
    assert fingerprint(keys["host"]) in message
    assert "--accept-new-host-key" in message
    assert info.value.exit_status == EXIT_INFRA
    assert known.read_text() == "# my hosts\n"


def test_accept_new_host_key_appends_one_line(sshd: FakeSshd, keys: dict, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    ca = keys["other_host"]
    known.write_text(f"# my hosts\n@cert-authority *.example.org {ca.get_name()} {ca.get_base64()}\n"
                     f"damaged line\nexample.org ssh-ed25519 AAAA!!notbase64\n")
    before = known.read_text()
    with _target(sshd.port, keys["client_file"], known, accept=True) as target:
        assert target.run("echo ok").stdout == "ok\n"
    text = known.read_text()
    assert text.startswith(before)
    assert text[len(before):] == f"[127.0.0.1]:{sshd.port} {keys['host'].get_name()} {keys['host'].get_base64()}\n"
    # Known now: a second connection without --accept-new-host-key works.
    with _target(sshd.port, keys["client_file"], known) as target:
        assert target.run("true").ok


def test_mismatched_host_key_is_always_refused(sshd: FakeSshd, keys: dict, tmp_path: Path) -> None:
    known = _known_hosts(tmp_path / "known_hosts", sshd.port, keys["other_host"])
    before = known.read_text()
    target = _target(sshd.port, keys["client_file"], known, accept=True)
    with pytest.raises(HostKeyError) as info:
        target.start()
    message = str(info.value)
    assert "does NOT match" in message and "\n" not in message
    assert fingerprint(keys["host"]) in message and fingerprint(keys["other_host"]) in message
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in message
    assert known.read_text() == before


def test_wrong_client_key_fails_authentication(sshd: FakeSshd, keys: dict, tmp_path: Path) -> None:
    known = _known_hosts(tmp_path / "known_hosts", sshd.port, keys["host"])
    target = _target(sshd.port, keys["other_file"], known)
    with pytest.raises(AuthFailed) as info:
        target.start()
    message = str(info.value)
    assert message.startswith(f"authentication as root to 127.0.0.1:{sshd.port} failed")
    assert str(keys["other_file"]) in message and "\n" not in message
    assert info.value.exit_status == EXIT_INFRA


def test_closed_port_is_unreachable(tmp_path: Path, keys: dict) -> None:
    port = _free_port()
    target = _target(port, keys["client_file"], tmp_path / "kh", connect_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(HostUnreachable) as info:
        target.start()
    assert str(info.value) == f"cannot reach 127.0.0.1:{port}: connection refused"
    assert info.value.exit_status == EXIT_INFRA
    assert time.monotonic() - started < 10


def test_reconnect_waits_for_the_host_to_come_back(keys: dict, tmp_path: Path) -> None:
    server = FakeSshd(keys["host"], keys["client"])
    port = server.port
    known = _known_hosts(tmp_path / "known_hosts", port, keys["host"])
    target = _target(port, keys["client_file"], known)
    target.start()
    server.stop()
    revived: list[FakeSshd] = []

    def revive() -> None:
        time.sleep(2.0)
        revived.append(FakeSshd(keys["host"], keys["client"], port=port))

    thread = threading.Thread(target=revive)
    thread.start()
    try:
        target.reconnect(time.monotonic() + 30)
        assert target.run("echo back").stdout == "back\n"
    finally:
        thread.join()
        target.close()
        for server in revived:
            server.stop()


def test_reconnect_gives_up_at_the_deadline(keys: dict, tmp_path: Path) -> None:
    port = _free_port()
    target = _target(port, keys["client_file"], tmp_path / "kh")
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match=rf"cannot reach 127.0.0.1:{port}: connection refused"):
        target.reconnect(time.monotonic() + 2.0)
    assert 1.5 < time.monotonic() - started < 10


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs root and setpriv (util-linux) to run the fake host's commands unprivileged")
def test_not_root_and_no_sudo_is_a_clear_error(sshd: FakeSshd, keys: dict, tmp_path: Path) -> None:
    from harness.hostops.shell import root_prefix

    known = _known_hosts(tmp_path / "known_hosts", sshd.port, keys["host"])
    with _target(sshd.port, keys["client_file"], known, user=UNPRIVILEGED) as target:
        assert target.run("id -u").stdout.strip() == "65534"
        with pytest.raises(InfrastructureError) as info:
            root_prefix(target)
    message = str(info.value)
    assert "is not root and cannot use sudo without a password" in message
    assert "ssh://root@" in message and "\n" not in message


def test_accelerator_label_reads_sysinfo() -> None:
    assert accelerator_label("LPAR Name: LP01 VM00 Control Program: z/VM 7.3.0") == "n/a (z/VM guest)"
    assert accelerator_label("LPAR Name: LP01 VM00 Control Program: KVM/Linux") == "n/a (KVM guest)"
    assert accelerator_label("LPAR Name: LP01") == "n/a (LPAR)"
    assert accelerator_label("") == "n/a (bare host)"


# ---------------------------------------------------------------- the kvmh host command line


def _cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    status = kvmh_main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_host_restore_with_nothing_installed(sshd: FakeSshd, keys: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    if Path("/var/lib/kvmh/installed.json").exists():
        pytest.skip("this machine has a kvmh install record of its own")
    known = _known_hosts(tmp_path / "known_hosts", sshd.port, keys["host"])
    status, out, _err = _cli(["host", "restore", "--target", f"ssh://root@127.0.0.1:{sshd.port}",
                              "--ssh-key", str(keys["client_file"]), "--known-hosts", str(known)], capsys)
    assert status == 0
    assert "nothing to restore" in out


def test_cli_host_install_of_a_non_kernel_exits_2_before_changing_anything(
        sshd: FakeSshd, keys: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    known = _known_hosts(tmp_path / "known_hosts", sshd.port, keys["host"])
    bogus = tmp_path / "bzImage"
    bogus.write_bytes(b"not a kernel" * 100)
    status, _out, err = _cli(["host", "install", "--target", f"ssh://root@127.0.0.1:{sshd.port}",
                              "--kernel", str(bogus), "--ssh-key", str(keys["client_file"]),
                              "--known-hosts", str(known)], capsys)
    assert status == EXIT_INFRA
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert f"{bogus} is not a kernel image for {os.uname().machine}" in lines[0]
    assert not Path("/boot/kvmh").exists()


def test_cli_host_needs_an_ssh_target_and_a_kernel(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    status, _out, err = _cli(["host", "install", "--target", "qemu:s390x", "--kernel", str(tmp_path / "k")], capsys)
    assert status == EXIT_USAGE and "needs an ssh:// target" in err
    status, _out, err = _cli(["host", "install", "--target", "ssh://root@127.0.0.1:1"], capsys)
    assert status == EXIT_USAGE and "needs --kernel" in err


def test_cli_host_unreachable_is_one_line_exit_2(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                 keys: dict) -> None:
    port = _free_port()
    status, _out, err = _cli(["host", "restore", "--target", f"ssh://root@127.0.0.1:{port}",
                              "--ssh-key", str(keys["client_file"]), "--known-hosts", str(tmp_path / "kh")], capsys)
    assert status == EXIT_INFRA
    assert err.strip().splitlines() == [f"kvmh: error: cannot reach 127.0.0.1:{port}: connection refused"]
