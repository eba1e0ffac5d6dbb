"""Turn SIGTERM into KeyboardInterrupt so every ``finally`` (and pytest's teardown) runs and QEMU is stopped."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional


def _raise_interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def install_sigterm_handler() -> None:
    """Install the SIGTERM handler in the main thread, unless someone installed their own."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_interrupt)
