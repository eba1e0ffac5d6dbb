"""How this QEMU spells asynchronous teardown: ``-async-teardown`` (7.2–8.x) or ``-run-with async-teardown=on``."""

from __future__ import annotations

import logging
import re
import subprocess
from typing import List, Optional

log = logging.getLogger(__name__)

RUN_WITH = "run-with"
OPTION = "option"


def flavour_from_help(help_text: str) -> Optional[str]:
    """``run-with`` when ``-run-with`` offers ``async-teardown``, ``option`` for ``-async-teardown``, else None."""
    if re.search(r"^-run-with\b.*async-teardown", help_text, re.M):
        return RUN_WITH
    if re.search(r"^-async-teardown\b", help_text, re.M):
        return OPTION
    return None


def detect_flavour(binary: str) -> Optional[str]:
    """Ask ``binary -help`` (None when it cannot run or offers no asynchronous teardown)."""
    try:
        text = subprocess.run([binary, "-help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("cannot run %s -help: %s", binary, err)
        return None
    return flavour_from_help(text)


def async_teardown_args(flavour: Optional[str], enabled: bool) -> List[str]:
    """The QEMU arguments that switch asynchronous teardown on (or leave it at QEMU's default, off)."""
    if not enabled:
        return []
    if flavour == RUN_WITH:
        return ["-run-with", "async-teardown=on"]
    if flavour == OPTION:
        return ["-async-teardown"]
    raise ValueError("this QEMU offers no asynchronous teardown (neither -async-teardown nor -run-with)")
