"""A record of every QEMU the harness runs here, so that one left behind by a killed harness is ended later.

Each QEMU gets ``<cache>/run/qemu/<token>.json`` (pid, start time, token) and carries
``KVMH_QEMU=<token>`` in its environment; the harness process holds a lock on the record for as long
as that QEMU runs.  A record nobody holds belongs to a harness that is gone (a lock is released by
the kernel when its holder dies, in any pid namespace): :func:`reap_leftovers` kills its QEMU when
that pid is still the same process (start time) and carries the token, then removes the record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
from pathlib import Path
from typing import Optional

from ..locks import file_lock, try_file_lock
from ..paths import cache_subdir

log = logging.getLogger(__name__)

ENV = "KVMH_QEMU"


def registry_dir() -> Path:
    path = cache_subdir("run/qemu")
    path.chmod(0o700)
    return path


def start_time(pid: int) -> Optional[int]:
    """The start time of ``pid`` in clock ticks since boot, or None when there is no such process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def carries_token(pid: int, token: str) -> bool:
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{ENV}={token}".encode() in entries


def new_token() -> str:
    return secrets.token_hex(8)


class Registration:
    """One running QEMU's record, locked until :meth:`release`."""

    def __init__(self, pid: int, token: str, root: Optional[Path] = None) -> None:
        self.path = (root or registry_dir()) / f"{token}.json"
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(file_lock(self.path, what="the record of a running QEMU"))
        record = {"pid": pid, "start": start_time(pid), "token": token}
        self.path.write_text(json.dumps(record) + "\n")

    def release(self) -> None:
        """Drop the record (QEMU has ended)."""
        self.path.unlink(missing_ok=True)
        self._stack.close()


def reap_leftovers(root: Optional[Path] = None) -> list[int]:
    """Kill the QEMUs of records nobody holds (their harness died) and drop those records; return the pids killed."""
    killed = []
    for path in sorted((root or registry_dir()).glob("*.json")):
        with try_file_lock(path) as mine:
            if not mine:
                continue  # its harness still runs
            try:
                text = path.read_text()
                record = json.loads(text) if text else None
            except (OSError, ValueError):
                record = {}
            if record is None:
                continue  # being created: its owner locks it next
            pid, token = record.get("pid"), record.get("token")
            if isinstance(pid, int) and isinstance(token, str) and record.get("start") == start_time(pid) \
                    and carries_token(pid, token):
                log.warning("ending QEMU pid %d left behind by a harness that was killed", pid)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                killed.append(pid)
            path.unlink(missing_ok=True)
    return killed
