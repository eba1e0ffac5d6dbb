"""Per-test kernel log windows: the dmesg a test produced, and the splats in it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import HarnessError
from ..targets.base import Target

log = logging.getLogger(__name__)


@dataclass
class WindowResult:
    """What the kernel printed during one test, split into unexpected and expected splats."""

    text: str
    splats: list = field(default_factory=list)
    expected: list = field(default_factory=list)


def can_read_kernel_log(target: Optional[Target]) -> bool:
    """True for targets with a kernel log (everything but the reference model)."""
    return target is not None and getattr(target, "kind", "") != "model"


class KernelLogWindow:
    """Brackets a test with kernel log cursors; ``close()`` returns what appeared in between."""

    def __init__(self, target: Target, start: Optional[int] = None) -> None:
        self.target = target
        self.start: Optional[int] = start
        self.end: Optional[int] = None
        if start is None:
            try:
                self.start = target.dmesg_cursor()
            except HarnessError as err:
                log.warning("no kernel log cursor on %s: %s", target.spec, err)

    def close(self, expected_kinds: Sequence[str] = ()) -> Optional[WindowResult]:
        if self.start is None:
            return None
        try:
            text, self.end = self.target.dmesg_read(self.start)
        except HarnessError as err:
            log.warning("cannot read the kernel log on %s: %s", self.target.spec, err)
            return None
        from .splats import find_splats

        result = WindowResult(text=text)
        for splat in find_splats(text):
            if any(kind.lower() == splat.kind.lower() for kind in expected_kinds):
                result.expected.append(splat)
            else:
                result.splats.append(splat)
        return result


def splat_failure_message(splats: list) -> str:
    """The failure text for a test whose window holds splats: kind, first line, fingerprint, full trace."""
    parts = [f"kernel splat during this test ({len(splats)}):"]
    for splat in splats:
        parts.append(f"  {splat.kind}: {splat.first_line}")
        parts.append(f"  fingerprint: {splat.fingerprint}")
    parts.append("")
    for splat in splats:
        parts.append(splat.text)
    return "\n".join(parts)
