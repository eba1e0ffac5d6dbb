"""Host processes as the benchmarks watch them: exact exit times (pidfd), children and threads."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path
from typing import Dict, List, Optional


def wait_exit(pid: int, timeout_s: float, *, poll_s: float = 0.001) -> Optional[float]:
    """Wait for ``pid`` to exit; return the ``time.monotonic()`` at which it was seen gone, None on timeout.

    Uses a pidfd (Linux 5.3+: readable once the process has exited, child or not); otherwise polls
    ``/proc/<pid>/stat`` for a zombie or a missing entry every ``poll_s``.
    """
    deadline = time.monotonic() + timeout_s
    try:
        fd = os.pidfd_open(pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            remaining = max(0.0, deadline - time.monotonic())
            return time.monotonic() if poller.poll(remaining * 1000) else None
        finally:
            os.close(fd)
    while time.monotonic() < deadline:
        if not _running(pid):
            return time.monotonic()
        time.sleep(poll_s)
    return None


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> List[int]:
    """The direct children of ``pid`` (from every thread's ``children`` file)."""
    out: List[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return sorted(set(out))


def threads(pid: int) -> Dict[int, str]:
    """Thread id -> thread name (``comm``) of ``pid``."""
    out: Dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out[int(task.name)] = (task / "comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return out


def find_thread(pid: int, name_prefix: str, timeout_s: float, *, poll_s: float = 0.001) -> Optional[int]:
    """Poll ``/proc/<pid>/task`` until a thread named ``name_prefix…`` appears; its tid, or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for tid, comm in threads(pid).items():
            if comm.startswith(name_prefix):
                return tid
        if not _running(pid):
            return None
        time.sleep(poll_s)
    return None
