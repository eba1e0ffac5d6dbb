"""Where the harness keeps its cache and run artifacts."""

from __future__ import annotations

import os
from pathlib import Path


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
