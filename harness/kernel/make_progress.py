"""Run a kernel ``make``, keep its whole output in the build log, and report how far it got.

Kbuild prints one line per built file (``  CC      kernel/fork.o``). Counting them against the count of
the last build with the same config gives a progress bar and an ETA; a first build counts against an
estimate from the config's size. Counts are kept per config hash in the cache.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from .. import progress
from ..paths import cache_subdir

log = logging.getLogger(__name__)

_STEP = re.compile(r"^\s{2}([A-Z][A-Z0-9_]{1,11}(?: \[[A-Z]\])?)\s+(\S+)")
OBJECTS_PER_OPTION = 1.3
"""Files kbuild builds per enabled config option: measured on the harness's small s390x config."""


def count_file(config_hash: str) -> Path:
    return cache_subdir("kernel/objects") / f"{config_hash[:32]}.json"


def expected_steps(config_hash: str, config_text: str) -> tuple[int, bool]:
    """(steps expected, whether that is measured rather than estimated) for a build with this config."""
    try:
        return int(json.loads(count_file(config_hash).read_text())["steps"]), True
    except (OSError, ValueError, KeyError):
        enabled = sum(1 for line in config_text.splitlines() if line.endswith(("=y", "=m")))
        return max(100, int(enabled * OBJECTS_PER_OPTION)), False


def remember_steps(config_hash: str, steps: int) -> None:
    if steps <= 0:
        return
    path = count_file(config_hash)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"steps": steps}) + "\n")
    tmp.replace(path)


def run_make(cmd: Sequence[str], log_path: Path, timeout: float, *, stage: str = "",
             expected: Optional[int] = None) -> tuple[int, int, bool]:
    """Run ``cmd`` with its output appended to ``log_path``; returns (exit status, steps seen, timed out).

    Each kbuild step line moves ``stage``'s progress (count, expected total, current file). Past
    ``timeout`` seconds the make is killed.
    """
    steps = 0
    timed_out = threading.Event()
    with open(log_path, "ab") as log_file:
        log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        log_file.flush()
        # Its own process group: at the deadline the compilers it started die with it (and release the pipe).
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

        def kill_on_deadline() -> None:
            if proc.poll() is None:
                timed_out.set()
                _kill_group(proc)

        timer = threading.Timer(timeout, kill_on_deadline)
        timer.daemon = True
        timer.start()
        if stage and expected:
            progress.update(stage, done=0, total=expected, unit="files")
        last = 0.0
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                log_file.write(raw)
                match = _STEP.match(raw.decode(errors="replace"))
                if match is None:
                    continue
                steps += 1
                now = time.monotonic()
                if stage and now - last >= 0.2:
                    last = now
                    total = max(expected or 0, steps) or None
                    progress.update(stage, done=steps, total=total, current=match.group(2))
            status = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                _kill_group(proc)
                proc.wait()
    if stage:
        progress.update(stage, done=steps)
    return status, steps, timed_out.is_set()


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the make's process group while its leader is unreaped (so the group id cannot be reused)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
