"""The booted s390x guest over SSH and over its serial console."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness.accel import host_arch, kvm_status
from harness.targets.qemu import QemuTarget
from harness.targets.spec import TargetOptions
from harness.transport.ssh import SshClient, SshError, fingerprint, parse_public_key

pytestmark = pytest.mark.integration


def test_guest_is_s390x(qemu_guest):
    result = qemu_guest.run("uname -m", timeout=30)
    assert result.ok and result.stdout == "s390x\n"


def test_facts(qemu_guest, s390x_guest_image):
    facts = qemu_guest.facts()
    assert facts.arch == "s390x" and facts.kind == "qemu"
    assert facts.accelerator == "tcg"  # an x86_64 host cannot run s390x with KVM
    assert re.match(r"\d+\.\d+", facts.qemu_version)
    assert facts.image_hash == s390x_guest_image.image_hash
    assert facts.kernel_release == qemu_guest.run("uname -r").stdout.strip() == s390x_guest_image.kernel_release
    cmdline = (qemu_guest.artifacts_dir / "qemu-cmdline.txt").read_text()
    assert "qemu,vx=off" in cmdline and "restrict=on" in cmdline and "-no-reboot" in cmdline


def test_exit_status_and_stderr(qemu_guest):
    result = qemu_guest.run("echo to-out; echo to-err >&2; exit 42", timeout=30)
    assert (result.exit_status, result.stdout, result.stderr) == (42, "to-out\n", "to-err\n")
    assert not result.ok and not result.timed_out


def test_stdin_and_streaming(qemu_guest):
    assert qemu_guest.run("wc -c", stdin=b"x" * 100_000, timeout=60).stdout.strip() == "100000"
    chunks: list[tuple[float, str, str]] = []
    start = time.monotonic()
    result = qemu_guest.run("for i in 1 2 3; do echo tick$i; sleep 1; done; echo done >&2", timeout=60,
                            on_output=lambda name, text: chunks.append((time.monotonic() - start, name, text)))
    assert result.stdout == "tick1\ntick2\ntick3\n" and result.stderr == "done\n"
    first_tick = next(t for t, name, text in chunks if "tick1" in text)
    assert first_tick < result.duration_s - 1.5, "output arrived only at the end"
    assert "".join(text for _, name, text in chunks if name == "stdout") == result.stdout


def test_file_round_trip_is_byte_exact(qemu_guest, tmp_path):
    data = os.urandom(1 << 20)
    local = tmp_path / "random.bin"
    local.write_bytes(data)
    qemu_guest.put(local, "/tmp/kvmh-rt/random.bin", mode=0o640)
    remote = qemu_guest.run("sha256sum /tmp/kvmh-rt/random.bin; stat -c %a /tmp/kvmh-rt/random.bin", timeout=60)
    assert remote.stdout.split() == [hashlib.sha256(data).hexdigest(), "/tmp/kvmh-rt/random.bin", "640"]
    back = tmp_path / "back.bin"
    qemu_guest.get("/tmp/kvmh-rt/random.bin", back)
    assert back.read_bytes() == data


@pytest.mark.parametrize("command", [
    "echo started; sh -c 'sleep 313 & sleep 314'; echo never",  # a child and a grandchild
    "echo started; while :; do sleep 315; done | cat",  # a forked subshell in a pipeline
    "echo started; (sleep 316 &); sleep 317",  # an orphan, reparented to init
])
@pytest.mark.parametrize("path", ["shell", "exec"])
def test_timed_out_command_is_killed_with_everything_it_started(qemu_guest, command, path):
    start = time.monotonic()
    stdin = b"" if path == "exec" else None  # commands with stdin get their own exec channel
    result = qemu_guest.run(command, timeout=3, stdin=stdin)
    assert result.timed_out and not result.ok and result.exit_status == -9
    assert result.stdout == "started\n"
    assert time.monotonic() - start < 30
    left = qemu_guest.run("ps -o pid,args | grep -E 'sleep 31[3-7]' | grep -v grep; true", timeout=30)
    assert left.stdout == "", f"still running in the guest: {left.stdout}"
    assert qemu_guest.run("echo alive", timeout=30).stdout == "alive\n"


def test_late_background_output_does_not_leak_into_the_next_command(qemu_guest):
    assert qemu_guest.run("(sleep 1; echo late) & echo quick", timeout=30).stdout == "quick\n"
    time.sleep(2)
    assert qemu_guest.run("echo next", timeout=30).stdout == "next\n"


def test_concurrent_commands(qemu_guest):
    results = {}
    slow = threading.Thread(target=lambda: results.setdefault("slow", qemu_guest.run("sleep 2; echo slow")))
    slow.start()
    time.sleep(0.5)
    results["fast"] = qemu_guest.run("echo fast", timeout=30)
    slow.join(timeout=60)
    assert results["fast"].stdout == "fast\n" and results["fast"].duration_s < 2
    assert results["slow"].stdout == "slow\n"


def test_console_run(qemu_guest):
    result = qemu_guest.console_run("uname -m; echo oops >&2; exit 5", timeout=60)
    assert (result.exit_status, result.stdout) == (5, "s390x\noops\n")


def test_console_protocol_survives_kernel_messages(qemu_guest):
    log_before = (qemu_guest.artifacts_dir / "console.log").read_bytes().count(b"kvmh-noise")
    command = "for i in 1 2 3; do echo line$i; echo \"<0>kvmh-noise-$i\" > /dev/kmsg; done"
    result = qemu_guest.console_run(command, timeout=60)
    assert (result.exit_status, result.stdout) == (0, "line1\nline2\nline3\n")
    log = (qemu_guest.artifacts_dir / "console.log").read_bytes()
    assert log.count(b"kvmh-noise") >= log_before + 3, "the kernel messages were not printed on the console"
    # The command's own printk-looking output is kept.
    dmesg = qemu_guest.console_run("dmesg | grep kvmh-noise-2", timeout=60)
    assert re.fullmatch(r"\[\s*\d+\.\d+\] kvmh-noise-2\n", dmesg.stdout)


def test_console_and_ssh_see_the_same_guest(qemu_guest):
    token = os.urandom(8).hex()
    assert qemu_guest.console_run(f"echo {token} > /tmp/from-console", timeout=60).ok
    assert qemu_guest.run("cat /tmp/from-console").stdout == f"{token}\n"


def test_console_command_timeout_is_reported(qemu_guest):
    result = qemu_guest.console_run("echo begun; sleep 60", timeout=3)
    assert result.timed_out and "begun" in result.stdout
    assert qemu_guest.console_run("echo back", timeout=60).stdout == "back\n"


def _client(qemu_guest, **kwargs) -> SshClient:
    return SshClient("127.0.0.1", qemu_guest.port, "root", key_file=qemu_guest.image.ssh_key, **kwargs)


def test_wrong_pinned_host_key_is_refused_naming_fingerprints(qemu_guest):
    wrong = Path(str(qemu_guest.image.ssh_key) + ".pub").read_text()  # a valid key, but not the host's
    client = _client(qemu_guest, host_keys=[wrong])
    with pytest.raises(SshError) as info:
        client.connect(time.monotonic() + 60)
    host_fp = fingerprint(parse_public_key(qemu_guest.image.host_key_pub))
    wrong_fp = fingerprint(parse_public_key(wrong))
    assert f"is ssh-ed25519 {host_fp}, expected {wrong_fp}" in str(info.value)
    if shutil.which("ssh-keygen"):
        pub = Path(qemu_guest.artifacts_dir) / "host.pub"
        pub.write_text(qemu_guest.image.host_key_pub + "\n")
        assert host_fp in subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True,
                                         text=True).stdout


def test_unknown_host_key_is_refused_unless_accepted(qemu_guest, tmp_path):
    with pytest.raises(SshError, match="is not among the pinned keys"):
        _client(qemu_guest).connect(time.monotonic() + 60)
    known_hosts = tmp_path / "known_hosts"
    accepting = _client(qemu_guest, known_hosts=known_hosts, accept_new_host_key=True)
    accepting.connect(time.monotonic() + 60)
    accepting.close()
    recorded = known_hosts.read_text()
    assert recorded.startswith(f"[127.0.0.1]:{qemu_guest.port} ssh-ed25519 ")
    strict = _client(qemu_guest, known_hosts=known_hosts)
    strict.connect(time.monotonic() + 60)
    try:
        assert strict.run("echo known", timeout=60).stdout == "known\n"
    finally:
        strict.close()


def test_x86_64_guest_with_automatic_accelerator(x86_64_guest_image, tmp_path, qemu_procs):
    target = QemuTarget("x86_64", TargetOptions(artifacts_dir=tmp_path, accel="auto"), image=x86_64_guest_image)
    try:
        target.start()
        assert target.run("uname -m", timeout=60).stdout == "x86_64\n"
        accelerator = target.facts().accelerator
    finally:
        target.close()
    assert qemu_procs.gone(qemu_procs.pid(tmp_path))
    if host_arch() == "x86_64" and kvm_status()[0]:
        # KVM is tried first; a KVM that cannot boot the guest must be named in the facts.
        assert accelerator == "kvm" or accelerator.startswith("tcg (kvm fell back: ")
        if accelerator != "kvm":
            assert (tmp_path / "console-kvm-attempt.log").exists()
    else:
        assert accelerator == "tcg"
