"""Faults while booting or using a QEMU guest: each is one clear error and leaves no QEMU behind."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness.errors import BootError, HarnessError, InfrastructureError
from harness.targets.qemu import QemuTarget
from harness.targets.spec import TargetOptions
from harness.transport.panic import KernelPanic

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def boot_expecting(procs, error: type, image, artifacts: Path, **kwargs) -> HarnessError:
    """Start a target that must fail with ``error``; check its QEMU is gone; return the error."""
    options = dict(artifacts_dir=artifacts, accel="tcg", boot_timeout=240)
    options.update(kwargs.pop("options", {}))
    target = QemuTarget("s390x", TargetOptions(**options), image=image, **kwargs)
    with pytest.raises(error) as info:
        target.start()
    assert procs.pid(artifacts) is not None, "no QEMU was started"
    assert procs.gone(procs.pid(artifacts)), "QEMU still running after a failed start"
    target.close()
    message = str(info.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return info.value


def test_panic_during_boot_fails_fast_with_panic_lines(s390x_guest_image, tmp_path, qemu_procs):
    start = time.monotonic()
    err = boot_expecting(qemu_procs, KernelPanic, s390x_guest_image, tmp_path,
                         options={"extra_cmdline": "rdinit=/nonexistent"})
    assert time.monotonic() - start < 120  # well before the 240 s boot deadline
    assert "kernel panic during boot: Kernel panic - not syncing: VFS: Unable to mount root fs" in str(err)
    assert "Call Trace:" in err.details


def test_silent_guest_trips_the_silence_watchdog(s390x_guest_image, tmp_path, qemu_procs):
    err = boot_expecting(qemu_procs, BootError, s390x_guest_image, tmp_path, silence_timeout=8,
                         options={"extra_cmdline": "loglevel=0 rdinit=/usr/bin/busybox -- sleep 3600"})
    assert "guest printed nothing for 8.0 s" in str(err)


def test_truncated_kernel_ends_qemu_without_output(s390x_guest_image, tmp_path, qemu_procs):
    # The first 64 KiB keep the s390 kernel header, so the image passes the kernel check and QEMU
    # loads it; the guest stops at once (disabled wait) without printing anything.
    truncated = tmp_path / "vmlinuz-truncated"
    truncated.write_bytes(s390x_guest_image.kernel.read_bytes()[:65536])
    image = dataclasses.replace(s390x_guest_image, kernel=truncated)
    err = boot_expecting(qemu_procs, InfrastructureError, image, tmp_path / "art")
    assert "QEMU exited" in str(err) and "before KVMH-READY" in str(err)
    assert "printed nothing" in str(err)


def test_boot_deadline_names_what_was_awaited(s390x_guest_image, tmp_path, qemu_procs):
    # TCG takes several seconds to reach the init; 1.5 s is always too short.
    err = boot_expecting(qemu_procs, BootError, s390x_guest_image, tmp_path, options={"boot_timeout": 1.5})
    assert re.search(r"KVMH-READY from the guest's init not seen within 1\.\d s; last console lines: .", str(err))


class _SshRightAway(QemuTarget):
    """Connects over SSH without waiting for the guest's init, to reach the SSH deadline."""

    def _wait_ready(self, deadline: float) -> None:
        return None


def test_ssh_deadline_error_carries_console_lines(s390x_guest_image, tmp_path, qemu_procs):
    target = _SshRightAway("s390x", TargetOptions(artifacts_dir=tmp_path, accel="tcg", boot_timeout=2),
                           image=s390x_guest_image)
    with pytest.raises(BootError) as info:
        target.start()
    message = str(info.value)
    assert message.startswith("SSH on root@127.0.0.1:") and re.search(r" not up within 2\.\d s \(", message)
    assert "; last console lines: " in message and "(no console output)" not in message
    assert qemu_procs.gone(qemu_procs.pid(tmp_path))


