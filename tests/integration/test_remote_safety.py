"""A QEMU s390x guest plays a shared SSH host: private remote dirs, no QEMU left behind, dead links noticed.

An unprivileged user in the guest plants the fixed paths earlier versions used (``/tmp/kvmh-selftests``,
``/tmp/kvmh-agent-<digest>.pyz``, ``/var/tmp/kvmh-nested`` with a symlinked log and pid files holding 1
and the pid of a canary process).  The nested path runs a stand-in for ``qemu-system-s390x`` (the guest
has no /dev/kvm under TCG): a small program that says "ready" on the console file and forwards the
guest's SSH port, so the nested target really connects through it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Iterator

import pytest

from harness.targets import nested_qemu as nested
from harness.kvm import bundle
from harness.kvm.runner import AgentRunner
from harness.selftests.build import SelftestBuild
from harness.selftests.ktap import Outcome
from harness.selftests.runner import RunOptions, SelftestRunner
from harness.targets.qemu import QemuTarget
from harness.targets.spec import TargetOptions, parse_target_spec
from harness.targets.ssh_host import SshHostTarget
from harness.transport.heartbeat import DETECT_BOUND_S

pytestmark = [pytest.mark.integration]

STAND_IN = "/usr/local/bin/kvmh-stand-in-qemu"
REPO = Path(__file__).resolve().parents[2]

STAND_IN_QEMU = r'''#!/usr/bin/env python3
"""Stands in for qemu-system-s390x: prints the ready line on the console file and forwards the SSH port."""
import re, socket, sys, threading
args = sys.argv[1:]
console = next(a.split("path=", 1)[1] for a in args if a.startswith("file,id=con0,path="))
port = int(re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22", " ".join(args)).group(1))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(4)
with open(console, "a") as handle:
    handle.write("KVMH-READY\n")
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
while True:
    conn, _ = server.accept()
    upstream = socket.create_connection(("127.0.0.1", 22))
    threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
'''

# Runs as root in the guest: adds an unprivileged user who plants the old fixed paths; prints the canary's pid.
PLANT = r'''
import os, sys
with open("/etc/passwd", "a") as f:
    f.write("mallory:x:1000:1000::/tmp:/bin/sh\n")
os.chmod("/var/tmp", 0o1777)
with open("/etc/victim", "w") as f:
    f.write("victim\n")
r, w = os.pipe()
if os.fork() == 0:
    os.setgroups([]); os.setgid(1000); os.setuid(1000); os.umask(0)
    canary = os.fork()
    if canary == 0:
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.execvpe("sleep", ["sleep", "100000"], {"PATH": "/usr/bin:/bin"})
    def put(path, text, mode=0o777):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
    os.makedirs("/tmp/kvmh-selftests/s390x-planted/s390x", 0o777)
    put("/tmp/kvmh-selftests/s390x-planted/s390x/fake_test", "#!/bin/sh\ntouch /tmp/pwned-by-selftests\n")
    put("/tmp/kvmh-agent-%s.pyz" % sys.argv[1], "open('/tmp/pwned-by-agent', 'w')\n")
    os.makedirs("/var/tmp/kvmh-nested/g.planted", 0o777)
    for d in ("/var/tmp/kvmh-nested", "/var/tmp/kvmh-nested/g.planted"):
        put(d + "/qemu.pid", "1\n")
        os.symlink("/etc/victim", d + "/qemu.log")
    put("/var/tmp/kvmh-nested/g.planted/qemu.pid", "%d\n" % canary)
    start = open("/proc/%d/stat" % canary).read().rsplit(")", 1)[1].split()[19]
    os.makedirs("/tmp/kvmh.planted/nested.x", 0o700)
    os.chmod("/tmp/kvmh.planted", 0o700)
    put("/tmp/kvmh.planted/keeper", "1 1 tok\n", 0o600)
    put("/tmp/kvmh.planted/nested.x/child", "%d %s\n" % (canary, start), 0o600)
    os.write(w, b"%d\n" % canary)
    os._exit(0)
os.close(w)
print(os.read(r, 64).decode().strip())
os.wait()
'''

# Lists what a path tree holds (type, owner, mode, size, link target, content) as JSON, as root in the guest.
SNAPSHOT = r'''
import hashlib, json, os, sys
out = {}
for top in sys.argv[1:]:
    for path in [top] + [os.path.join(d, n) for d, ds, fs in os.walk(top) for n in ds + fs]:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        item = [st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns]
        if os.path.islink(path):
            item.append(os.readlink(path))
        elif os.path.isfile(path):
            item.append(hashlib.sha256(open(path, "rb").read()).hexdigest())
        out[path] = item
print(json.dumps(out, sort_keys=True))
'''
PLANTED = ["/tmp/kvmh-selftests", "/var/tmp/kvmh-nested", "/tmp/kvmh.planted", "/etc/victim"]


@pytest.fixture(scope="module")
def guest(s390x_guest_image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuTarget]:
    artifacts = tmp_path_factory.mktemp("remote-safety")
    target = QemuTarget("s390x", TargetOptions(artifacts_dir=artifacts, boot_timeout=300), image=s390x_guest_image)
    target.start()
    try:
        stand_in = artifacts / "stand-in-qemu"
        stand_in.write_text(STAND_IN_QEMU)
        target.put(stand_in, STAND_IN, mode=0o755)
        yield target
    finally:
        target.close()


def _known_hosts(guest: QemuTarget, tmp_path: Path) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(guest.image.known_hosts_line("127.0.0.1", guest.port) + "\n")
    return path


def _host(guest: QemuTarget, tmp_path: Path) -> SshHostTarget:
    spec = parse_target_spec(f"ssh://root@127.0.0.1:{guest.port}")
    return SshHostTarget(spec, TargetOptions(ssh_key=guest.image.ssh_key, known_hosts=_known_hosts(guest, tmp_path)))


def _stand_in_image(guest: QemuTarget, tmp_path: Path) -> types.SimpleNamespace:
    (tmp_path / "vmlinuz").write_bytes(b"not a kernel: the stand-in QEMU never reads it\n")
    (tmp_path / "initrd.img").write_bytes(b"not an initrd\n")
    return types.SimpleNamespace(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd.img",
                                 ssh_key=guest.image.ssh_key, host_key_pub=guest.image.host_key_pub)


def _remote_alive(guest: QemuTarget, pid: int) -> bool:
    state = guest.run(f"cat /proc/{pid}/stat 2>/dev/null", timeout=60).stdout
    return bool(state) and state.rsplit(")", 1)[1].split()[0] != "Z"


def _snapshot(guest: QemuTarget, *paths: str) -> dict:
    result = guest.run("python3 - " + " ".join(paths), stdin=SNAPSHOT.encode(), timeout=120)
    assert result.ok, result.stderr
    return json.loads(result.stdout)


def _fake_selftest_build(tmp_path: Path) -> SelftestBuild:
    out = tmp_path / "s390x-fakekey" / "out"
    program = out / "s390x" / "fake_test"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\necho 'TAP version 13'\necho '1..1'\necho \"# cwd $(pwd)\"\necho 'ok 1 private'\n")
    program.chmod(0o755)
    return SelftestBuild(arch="s390x", tree=tmp_path, out_dir=out, programs=("s390x/fake_test",), timeout_s=120.0,
                         key="s390x-fakekey", compiler="none", tree_id="none")


def _with_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    info = nested.NestedHostInfo(arch="s390x", kvm=True, qemu=STAND_IN, cpus=2)
    monkeypatch.setattr(nested, "probe_nested", lambda host, binary="qemu-system-s390x": info)


def test_planted_fixed_paths_are_never_used_written_or_signalled(guest: QemuTarget, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    planted = guest.run(f"python3 - {bundle.bundle_digest()}", stdin=PLANT.encode(), timeout=120)
    assert planted.ok, planted.stderr
    canary = int(planted.stdout.strip())
    before = _snapshot(guest, *PLANTED, f"/tmp/kvmh-agent-{bundle.bundle_digest()}.pyz")
    assert guest.run("touch /run/kvmh-stamp").ok
    observer = guest.workdir()

    host = _host(guest, tmp_path)
    host.start()
    workdir = host.workdir()
    assert workdir.startswith("/tmp/kvmh.") and workdir != "/tmp/kvmh.planted"
    try:
        runner = SelftestRunner(host, _fake_selftest_build(tmp_path), RunOptions(capture_dmesg=False))
        run = runner.run("s390x/fake_test")
        assert run.outcome is Outcome.PASS, run.output
        assert f"# cwd {workdir}/selftests/s390x-fakekey" in run.output

        agent = AgentRunner(host).run({"steps": [{"op": "sleep", "ms": 1, "name": "s"}]}, timeout=300)
        assert agent.by_name("s")["ret"] == 0

        _with_stand_in(monkeypatch)
        guest_in_guest = nested.NestedQemuTarget(host, _stand_in_image(guest, tmp_path),
                                                 TargetOptions(boot_timeout=180))
        guest_in_guest.start()
        try:
            assert guest_in_guest.remote_dir.startswith(workdir + "/nested.")
            assert guest_in_guest.run("echo through the stand-in").stdout == "through the stand-in\n"
            qemu = guest_in_guest.qemu_pid
            assert _remote_alive(guest, qemu)
        finally:
            guest_in_guest.close()
        assert not _remote_alive(guest, qemu)
    finally:
        host.close()

    assert guest.run(f"[ ! -e {workdir} ]").ok, "the session directory outlived close()"
    assert _snapshot(guest, *PLANTED, f"/tmp/kvmh-agent-{bundle.bundle_digest()}.pyz") == before
    assert guest.run("ls /tmp/pwned-by-selftests /tmp/pwned-by-agent 2>/dev/null").stdout == ""
    assert _remote_alive(guest, canary), "the canary named by a planted pid file was signalled"
    assert guest.run("cat /etc/victim").stdout == "victim\n"
    written = guest.run("find / /tmp /var/tmp /run -xdev -newer /run/kvmh-stamp 2>/dev/null", timeout=120).stdout
    # /tmp itself changes as the private directories come and go; dropbear logs every connection.
    outside = [p for p in written.split() if p not in ("/tmp", "/var/log/dropbear.log") and not p.startswith(observer)]
    assert outside == [], "the harness wrote outside its private directories"


HARNESS = r'''
import sys, threading, time, types
from harness.targets import nested_qemu as nested
from harness.targets.spec import TargetOptions, parse_target_spec
from harness.targets.ssh_host import SshHostTarget
port, key, known, stand_in, kernel, initrd, pub = sys.argv[1:8]
info = nested.NestedHostInfo("s390x", True, stand_in, 2)
nested.probe_nested = lambda host, binary="qemu-system-s390x": info
host = SshHostTarget(parse_target_spec("ssh://root@127.0.0.1:" + port), TargetOptions(ssh_key=key, known_hosts=known))
host.start()
image = types.SimpleNamespace(kernel=kernel, initrd=initrd, ssh_key=key, host_key_pub=pub)
inner = nested.NestedQemuTarget(host, image, TargetOptions(boot_timeout=180))
inner.start()
def work():
    host.run("sh -c 'echo PID $$; exec sleep 1000'", timeout=3000,
             on_output=lambda stream, text: print("CMD", text.strip(), flush=True))
threading.Thread(target=work, daemon=True).start()
print("QEMU", inner.qemu_pid, host.workdir(), flush=True)
time.sleep(3000)
'''


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_killed_or_frozen_harness_leaves_no_remote_qemu_or_command(guest: QemuTarget, tmp_path: Path,
                                                                      how: str) -> None:
    image = _stand_in_image(guest, tmp_path)
    argv = [sys.executable, "-c", HARNESS, str(guest.port), str(guest.image.ssh_key),
            str(_known_hosts(guest, tmp_path)), STAND_IN, str(image.kernel), str(image.initrd), image.host_key_pub]
    harness = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        qemu = command = 0
        workdir = ""
        deadline = time.monotonic() + 300
        while not (qemu and command) and time.monotonic() < deadline:
            line = harness.stdout.readline()
            assert line, f"the harness ended early: {harness.stderr.read()[-2000:]}"
            words = line.split()
            if words[:1] == ["QEMU"]:
                qemu, workdir = int(words[1]), words[2]
            elif words[:2] == ["CMD", "PID"]:
                command = int(words[2])
        assert qemu and command and _remote_alive(guest, qemu) and _remote_alive(guest, command)
        os.kill(harness.pid, getattr(signal, how))
        stopped = time.monotonic()
        bound = nested.STOP_BOUND_S
        while (_remote_alive(guest, qemu) or _remote_alive(guest, command)) and time.monotonic() - stopped < bound:
            time.sleep(1.0)
        took = time.monotonic() - stopped
        print(f"{how}: remote QEMU and command gone {took:.1f} s later (bound {bound:.0f} s)")
        # Checked by pid from a second connection (the observer's), within the stated bound.
        assert not _remote_alive(guest, qemu), f"the nested QEMU outlived the harness by {took:.0f} s"
        assert not _remote_alive(guest, command), f"a remote command outlived the harness by {took:.0f} s"
        assert guest.run(f"[ ! -e {workdir} ]").ok, "the session directory outlived the harness"
    finally:
        harness.kill()
        harness.wait()


def test_a_link_that_goes_dead_mid_command_is_exit_2_naming_the_host(s390x_guest_image, tmp_path: Path) -> None:
    target = QemuTarget("s390x", TargetOptions(artifacts_dir=tmp_path / "art", boot_timeout=300),
                        image=s390x_guest_image)
    target.start()
    frozen = False
    run = subprocess.Popen(["true"])
    try:
        marker = "/tmp/dead-link-test-started"
        cli = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))",
               "boot", "--target", f"ssh://root@127.0.0.1:{target.port}", "--ssh-key", str(target.image.ssh_key),
               "--known-hosts", str(_known_hosts(target, tmp_path)), "--run", f"touch {marker}; sleep 600",
               "--timeout", "900"]
        run = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + 180
        while not target.run(f"[ -e {marker} ]").ok:
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-2000:]
            time.sleep(1.0)
        assert target.console is not None and target.console.pid is not None
        os.kill(target.console.pid, signal.SIGSTOP)  # the machine stops answering, its TCP stays open
        frozen = True
        stopped = time.monotonic()
        _, err = run.communicate(timeout=DETECT_BOUND_S + 60)
        took = time.monotonic() - stopped
        print(f"dead link reported after {took:.1f} s: {err.strip().splitlines()[-1]}")
        assert run.returncode == 2, err
        assert took <= DETECT_BOUND_S, f"the dead link was noticed after {took:.0f} s"
        last = err.strip().splitlines()[-1]
        assert last.startswith("kvmh: error: ") and f"127.0.0.1:{target.port}" in last and "dead" in last, err
    finally:
        if frozen and target.console is not None and target.console.pid is not None:
            os.kill(target.console.pid, signal.SIGCONT)
        if run.poll() is None:
            run.kill()
            run.wait()
        target.close()
