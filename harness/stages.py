"""The run's stages (source, image, selftest build, boot, …): each timed and kept for the end-of-run timeline.

Long steps wrap themselves in :func:`stage`. Each finished stage is logged, kept in a process-wide list
that the pytest plugin prints as a timeline at the end of a run and writes as ``stages.json``, and can be
reported to listeners (a progress display).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageRecord:
    name: str
    seconds: float
    outcome: str  # "ok" or "failed"
    detail: str = ""


_records: list[StageRecord] = []
_listeners: list[Callable[[str, Optional[StageRecord]], None]] = []
_guard = threading.Lock()


@contextlib.contextmanager
def stage(name: str, detail: str = "") -> Iterator[None]:
    """Time the ``with`` block as stage ``name``; a raised exception marks it failed and goes on up."""
    for listener in list(_listeners):
        listener(name, None)
    started = time.monotonic()
    outcome = "failed"
    try:
        yield
        outcome = "ok"
    finally:
        record = StageRecord(name, round(time.monotonic() - started, 2), outcome, detail)
        with _guard:
            _records.append(record)
        log.info("stage %s %s in %.1f s", name, outcome, record.seconds)
        for listener in list(_listeners):
            listener(name, record)


def records(since: int = 0) -> list[StageRecord]:
    with _guard:
        return list(_records[since:])


def mark() -> int:
    """The index the next stage will get: a run's own stages are ``records(mark)`` taken at its start."""
    with _guard:
        return len(_records)


def forget_since(index: int) -> None:
    """Drop the stages recorded from ``index`` on (a run, maybe nested in another, has reported them)."""
    with _guard:
        del _records[index:]


def add_listener(listener: Callable[[str, Optional[StageRecord]], None]) -> None:
    """``listener(name, None)`` at a stage's start and ``listener(name, record)`` at its end."""
    _listeners.append(listener)


def remove_listener(listener: Callable[[str, Optional[StageRecord]], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def timeline_lines(entries: list[StageRecord]) -> list[str]:
    """One line per stage: ``stage <name> <seconds> s [failed]``."""
    return [f"stage {r.name:<26} {r.seconds:8.1f} s" + ("" if r.outcome == "ok" else "  FAILED")
            + (f"  ({r.detail})" if r.detail else "") for r in entries]


def write_json(path: Path, entries: list[StageRecord]) -> None:
    path.write_text(json.dumps([asdict(r) for r in entries], indent=1) + "\n")
