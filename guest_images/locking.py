"""``kvmh image lock``: check that every file a recipe's lock pins is still served, or refresh the lock."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

from harness.debian_lock import check_served, diff_locks, dump_lock, load_lock, write_lock
from harness.debian_pool import file_url, mirrors_from
from harness.errors import EXIT_INFRA, UsageError

from .recipe import load_recipe
from .resolve import lock_path, refresh_command, relock_recipe

log = logging.getLogger(__name__)


def image_lock(arch: str, *, update: bool = False, mirrors: Sequence[str] = (), path: Optional[Path] = None,
               out: Callable[[str], None] = print) -> int:
    """Without ``update``: report pins no mirror serves (exit 2 if any). With it: re-resolve and rewrite."""
    recipe = load_recipe(arch)
    path = path or lock_path(recipe.arch)
    mirrors = mirrors_from(mirrors)
    if not update:
        lock = load_lock(path)
        gone = check_served(lock, mirrors)
        for pin in gone:
            out(f"not served: {pin.package} {pin.version} ({file_url(mirrors[0], pin)}); "
                f"tried {', '.join(mirrors)}")
        if gone:
            out(f"{len(gone)} of {len(lock.packages)} pinned files are served by no mirror; refresh the lock: "
                f"{refresh_command(recipe.arch)}")
            return EXIT_INFRA
        out(f"{path}: all {len(lock.packages)} pinned files are served ({', '.join(mirrors)})")
        return 0
    try:
        previous = load_lock(path)
    except UsageError:
        previous = None
    lock, unresolved = relock_recipe(recipe, mirrors, previous)
    changes = diff_locks(previous, lock)
    if dump_lock(lock) != (dump_lock(previous) if previous else None):
        write_lock(path, lock)
    for line in changes:
        out(line)
    out(f"{path}: {len(lock.packages)} packages, {len(changes)} changed")
    for name in unresolved:
        out(f"unresolved: {name} is served in no version the index knows"
            + ("; kept its previous pin" if previous and name in previous.by_name() else ""))
    return EXIT_INFRA if unresolved else 0
