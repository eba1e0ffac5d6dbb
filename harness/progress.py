"""What a person sees while a long step runs: a live bar in a terminal, timed lines in a log.

Every long step is a :func:`harness.stages.stage`; inside it a step may report how far it got with
:func:`update` (bytes downloaded, objects compiled, packages fetched) and what it works on now. The display
is chosen once per command by :func:`configure`:

- ``tty``: a live tqdm bar per stage on stderr (count or bytes, rate, ETA, current item);
- ``lines``: outside a terminal (CI logs, pipes), one line when a stage starts, one when it ends with its
  elapsed time, and a heartbeat line at most every ``heartbeat_s`` while it runs; never a carriage return;
- ``quiet``: nothing.

Writes go through a sink (default: stderr). Inside pytest the plugin sets a sink that suspends output
capture for the write, so progress shows during collection and fixture setup too.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import stages

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
Sink = Callable[[str], None]


def _stderr_sink(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


@dataclass
class _Live:
    """A running stage: its counters and (in tty mode) its bar."""

    name: str
    started: float
    done: float = 0.0
    total: Optional[float] = None
    unit: str = ""
    current: str = ""
    bar: Any = None
    last_beat: float = field(default_factory=time.monotonic)


class Display:
    """Shows the stages of one command in one of three modes."""

    def __init__(self, mode: str = "lines", sink: Sink = _stderr_sink, heartbeat_s: float = HEARTBEAT_S) -> None:
        if mode not in ("tty", "lines", "quiet"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.sink = sink
        self.heartbeat_s = heartbeat_s
        self._live: dict[str, _Live] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    # -- stage events (from harness.stages) ----------------------------------------------------------------

    def on_stage(self, name: str, record: Optional[stages.StageRecord]) -> None:
        if record is None:
            self._start(name)
        else:
            self._finish(name, record)

    def _start(self, name: str) -> None:
        live = _Live(name, time.monotonic())
        with self._guard:
            self._live[name] = live
        if self.mode == "lines":
            self.sink(f"kvmh: {name} ...\n")
            self._ensure_heartbeat()
        elif self.mode == "tty":
            live.bar = self._new_bar(live)

    def _finish(self, name: str, record: stages.StageRecord) -> None:
        with self._guard:
            live = self._live.pop(name, None)
        if live is not None and live.bar is not None:
            live.bar.close()
        if self.mode == "quiet":
            return
        state = "done" if record.outcome == "ok" else "FAILED"
        counted = f"; {_amount(live.done, live.unit)}" if live is not None and live.done else ""
        self.sink(f"kvmh: {name} {state} in {record.seconds:.1f} s{counted}\n")

    # -- progress within a stage ---------------------------------------------------------------------------

    def update(self, name: str, *, advance: float = 0.0, done: Optional[float] = None,
               total: Optional[float] = None, unit: Optional[str] = None, current: Optional[str] = None) -> None:
        with self._guard:
            live = self._live.get(name)
            if live is None:
                return
            live.done = done if done is not None else live.done + advance
            if total is not None:
                live.total = total
            if unit is not None:
                live.unit = unit
            if current is not None:
                live.current = current
        if live.bar is not None:
            self._refresh_bar(live)

    def heartbeat_now(self) -> None:
        """Write one heartbeat line per stage that has not said anything for ``heartbeat_s``."""
        now = time.monotonic()
        with self._guard:
            due = [live for live in self._live.values() if now - live.last_beat >= self.heartbeat_s]
            for live in due:
                live.last_beat = now
        for live in due:
            counted = ""
            if live.done:
                counted = f": {_amount(live.done, live.unit)}" + (
                    f" of {_amount(live.total, live.unit)}" if live.total else "")
            now_at = f"; now {live.current}" if live.current else ""
            self.sink(f"kvmh: {live.name} still running after {now - live.started:.0f} s{counted}{now_at}\n")

    def close(self) -> None:
        self._stop.set()
        with self._guard:
            bars = [live.bar for live in self._live.values() if live.bar is not None]
            self._live.clear()
        for bar in bars:
            bar.close()

    def _ensure_heartbeat(self) -> None:
        if self._beat is not None and self._beat.is_alive():
            return
        self._beat = threading.Thread(target=self._beat_loop, name="kvmh-heartbeat", daemon=True)
        self._beat.start()

    def _beat_loop(self) -> None:
        tick = max(0.05, min(1.0, self.heartbeat_s / 4))
        while not self._stop.wait(tick):
            self.heartbeat_now()

    # -- tty bars --------------------------------------------------------------------------------------------

    def _new_bar(self, live: _Live) -> Any:
        from tqdm import tqdm

        return tqdm(desc=f"kvmh: {live.name}", file=_SinkFile(self.sink), leave=False, dynamic_ncols=True,
                    mininterval=0.2, bar_format="{desc}: {elapsed} {postfix}")

    def _refresh_bar(self, live: _Live) -> None:
        bar = live.bar
        if live.total and bar.total != live.total:
            bar.reset(total=live.total)
            bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}"
            if live.unit == "B":
                bar.unit, bar.unit_scale, bar.unit_divisor = "B", True, 1024
        bar.n = live.done
        bar.set_postfix_str(live.current[-60:], refresh=False)
        bar.refresh()


class _SinkFile:
    """A file-like object for tqdm that writes through a sink."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, text: str) -> None:
        if text:
            self._sink(text)

    def flush(self) -> None:
        pass


def _amount(value: Optional[float], unit: str) -> str:
    if value is None:
        return "?"
    if unit == "B":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.0f}{' ' + unit if unit else ''}"


_display: Optional[Display] = None


def choose_mode(quiet: bool = False, stream: Any = None) -> str:
    """``quiet`` when asked, ``tty`` on an interactive terminal, ``lines`` elsewhere."""
    if quiet:
        return "quiet"
    stream = stream if stream is not None else sys.stderr
    return "tty" if getattr(stream, "isatty", lambda: False)() else "lines"


def configure(mode: str, sink: Sink = _stderr_sink, heartbeat_s: float = HEARTBEAT_S) -> Display:
    """Install the display for this command (replacing any earlier one) and route stage events to it."""
    global _display
    if _display is not None:
        _display.close()
        stages.remove_listener(_display.on_stage)
    _display = Display(mode, sink, heartbeat_s)
    stages.add_listener(_display.on_stage)
    return _display


def current() -> Optional[Display]:
    return _display


def set_sink(sink: Sink) -> None:
    """Send the current display's output through ``sink`` (pytest's capture-suspending writer)."""
    if _display is not None:
        _display.sink = sink


def update(name: str, **fields: Any) -> None:
    """Report progress within stage ``name`` (see :meth:`Display.update`); a no-op without a display."""
    if _display is not None:
        _display.update(name, **fields)
