"""What running a command produces: the result record and the streaming callback (below transport and targets)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

OutputCallback = Callable[[str, str], None]
"""Called with (stream name ``"stdout"``/``"stderr"``, text chunk) while a command runs."""


@dataclass(frozen=True)
class CommandResult:
    """What one command on a target produced."""

    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out
