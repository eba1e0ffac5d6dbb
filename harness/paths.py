"""Where the harness keeps its cache and run artifacts."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cache_dir() -> Path:
    """Return the cache root (``$KVMH_CACHE`` or ``$XDG_CACHE_HOME/kvm-harness``), creating it."""
    explicit = os.environ.get("KVMH_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "kvm-harness"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_subdir(name: str) -> Path:
    """Return (creating) a named subdirectory of the cache."""
    path = cache_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def staged_replacement(staging: Path, dest: Path) -> Iterator[Path]:
    """Yield ``staging`` to fill; when the block completes, it replaces ``dest`` by a rename.

    Whatever happens, no staging directory is left behind, and a block that fails leaves ``dest`` as it was.
    ``staging`` must be on ``dest``'s file system (beside it), so the rename is atomic.
    """
    try:
        yield staging
        if dest.is_symlink() or dest.is_file():  # a broken leftover, not a directory
            dest.unlink()
        elif dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
