"""The one definition of a kernel log line's prefix: ``<level>``, ``[  seconds.micros]`` and the caller id.

``[    1.646029] `` may be followed by a caller id ``[    T1] `` / ``[C0] `` (CONFIG_PRINTK_CALLER); a raw
``/dev/kmsg``-style read may start with ``<6>``.
"""

from __future__ import annotations

import re

LEVEL = r"(?:<\d{1,3}>)?"
TIMESTAMP = r"\[\s*\d+\.\d+\]"
CALLER = r"(?:\[\s*[CT]\d+\])?"

PREFIX = re.compile(rf"^{LEVEL}(?P<ts>{TIMESTAMP})?{CALLER}")
"""Any printk prefix at a line's start (each part optional)."""
TIMESTAMPED = re.compile(rf"^{TIMESTAMP}{CALLER}\s?")
"""A line that starts with a timestamp: a kernel message on a console."""
INSIDE = re.compile(rf"{TIMESTAMP}{CALLER} ")
"""A timestamped kernel message starting somewhere inside a line (cut into other output)."""


def strip(line: str) -> str:
    """``line`` without its printk timestamp prefix."""
    return TIMESTAMPED.sub("", line, count=1)


def is_kernel_line(line: str) -> bool:
    """True when ``line`` starts like a kernel message printed with a timestamp."""
    return TIMESTAMPED.match(line) is not None
