"""Attach the user's terminal to a guest console (``kvmh boot`` without ``--run``); Ctrl-] detaches."""

from __future__ import annotations

import os
import select
import sys
import termios
import tty

from .console import Console

DETACH = b"\x1d"  # Ctrl-]


def attach(console: Console) -> None:
    """Copy keystrokes to the console and its output to stdout until Ctrl-] or the guest's end."""
    out_fd = sys.stdout.fileno()

    def show(data: bytes) -> None:
        os.write(out_fd, data)

    in_fd = sys.stdin.fileno()
    saved = termios.tcgetattr(in_fd) if os.isatty(in_fd) else None
    console.add_raw_listener(show)
    try:
        if saved is not None:
            tty.setraw(in_fd)
        console.send_bytes(b"\r")
        while not console.closed:
            ready, _, _ = select.select([in_fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(in_fd, 1024)
            if not data or DETACH in data:
                break
            console.send_bytes(data)
    finally:
        console.remove_raw_listener(show)
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        os.write(out_fd, b"\r\n")
