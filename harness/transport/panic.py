"""Classify kernel console lines: panics end a boot at once, Oopses and warnings are recorded."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Optional

from .. import printk
from ..errors import BootError

PRINTK_PREFIX = printk.TIMESTAMPED
PANIC = re.compile(r"Kernel panic - not syncing")
PANIC_END = re.compile(r"---\[ end Kernel panic")
# Splats that do not stop the kernel by themselves (oops=panic is not set).
SPLATS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kasan", re.compile(r"BUG: KASAN: |BUG: KFENCE: |UBSAN: ")),
    ("lockdep", re.compile(r"WARNING: possible (?:circular|recursive) locking|WARNING: suspicious RCU usage")),
    ("oops", re.compile(r"\bOops\b")),
    ("bug", re.compile(r"\bBUG: |kernel BUG at ")),
    ("warning", re.compile(r"^WARNING: .* at ")),
    ("fault", re.compile(r"Unable to handle kernel|general protection fault")),
    ("rcu-stall", re.compile(r"rcu: INFO: rcu_\w+ (?:self-)?detected stall")),
    ("hung-task", re.compile(r"INFO: task .* blocked for more than")),
)


def strip_printk(line: str) -> str:
    """Return ``line`` without its printk timestamp prefix."""
    return printk.strip(line)


def is_printk(line: str) -> bool:
    """True when ``line`` starts like a kernel message printed with a timestamp."""
    return printk.is_kernel_line(line)


def classify(line: str) -> Optional[str]:
    """Return ``"panic"``, a splat kind (``"oops"``, ``"bug"``, ...) or None for an ordinary line."""
    body = strip_printk(line)
    if PANIC.search(body):
        return "panic"
    for kind, pattern in SPLATS:
        if pattern.search(body):
            return kind
    return None


@dataclass
class Splat:
    """One non-fatal kernel splat seen on the console (first line plus a few after it)."""

    kind: str
    lines: list[str]

    @property
    def title(self) -> str:
        return strip_printk(self.lines[0]).strip()


class KernelPanic(BootError):
    """The kernel panicked; ``details`` holds the panic lines."""


@dataclass
class ConsoleScanner:
    """Feed console lines; keeps the last lines, the panic block and the splats seen.

    A panic block starts at ``Kernel panic - not syncing`` and is complete at its
    ``---[ end Kernel panic`` line (or when the caller decides the stream has ended).
    """

    keep_lines: int = 200
    splat_context: int = 12
    last: deque = field(default_factory=lambda: deque(maxlen=200))
    panic_lines: list[str] = field(default_factory=list)
    panic_complete: bool = False
    splats: list[Splat] = field(default_factory=list)
    _open_splat: Optional[Splat] = None

    def __post_init__(self) -> None:
        if self.last.maxlen != self.keep_lines:
            self.last = deque(self.last, maxlen=self.keep_lines)

    @property
    def panicked(self) -> bool:
        return bool(self.panic_lines)

    @property
    def panic_title(self) -> str:
        """The ``Kernel panic - not syncing: ...`` line without its timestamp."""
        return strip_printk(self.panic_lines[0]).strip() if self.panic_lines else ""

    def feed(self, line: str) -> Optional[str]:
        """Take one line (without newline); return its classification."""
        self.last.append(line)
        if self.panic_lines and not self.panic_complete:
            self.panic_lines.append(line)
            if PANIC_END.search(line):
                self.panic_complete = True
            return "panic"
        kind = classify(line)
        if kind == "panic":
            self.panic_lines = [line]
            self._open_splat = None
            return kind
        if self._open_splat is not None:
            if len(self._open_splat.lines) < self.splat_context:
                self._open_splat.lines.append(line)
            else:
                self._open_splat = None
        if kind is not None:
            self._open_splat = Splat(kind, [line])
            self.splats.append(self._open_splat)
        return kind

    def feed_all(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.feed(line)

    def last_lines(self, count: int = 20) -> list[str]:
        lines = list(self.last)
        return lines[-count:] if count else lines

    def panic_error(self, when: str, log_path: object = None) -> KernelPanic:
        """Build the error for a panic seen ``when`` (e.g. "during boot")."""
        where = f" (console log: {log_path})" if log_path else ""
        return KernelPanic(f"kernel panic {when}: {self.panic_title}{where}",
                           details="\n".join(self.panic_lines))


def summarize(lines: Iterable[str], count: int = 3, width: int = 160) -> str:
    """Join the last non-empty lines into one line for an error message."""
    kept = [line.strip() for line in lines if line.strip()][-count:]
    text = " | ".join(kept) if kept else "(no console output)"
    return text if len(text) <= width * count else text[-width * count:]


def seconds(value: float) -> str:
    """``1.5 s`` below ten seconds, ``42 s`` above: for messages about waits."""
    return f"{value:.1f} s" if value < 9.95 else f"{value:.0f} s"
