"""QEMU's asynchronous-teardown spelling, the guest fill command, and the quit measurement on a real process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.bench.guest_fill import fill_command, parse_filled
from harness.bench.hostmem import MIB_KB, cap_sizes, wait_memory_back
from harness.bench.process import children, find_thread, wait_exit
from harness.bench.qemu_flags import OPTION, RUN_WITH, async_teardown_args, flavour_from_help
from harness.bench.qemu_teardown import SizedQemuTarget, measure_quit, teardown_argv
from harness.targets.spec import TargetOptions

HELP_72 = """-no-shutdown     stop before shutdown
-async-teardown enable asynchronous teardown
-action reboot=reset|shutdown"""
HELP_90 = """-run-with [async-teardown=on|off][,chroot=dir][user=username|uid:gid]
                Set miscellaneous QEMU process lifecycle options:"""


@pytest.mark.parametrize("text, flavour", [(HELP_72, OPTION), (HELP_90, RUN_WITH), ("-help\n-version", None),
                                           (HELP_72 + "\n" + HELP_90, RUN_WITH)])
def test_flavour_from_help(text: str, flavour: str) -> None:
    assert flavour_from_help(text) == flavour


def test_async_teardown_arguments() -> None:
    assert async_teardown_args(OPTION, True) == ["-async-teardown"]
    assert async_teardown_args(RUN_WITH, True) == ["-run-with", "async-teardown=on"]
    assert async_teardown_args(None, False) == [] == teardown_argv(OPTION, "sync")
    with pytest.raises(ValueError, match="no asynchronous teardown"):
        async_teardown_args(None, True)


def test_sized_target_appends_arguments_to_the_qemu_command_line() -> None:
    class Image:
        kernel, initrd = "/k", "/i"

    target = SizedQemuTarget("x86_64", TargetOptions(memory_mb=4096), ["-async-teardown"], image=Image())
    argv = target.qemu_argv("qemu-system-x86_64", "tcg", 2222)
    assert argv[-1] == "-async-teardown"
    assert argv[argv.index("-m") + 1] == "4096"


def test_fill_command_caps_by_available_memory_and_reports() -> None:
    command = fill_command(3072)
    assert "want=3072" in command and "MemAvailable" in command and "mount -t tmpfs" in command
    out = subprocess.run(["sh", "-c", "echo KVMH-FILLED 42"], capture_output=True, text=True).stdout
    assert parse_filled(out) == 42 and parse_filled("nothing") == 0


def test_cap_sizes_keeps_what_fits() -> None:
    kept, dropped = cap_sizes([1, 2, 4, 32], available_kb=10 << 20, reserve_gib=2.0, factor=1.15)
    assert kept == [1, 2, 4] and dropped == [32]


def test_wait_memory_back_uses_the_expected_gain_less_tolerance() -> None:
    values = iter([1000, 1000, 1000 + 900 * MIB_KB, 1000 + 1024 * MIB_KB])
    result = wait_memory_back(0.0, 1000, 1024 * MIB_KB, read=lambda: next(values), interval_s=0.0,
                              timeout_s=1e9)
    assert result.returned and len(result.samples) == 3  # 900 of 1024 MiB: within the 128 MiB tolerance
    never = wait_memory_back(0.0, 1000, 1 << 30, read=lambda: 1000, interval_s=0.0, timeout_s=0.0)
    assert not never.returned and never.samples


def test_measure_quit_times_a_real_process_exit() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(60)"])
    try:
        import time as _time

        _time.sleep(0.5)
        sample = measure_quit(proc.pid, memory_timeout_s=5.0)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -15  # SIGTERM ended it
    assert sample["exit_s"] is not None and 0 <= sample["exit_s"] < 5
    assert sample["qemu_rss_mib"] >= 60 and sample["helpers"] == 0


def test_wait_exit_times_out_on_a_running_process_and_finds_threads() -> None:
    script = ("import ctypes, threading, time\n"
              "def named():\n"
              "    ctypes.CDLL(None).prctl(15, b'async_cleanup', 0, 0, 0); time.sleep(30)\n"
              "threading.Thread(target=named, daemon=True).start(); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert wait_exit(proc.pid, 0.05) is None
        assert find_thread(proc.pid, "async_cleanup", 10.0) is not None
        assert children(proc.pid) == []
    finally:
        proc.kill()
        proc.wait()
    assert wait_exit(proc.pid, 1.0) is not None


def test_free_pages_in_per_cpu_lists_are_counted(tmp_path) -> None:
    from harness.bench.hostmem import pcp_free_kb

    zoneinfo = tmp_path / "zoneinfo"
    zoneinfo.write_text("Node 0, zone Normal\n  pagesets\n    cpu: 0\n              count: 100\n"
                        "    cpu: 1\n              count: 28\n              high:  500\n")
    import os

    assert pcp_free_kb(str(zoneinfo)) == 128 * os.sysconf("SC_PAGE_SIZE") // 1024
    assert pcp_free_kb(str(tmp_path / "missing")) == 0
