"""Private remote working directories, the session keeper and dead-link detection, without a real host.

The keeper program runs here as it would on a host; SshClient talks to the in-process paramiko
server of test_ssh_host (commands run locally), optionally through a proxy that can go silent.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import paramiko
import pytest

from harness.errors import InfrastructureError
from harness.transport import keeper
from harness.transport.ssh import SshClient, SshConnectionLost
from test_ssh_host import FakeSshd, _known_hosts, _target

KEEPER = Path(keeper.__file__)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def _start_keeper(tmp: Path, *args: str, cwd: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmp))
    return subprocess.Popen([sys.executable, str(KEEPER), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=cwd)


def _session_member(token: str) -> subprocess.Popen:
    """A process of the session (it carries the token), in a session of its own."""
    return subprocess.Popen(["sleep", "300"], env=dict(os.environ, KVMH_SESSION=token), start_new_session=True)


# ---------------------------------------------------------------- the keeper program


def test_keeper_session_dir_is_private_and_ends_with_its_stdin(tmp_path: Path) -> None:
    proc = _start_keeper(tmp_path, "session", "tok1", "60")
    word, directory = proc.stdout.readline().split()
    assert word == "KVMH-SESSION" and Path(directory).parent == tmp_path
    st = os.lstat(directory)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    member, stranger = _session_member("tok1"), _session_member("other")
    try:
        proc.stdin.close()  # the channel closed: the harness is gone
        assert proc.wait(10) == 0
        assert _wait_gone(member.pid, 5), "a process of the session outlived it"
        assert _alive(stranger.pid), "a process of another session was killed"
        assert not Path(directory).exists()
    finally:
        for p in (member, stranger):
            p.kill()
            p.wait()


def test_keeper_ends_the_session_when_the_heartbeats_stop(tmp_path: Path) -> None:
    proc = _start_keeper(tmp_path, "session", "tok2", "1.5")
    directory = proc.stdout.readline().split()[1]
    member = _session_member("tok2")
    try:
        started = time.monotonic()
        for _ in range(4):  # heartbeats keep it alive past its limit
            proc.stdin.write("\n")
            proc.stdin.flush()
            time.sleep(0.5)
        assert proc.poll() is None and _alive(member.pid)
        assert proc.wait(10) == 0  # silence (stdin still open): a dead link
        assert time.monotonic() - started < 8
        assert "KVMH-SESSION-END silent" in proc.stdout.read()
        assert _wait_gone(member.pid, 5) and not Path(directory).exists()
    finally:
        member.kill()
        member.wait()


def test_keeper_reaps_only_stale_private_sessions_of_its_user(tmp_path: Path) -> None:
    # A stale session: its keeper is gone, a process it started still runs with its token.
    stale = tmp_path / "kvmh.stale1"
    (stale / "nested.a").mkdir(parents=True)
    stale.chmod(0o700)
    (stale / "nested.a").chmod(0o700)
    (stale / "keeper").write_text("999999999 1 staletok\n")
    leftover = _session_member("staletok")
    (stale / "nested.a" / "child").write_text(f"{leftover.pid} {keeper.start_time(leftover.pid)}\n")
    # A planted directory (not mode 0700) naming an innocent process: never read, never signalled.
    planted = tmp_path / "kvmh.planted"
    (planted / "nested.b").mkdir(parents=True)
    planted.chmod(0o755)
    innocent = subprocess.Popen(["sleep", "300"], env=dict(os.environ, KVMH_SESSION="planted"))
    (planted / "keeper").write_text("999999999 1 planted\n")
    (planted / "nested.b" / "child").write_text(f"{innocent.pid} {keeper.start_time(innocent.pid)}\n")
    try:
        proc = _start_keeper(tmp_path, "session", "tok3", "60")
        assert proc.stdout.readline().startswith("KVMH-SESSION ")
        assert _wait_gone(leftover.pid, 5) and not stale.exists()
        assert _alive(innocent.pid) and planted.exists()
        proc.stdin.close()
        proc.wait(10)
    finally:
        for p in (leftover, innocent):
            p.kill()
            p.wait()


def test_watchdog_ends_its_child_with_the_channel_and_never_follows_a_planted_log(tmp_path: Path) -> None:
    work = tmp_path / "nested.x"
    work.mkdir(mode=0o700)
    proc = _start_keeper(tmp_path, "watch", "60", "10", "--", "sleep", "300", cwd=work)
    word, pid = proc.stdout.readline().split()
    child = int(pid)
    assert word == "KVMH-CHILD" and _alive(child)
    assert (work / "child").read_text().split()[0] == pid
    assert stat.S_IMODE((work / "qemu.log").stat().st_mode) == 0o600
    proc.stdin.close()
    assert proc.wait(20) == 128 + signal.SIGTERM  # SIGTERM first (SIGKILL only after the grace)
    assert not _alive(child)

    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    again = tmp_path / "nested.y"
    again.mkdir(mode=0o700)
    (again / "qemu.log").symlink_to(victim)
    refused = _start_keeper(tmp_path, "watch", "60", "2", "--", "sleep", "300", cwd=again)
    refused.stdin.close()
    assert refused.wait(10) != 0
    assert victim.read_text() == "untouched\n"


# ---------------------------------------------------------------- SshClient sessions


@pytest.fixture()
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory = tmp_path_factory.mktemp("keys")
    client = paramiko.ECDSAKey.generate()
    client.write_private_key_file(str(directory / "id_ecdsa"))
    return {"host": paramiko.ECDSAKey.generate(), "client": client, "client_file": directory / "id_ecdsa"}


@pytest.fixture()
def sshd(keys: dict) -> Iterator[FakeSshd]:
    server = FakeSshd(keys["host"], keys["client"])
    yield server
    server.stop()


def test_commands_and_relative_paths_use_a_private_dir_removed_at_close(sshd: FakeSshd, keys: dict,
                                                                        tmp_path: Path) -> None:
    known = _known_hosts(tmp_path / "known_hosts", sshd.port, keys["host"])
    src = tmp_path / "prog"
    src.write_bytes(b"#!/bin/sh\necho ran\n")
    with _target(sshd.port, keys["client_file"], known) as target:
        workdir = target.workdir()
        st = os.lstat(workdir)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert not workdir.startswith("/tmp/kvmh-")  # no fixed shared name
        assert target.run("pwd").stdout.strip() == workdir
        target.put(src, "sub/prog", mode=0o755)
        assert (Path(workdir) / "sub/prog").read_bytes() == src.read_bytes()
        assert target.run("./sub/prog").stdout == "ran\n"
        left = target.run("sleep 300 >/dev/null 2>&1 & echo $!").stdout.strip()
    assert not Path(workdir).exists()
    assert _wait_gone(int(left), 5), "a process the session started outlived close()"


class SilentProxy:
    """A TCP proxy to ``port`` that can stop forwarding (a link gone dead without a reset)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.frozen = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        while True:
            try:
                data = a.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.frozen.is_set():  # swallow it and stop: no reply, no reset
                return
            try:
                b.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_a_link_gone_silent_mid_command_is_an_error_naming_the_host_within_the_bound(
        sshd: FakeSshd, keys: dict, tmp_path: Path) -> None:
    proxy = SilentProxy(sshd.port)
    known = _known_hosts(tmp_path / "known_hosts", proxy.port, keys["host"])
    client = SshClient("127.0.0.1", proxy.port, "root", key_file=keys["client_file"], known_hosts=known,
                       keepalive_s=0.5, dead_after_s=2.0)
    client.connect(time.monotonic() + 10)
    try:
        assert client.run("echo up").stdout == "up\n"
        threading.Timer(1.0, proxy.frozen.set).start()
        started = time.monotonic()
        with pytest.raises(SshConnectionLost) as info:
            client.run("sleep 60", timeout=120)
        elapsed = time.monotonic() - started
        assert elapsed < 1.0 + 0.5 + 2.0 + 3.0, f"dead link noticed only after {elapsed:.1f} s"
        message = str(info.value)
        assert f"127.0.0.1:{proxy.port}" in message and "sleep 60" in message and "dead" in message
        assert isinstance(info.value, InfrastructureError) and info.value.exit_status == 2
        with pytest.raises(SshConnectionLost, match="dead"):
            client.put(known, "copy")
    finally:
        client.close()
        proxy.close()


