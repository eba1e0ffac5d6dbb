"""The fatal-signal case with secure memory: SIGKILL QEMU while its ``async_cleanup`` thread runs PERFORM.

Pages become secure only when a Secure Execution guest, unpacked by the Ultravisor, touches them, so the
agent's ioctl scenario cannot make PERFORM long enough to be interrupted.  Here a large SE guest fills
most of its memory, reboots from inside (QEMU issues PREPARE and starts ``async_cleanup`` running
PERFORM), and a watcher on the host polls ``/proc/<qemu>/task`` for that thread and SIGKILLs QEMU a set
time after the thread appeared.  Afterwards: no WARN or other splat in the host's kernel log, host memory
back, and the next SE guest boots.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import HarnessError
from ..targets.base import Target
from ..targets.spec import TargetOptions
from .guest_fill import fill_guest
from .se_guest import TEARDOWN_THREAD, SeGuestTarget

log = logging.getLogger(__name__)

# Runs on the host (stdlib only): argv = qemu pid, thread name prefix, kill delay (ms), timeout (s).
WATCH_AND_KILL = r"""
import json, os, signal, sys, time
pid, name, delay_ms, timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
start = time.monotonic()
found = None
print("KVMH-WATCHING", flush=True)
while found is None and time.monotonic() - start < timeout:
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        break
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm.startswith(name):
            found = (int(tid), time.monotonic())
            break
    else:
        time.sleep(0.0005)
out = {"found": found is not None, "watched_s": time.monotonic() - start}
if found is not None:
    tid, seen = found
    time.sleep(delay_ms / 1000.0)
    alive = os.path.exists("/proc/%d/task/%d" % (pid, tid))
    os.kill(pid, signal.SIGKILL)
    out.update(tid=tid, seen_after_s=seen - start, killed_after_thread_s=time.monotonic() - seen,
               thread_alive_at_kill=alive)
print("KVMH-RESULT " + json.dumps(out), flush=True)
"""


def watch_command(qemu_pid: int, delay_ms: float, timeout_s: float, name: str = TEARDOWN_THREAD) -> str:
    """The host command that finds QEMU's teardown thread and SIGKILLs QEMU ``delay_ms`` after it appeared."""
    return shlex.join(["python3", "-c", WATCH_AND_KILL, str(qemu_pid), name, f"{delay_ms:g}", f"{timeout_s:g}"])


def parse_watch(stdout: str) -> Dict[str, Any]:
    """The watcher's result (``{"found": False}`` when it printed none)."""
    for line in stdout.splitlines():
        if line.startswith("KVMH-RESULT "):
            return json.loads(line.split(" ", 1)[1])
    return {"found": False, "error": "the watcher printed no result"}


@dataclass
class KillConfig:
    size_gib: float = 16
    delay_ms: float = 5.0
    fill_fraction: float = 0.9
    host_key_doc: Optional[Path] = None
    boot_timeout: float = 900.0
    memory_settle_s: float = 300.0


@dataclass
class KillOutcome:
    """What one SIGKILL-during-PERFORM run observed on the host."""

    watch: Dict[str, Any] = field(default_factory=dict)
    splats: List[str] = field(default_factory=list)
    memory_back_s: Optional[float] = None
    next_guest_ok: bool = False
    errors: List[str] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        """The thread was still running when SIGKILL landed (else the interrupted path was not exercised)."""
        return bool(self.watch.get("found") and self.watch.get("thread_alive_at_kill"))

    @property
    def ok(self) -> bool:
        return not self.splats and self.memory_back_s is not None and self.next_guest_ok and not self.errors

    def notes(self) -> List[str]:
        if not self.watch.get("found"):
            return [f"QEMU's {TEARDOWN_THREAD} thread never appeared: PREPARE was not used on reboot "
                    "(guest ≤ 2 GiB, capability 224 missing, or async_destroy=0)"]
        if not self.interrupted:
            return ["PERFORM finished before the SIGKILL landed: the interrupted path was not exercised this time"]
        return [f"SIGKILL landed {self.watch.get('killed_after_thread_s', 0) * 1000:.1f} ms after "
                f"{TEARDOWN_THREAD} started, while it ran"]


def _mem_available_kb(host: Target) -> int:
    out = host.run("awk '/^MemAvailable:/ {print $2}' /proc/meminfo", timeout=30).stdout.strip()
    return int(out) if out.isdigit() else 0


def run_kill_during_perform(host: Target, config: KillConfig) -> KillOutcome:
    """Boot, fill, reboot, SIGKILL QEMU during PERFORM, then check the host (see the module docstring)."""
    from guest_images import build_image

    from ..results.splats import find_splats

    outcome = KillOutcome()
    image = build_image("s390x")
    cursor = host.dmesg_cursor()
    baseline = _mem_available_kb(host)
    options = TargetOptions(memory_mb=int(config.size_gib * 1024), boot_timeout=config.boot_timeout)
    guest = SeGuestTarget(host, image, options, host_key_doc=config.host_key_doc)
    try:
        guest.start()
        fill_guest(guest, int(config.size_gib * 1024 * config.fill_fraction))
        result: Dict[str, Any] = {}
        watcher = threading.Thread(target=lambda: result.update(parse_watch(host.run(
            watch_command(guest.qemu_pid, config.delay_ms, 120.0), timeout=180).stdout)), daemon=True)
        watcher.start()
        time.sleep(0.5)  # the watcher polls before the reboot starts
        try:
            guest.run("reboot -f", timeout=5)
        except HarnessError:
            pass
        watcher.join(200)
        outcome.watch = result
    except HarnessError as err:
        outcome.errors.append(str(err))
    finally:
        guest.close()
    t0 = time.monotonic()
    while time.monotonic() - t0 < config.memory_settle_s:
        if _mem_available_kb(host) >= baseline - max(512 * 1024, baseline // 50):
            outcome.memory_back_s = time.monotonic() - t0
            break
        time.sleep(1.0)
    outcome.splats = [f"{s.kind}: {s.first_line} [{s.fingerprint}]" for s in find_splats(host.dmesg_since(cursor))]
    nxt = SeGuestTarget(host, image, TargetOptions(memory_mb=4096, boot_timeout=config.boot_timeout),
                        host_key_doc=config.host_key_doc)
    try:
        nxt.start()
        outcome.next_guest_ok = nxt.run("true", timeout=60).ok
    except HarnessError as err:
        outcome.errors.append(f"the next SE guest did not boot: {err}")
    finally:
        nxt.close()
    return outcome
