"""One file-lock helper for every shared cache mutation (``flock`` on a lock file that is never unlinked).

Lock files stay in place: unlinking one after release lets a second process lock the old inode while a
third locks a new file of the same name, so two would hold "the" lock at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, what: str = "") -> Iterator[None]:
    """Hold an exclusive (or ``shared``) lock on ``path`` for the ``with`` block, waiting for it.

    ``what`` names the resource in the debug line logged when another process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s (locked by another run: %s)", what or path.name, path)
            fcntl.flock(fd, mode)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def try_file_lock(path: Path) -> "contextlib.AbstractContextManager[bool]":
    """A context that takes an exclusive lock on ``path`` without waiting and yields whether it got it."""

    @contextlib.contextmanager
    def attempt() -> Iterator[bool]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    return attempt()