def test_a_copy_over_a_dead_link_fails_within_the_bound(sshd: FakeSshd, keys: dict, tmp_path: Path) -> None:
    proxy = SilentProxy(sshd.port)
    known = _known_hosts(tmp_path / "known_hosts", proxy.port, keys["host"])
    client = SshClient("127.0.0.1", proxy.port, "root", key_file=keys["client_file"], known_hosts=known,
                       keepalive_s=0.5, dead_after_s=2.0)
    client.connect(time.monotonic() + 10)
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(8 << 20))
    try:
        client.workdir  # noqa: B018 - set the session up before the link dies
        proxy.frozen.set()
        started = time.monotonic()
        with pytest.raises(InfrastructureError, match="127.0.0.1"):
            client.put(blob, "blob")
        assert time.monotonic() - started < 8
    finally:
        client.close()
        proxy.close()


def test_local_target_runs_in_a_private_dir_removed_at_close(tmp_path: Path) -> None:
    from harness.targets.local import LocalTarget

    src = tmp_path / "f"
    src.write_text("data\n")
    target = LocalTarget()
    workdir = target.workdir()
    assert stat.S_IMODE(os.lstat(workdir).st_mode) == 0o700
    target.put(src, "kvmh-agent-x.pyz")
    assert target.run("pwd; cat kvmh-agent-x.pyz").stdout == f"{workdir}\ndata\n"
    target.close()
    assert not Path(workdir).exists()
