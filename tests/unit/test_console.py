"""Console parsing on recorded boot logs, and the live console machinery on local processes."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from harness.errors import BootError
from harness.transport.console import Console, ConsoleClosed
from harness.transport.console_shell import parse_command_output, run_command
from harness.transport.panic import ConsoleScanner, KernelPanic, classify, strip_printk, summarize

DATA = Path(__file__).resolve().parents[1] / "data" / "console"
CLEAN = DATA / "s390x-tcg-boot-clean.log"
PANIC_VFS = DATA / "s390x-tcg-panic-rdinit-nonexistent.log"
PANIC_INIT = DATA / "s390x-tcg-panic-no-working-init.log"
SILENCE = DATA / "s390x-tcg-silence-loglevel0-init-sleep.log"


def lines_of(path: Path) -> list[str]:
    return [line.rstrip("\r") for line in path.read_text(errors="replace").split("\n")]


def scan(path: Path) -> ConsoleScanner:
    scanner = ConsoleScanner()
    scanner.feed_all(lines_of(path))
    return scanner


# -- recorded logs -------------------------------------------------------------------------------

def test_clean_boot_has_ready_and_no_panic_or_splat():
    scanner = scan(CLEAN)
    assert not scanner.panicked
    assert scanner.splats == []
    text = CLEAN.read_text()
    assert "KVMH-READY" in text and "kvmh# " in text
    assert "Linux version" in text


def test_vfs_panic_block_starts_at_panic_line_and_keeps_the_trace():
    scanner = scan(PANIC_VFS)
    assert scanner.panicked
    assert scanner.panic_title.startswith("Kernel panic - not syncing: VFS: Unable to mount root fs")
    assert "Kernel panic - not syncing" in scanner.panic_lines[0]
    assert any("Call Trace:" in line for line in scanner.panic_lines)
    assert any("mount_root" in line for line in scanner.panic_lines)
    # Lines before the panic are not part of the block.
    assert not any("Please append a correct" in line for line in scanner.panic_lines)


def test_no_working_init_panic_is_recognised():
    scanner = scan(PANIC_INIT)
    assert scanner.panic_title.startswith("Kernel panic - not syncing: No working init found")
    err = scanner.panic_error("during boot", "console.log")
    assert isinstance(err, KernelPanic) and isinstance(err, BootError)
    assert "No working init found" in str(err) and "console.log" in str(err)
    assert "\n" not in str(err)
    assert "kernel_init" in err.details


def test_silence_log_has_only_decompressor_lines():
    scanner = scan(SILENCE)
    assert not scanner.panicked
    content = [line for line in scanner.last_lines(0) if line.strip()]
    assert content and all(line.startswith(("KASLR", "qemu-system")) for line in content)


# -- classification (synthetic lines, written for these tests) ----------------------------------

@pytest.mark.parametrize("line, kind", [
    ("[   12.000001] Kernel panic - not syncing: sysrq triggered crash", "panic"),
    ("[    5.1][    T1] Kernel panic - not syncing: Attempted to kill init!", "panic"),
    ("[    3.300000] Oops: 0004 ilc:2 [#1] SMP", "oops"),
    ("[    3.300000] Oops: general protection fault, probably for non-canonical address", "oops"),
    ("[    3.3] WARNING: CPU: 1 PID: 77 at arch/s390/kvm/pv.c:123 kvm_s390_pv_deinit_vm+0x1/0x2", "warning"),
    ("[    3.3] kernel BUG at mm/slub.c:42!", "bug"),
    ("[    3.3] BUG: KASAN: use-after-free in kvm_s390_pv_deinit_cleanup_all", "kasan"),
    ("[    3.3] WARNING: possible circular locking dependency detected", "lockdep"),
    ("[    3.3] INFO: task kworker/0:1:12 blocked for more than 120 seconds.", "hung-task"),
    ("[    1.0] Run /init as init process", None),
    ("kvmh# echo BUG", None),
])
def test_classify(line, kind):
    assert classify(line) == kind


def test_strip_printk_and_summarize():
    assert strip_printk("[    1.646029] Kernel panic") == "Kernel panic"
    assert strip_printk("[    1.6][    T1] x") == "x"
    assert strip_printk("no prefix") == "no prefix"
    assert summarize(["a", "", "b", "c", "d"], 2) == "c | d"
    assert summarize([]) == "(no console output)"


def test_splat_keeps_context_and_boot_goes_on():
    scanner = ConsoleScanner()
    scanner.feed_all([
        "[ 1.0] ok",
        "[ 2.0] WARNING: CPU: 0 PID: 1 at kernel/x.c:1 f+0x0/0x10",
        "[ 2.1] Modules linked in:",
        "[ 2.2] Call Trace:",
        "KVMH-READY",
    ])
    assert not scanner.panicked
    assert [s.kind for s in scanner.splats] == ["warning"]
    assert scanner.splats[0].title.startswith("WARNING: CPU: 0 PID: 1 at kernel/x.c:1")
    assert len(scanner.splats[0].lines) == 4


def test_panic_block_completes_at_end_marker():
    scanner = ConsoleScanner()
    scanner.feed_all([
        "[ 9.0] Kernel panic - not syncing: Fatal exception",
        "[ 9.1] Call Trace:",
        "[ 9.2] ---[ end Kernel panic - not syncing: Fatal exception ]---",
        "later line",
    ])
    assert scanner.panic_complete
    assert len(scanner.panic_lines) == 3


# -- the command protocol's output parser ---------------------------------------------------------

def test_parse_output_drops_echo_prompt_and_kernel_lines():
    tok = "abc123"
    region = (
        "__kvmh=abc123; { ( eval 'x' ) ... sed \"s/^/KVMH_O_${__kvmh}:/\"\r\r\n"
        "[    7.1] kvmh-noise\r\r\n"
        "kvmh# KVMH_O_abc123:first\r\r\n"
        "KVMH_O_abc123:[    1.0] printed by the command\r\r\n"
        "> \r\n"
    )
    out = parse_command_output(region, tok, "tail")
    assert out == "first\n[    1.0] printed by the command\ntail"


def test_parse_output_rejoins_a_line_split_by_a_kernel_message():
    region = "KVMH_O_t1:hel[    7.123456] kvmh-noise\r\nlo world\r\nKVMH_O_t1:next\r\n"
    assert parse_command_output(region, "t1", "") == "hello world\nnext\n"


def test_parse_output_of_unfinished_command():
    assert parse_command_output("KVMH_O_t2:partial\r\n", "t2", None) == "partial\n"
    assert parse_command_output("nothing\r\n", "t2", None) == ""


# -- the live console on local processes ---------------------------------------------------------

def _console(tmp_path: Path, script: str, **kwargs) -> Console:
    console = Console(["/bin/sh", "-c", script], tmp_path / "console.log", name="test", **kwargs)
    console.start()
    return console


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_wait_for_ready_in_recorded_boot_and_log_streams_to_file(tmp_path):
    console = _console(tmp_path, f"cat {CLEAN}; sleep 30")
    try:
        console.wait_for("KVMH-READY", time.monotonic() + 20)
        console.wait_for(re.escape("kvmh# "), time.monotonic() + 20)
        logged = (tmp_path / "console.log").read_bytes().replace(b"\r", b"")
        assert logged.startswith(CLEAN.read_bytes().replace(b"\r", b"")[:2000])
        assert console.output_seen and console.alive()
    finally:
        console.terminate(2)
    assert _gone(console.pid)


def test_panic_fails_fast_with_panic_lines(tmp_path):
    console = _console(tmp_path, f"cat {PANIC_VFS}; sleep 60")
    start = time.monotonic()
    try:
        with pytest.raises(KernelPanic) as info:
            console.wait_for("KVMH-READY", time.monotonic() + 60, panic_when="during boot")
    finally:
        console.terminate(2)
    assert time.monotonic() - start < 15  # the settle time, not the deadline or the sleep
    assert "kernel panic during boot: Kernel panic - not syncing: VFS" in str(info.value)
    assert "Call Trace:" in info.value.details


def test_panic_is_reported_at_once_when_the_process_ends(tmp_path):
    console = _console(tmp_path, f"cat {PANIC_INIT}")
    try:
        start = time.monotonic()
        with pytest.raises(KernelPanic, match="No working init found"):
            console.wait_for("KVMH-READY", time.monotonic() + 60)
        assert time.monotonic() - start < 10
    finally:
        console.terminate(2)


def test_silence_watchdog_after_some_output(tmp_path):
    console = _console(tmp_path, f"cat {SILENCE}; sleep 60")
    try:
        with pytest.raises(BootError, match=r"guest printed nothing for 2.0 s .*KASLR disabled"):
            console.wait_for("KVMH-READY", time.monotonic() + 60, silence=2, what="KVMH-READY")
    finally:
        console.terminate(2)


def test_silence_watchdog_without_any_output(tmp_path):
    console = _console(tmp_path, "sleep 60")
    try:
        with pytest.raises(BootError, match="printed nothing for 1.0 s .*did not start"):
            console.wait_for("KVMH-READY", time.monotonic() + 60, silence=1)
    finally:
        console.terminate(2)


def test_deadline_names_what_was_awaited(tmp_path):
    console = _console(tmp_path, "while :; do echo tick; sleep 0.2; done")
    try:
        with pytest.raises(BootError, match=r"the marker not seen within 1\.\d s; last console lines: tick"):
            console.wait_for("never", time.monotonic() + 1, what="the marker")
    finally:
        console.terminate(2)


def test_process_exit_is_reported_with_status_and_last_lines(tmp_path):
    console = _console(tmp_path, "echo goodbye; exit 3", process_label="QEMU")
    with pytest.raises(ConsoleClosed, match=r"QEMU exited \(status 3\) before .*goodbye"):
        console.wait_for("KVMH-READY", time.monotonic() + 20)
    console.terminate(1)


def test_killed_process_is_reported_with_signal(tmp_path):
    console = _console(tmp_path, "echo started; exec sleep 60")
    try:
        console.wait_for("started", time.monotonic() + 10)
        os.kill(console.pid, signal.SIGKILL)
        with pytest.raises(ConsoleClosed, match=r"signal 9 \(SIGKILL\)"):
            console.wait_for("never", time.monotonic() + 10)
        with pytest.raises(ConsoleClosed, match="during the test"):
            console.check("during the test")
    finally:
        console.terminate(1)


def test_terminate_kills_the_whole_process_group(tmp_path):
    console = _console(tmp_path, "trap '' TERM; sleep 300 & echo child=$!; wait")
    try:
        match = console.wait_for(r"child=(\d+)", time.monotonic() + 10)
    finally:
        start = time.monotonic()
        console.terminate(grace=1)
    child = int(match.group(1))
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(console.pid) and _gone(child)
    assert time.monotonic() - start < 10
    console.terminate(1)  # idempotent


def test_listeners_see_every_line(tmp_path):
    seen: list[str] = []
    console = Console(["/bin/sh", "-c", "printf 'a\\nb\\nc\\n'"], tmp_path / "c.log", name="t")
    console.add_listener(seen.append)
    console.start()
    console.wait_exit(10)
    console.terminate(1)
    assert seen[:3] == ["a", "b", "c"]


@pytest.fixture
def shell(tmp_path):
    env = dict(os.environ, PS1="kvmh# ", ENV="")
    console = Console(["/bin/sh", "-i"], tmp_path / "shell.log", name="shell", env=env)
    console.start()
    console.wait_for(re.escape("kvmh# "), time.monotonic() + 10)
    yield console
    console.terminate(2)


def test_marker_protocol_status_output_and_stderr(shell):
    result = run_command(shell, "echo out; echo err >&2; exit 7", timeout=10)
    assert (result.exit_status, result.stdout, result.timed_out) == (7, "out\nerr\n", False)
    assert run_command(shell, "printf 'no newline'", timeout=10).stdout == "no newline"
    assert run_command(shell, "true", timeout=10).stdout == ""
    quoted = run_command(shell, "echo \"it's\" 'a $HOME' | tr a-z A-Z", timeout=10)
    assert quoted.stdout == "IT'S A $HOME\n"
    assert run_command(shell, "for i in 1 2\ndo echo n$i\ndone", timeout=10).stdout == "n1\nn2\n"


def test_marker_protocol_survives_messages_written_to_the_terminal(shell):
    # Lines written straight to the terminal stand for kernel messages on the console.
    cmd = ("echo before; echo '[    1.234567] kvmh-noise' > /dev/tty; "
           "echo '[    2.000000] printed by the command'; echo after")
    result = run_command(shell, cmd, timeout=10)
    assert result.exit_status == 0
    assert result.stdout == "before\n[    2.000000] printed by the command\nafter\n"
    assert "kvmh-noise" in (Path(shell.log_path)).read_text()


def test_marker_protocol_timeout_interrupts_and_shell_recovers(shell):
    start = time.monotonic()
    result = run_command(shell, "echo begun; sleep 30; echo never", timeout=1.5)
    assert result.timed_out and result.exit_status == -1
    assert "begun" in result.stdout and "never" not in result.stdout
    assert time.monotonic() - start < 15
    assert run_command(shell, "echo again", timeout=10).stdout == "again\n"


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys and /proc")
def test_console_run_fails_when_process_dies(shell):
    os.kill(shell.pid, signal.SIGKILL)
    with pytest.raises(ConsoleClosed, match="signal 9"):
        run_command(shell, "echo x", timeout=10)