@pytest.fixture
def fresh_guest(s390x_guest_image, tmp_path, qemu_procs):
    target = QemuTarget("s390x", TargetOptions(artifacts_dir=tmp_path, accel="tcg", boot_timeout=240),
                        image=s390x_guest_image)
    target.start()
    yield target
    target.close()
    assert qemu_procs.gone(qemu_procs.pid(tmp_path)), "QEMU still running after close()"


def test_qemu_killed_during_command(fresh_guest):
    pid = fresh_guest.console.pid
    killer = threading.Timer(2.0, os.kill, (pid, signal.SIGKILL))
    killer.start()
    start = time.monotonic()
    with pytest.raises(InfrastructureError) as info:
        fresh_guest.run("sleep 60", timeout=120)
    killer.join()
    assert time.monotonic() - start < 30
    assert str(info.value).startswith("QEMU exited (signal 9 (SIGKILL)) during command 'sleep 60'; "
                                      "last console lines: ")
    with pytest.raises(InfrastructureError, match="QEMU exited"):
        fresh_guest.run("true")


def test_kernel_panic_during_command(fresh_guest):
    with pytest.raises(KernelPanic) as info:
        fresh_guest.run("echo c > /proc/sysrq-trigger; sleep 60", timeout=120)
    assert str(info.value).startswith("kernel panic during command 'echo c > /proc/sysrq-trigger; sleep 60': "
                                      "Kernel panic - not syncing: sysrq triggered crash")


SCRIPT = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    from guest_images import build_image
    from harness.targets.qemu import QemuTarget
    from harness.targets.spec import TargetOptions

    logging.basicConfig(level=logging.INFO)
    if sys.argv[3] == "with-handler":
        from harness.signals import install_sigterm_handler
        install_sigterm_handler()
    target = QemuTarget("s390x", TargetOptions(artifacts_dir=Path(sys.argv[2]), accel="tcg", boot_timeout=240),
                        image=build_image("s390x"))
    target.start()
    print("BOOTED", flush=True)
    target.run("sleep 300", timeout=600)
    print("COMMAND ENDED", flush=True)
""")


@pytest.mark.parametrize("sig, phase, handler", [
    (signal.SIGINT, "boot", "plain"),
    (signal.SIGTERM, "boot", "plain"),
    (signal.SIGINT, "command", "plain"),
    (signal.SIGTERM, "command", "plain"),
    (signal.SIGTERM, "command", "with-handler"),
    (signal.SIGKILL, "command", "plain"),
], ids=lambda value: value.name if isinstance(value, signal.Signals) else value)
def test_signal_to_the_harness_stops_qemu(s390x_guest_image, tmp_path, qemu_procs, sig, phase, handler):
    script = tmp_path / "harness_script.py"
    script.write_text(SCRIPT)
    artifacts = tmp_path / "artifacts"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, str(script), phase, str(artifacts), handler],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    pid = None
    try:
        deadline = time.monotonic() + 240
        while pid is None and time.monotonic() < deadline and proc.poll() is None:
            pid = qemu_procs.pid(artifacts)
            time.sleep(0.1)
        assert pid is not None, f"the script started no QEMU: {proc.stderr.read() if proc.poll() is not None else ''}"
        if phase == "command":
            assert proc.stdout.readline().strip() == "BOOTED"
            time.sleep(1.0)  # let "sleep 300" start in the guest
        else:
            time.sleep(1.0)  # QEMU is booting the kernel
            assert not (artifacts / "console.log").read_text(errors="replace").count("KVMH-READY")
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert qemu_procs.gone(pid, wait=10), f"QEMU (pid {pid}) outlived the harness after {sig.name} during {phase}"
    if sig == signal.SIGINT or handler == "with-handler":
        # An unhandled KeyboardInterrupt ends Python by SIGINT, after unwinding and atexit.
        assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in stderr
    else:
        assert proc.returncode == -sig
    assert "COMMAND ENDED" not in proc.stdout.read()
