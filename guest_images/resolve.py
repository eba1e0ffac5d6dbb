"""Turn a recipe into exact package files: its committed lock, plus any extra packages asked for on top.

The lock (``recipes/<arch>.lock.json``) is the whole answer for the recipe itself, so a build needs no
index and gives the same inputs on every machine. Extra packages (``--package``) are not locked: they are
resolved against the index, newest served version first, and the image says so in its manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from harness.debian import DebianSuite
from harness.debian_lock import KernelPattern, Lock, first_served, load_lock, newest_first, relock
from harness.debian_pool import PinnedPackage, is_served, mirrors_from
from harness.errors import InfrastructureError

from .recipe import RECIPES_DIR, Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolution:
    """The package files an image is made of; ``kernel_package`` is among them or None."""

    pins: tuple[PinnedPackage, ...]
    kernel_package: Optional[str]
    unlocked: tuple[str, ...] = ()

    @property
    def packages(self) -> dict[str, str]:
        return {p.package: p.version for p in self.pins}

    def userland(self) -> list[PinnedPackage]:
        return sorted((p for p in self.pins if p.package != self.kernel_package), key=lambda p: p.package)

    def kernel(self) -> Optional[PinnedPackage]:
        return next((p for p in self.pins if p.package == self.kernel_package), None)


def lock_path(arch: str, recipes_dir: Optional[Path] = None) -> Path:
    return (recipes_dir or RECIPES_DIR) / f"{arch}.lock.json"


def refresh_command(arch: str) -> str:
    return f"kvmh image lock --arch {arch} --update"


def index_view(recipe: Recipe) -> DebianSuite:
    return DebianSuite(recipe.suite, recipe.arch, tuple(recipe.extra_suites))


def resolve(recipe: Recipe, extra: Sequence[str] = (), with_kernel: bool = True, lock: Optional[Lock] = None,
            mirrors: Sequence[str] = (), served: Callable[[str], bool] = is_served) -> Resolution:
    """The recipe's locked pins (without the kernel unless ``with_kernel``), plus ``extra`` packages."""
    lock = lock or load_lock(lock_path(recipe.arch))
    pins = list(lock.userland())
    kernel = lock.kernel() if with_kernel else None
    if with_kernel and kernel is None:
        raise InfrastructureError(f"the {recipe.arch} lock pins no kernel package; refresh it: "
                                  f"{refresh_command(recipe.arch)}")
    if kernel is not None:
        pins.append(kernel)
    unlocked: list[str] = []
    if extra:
        mirrors = mirrors_from(mirrors)
        locked = {p.package for p in pins}
        index = index_view(recipe)
        for name in index.closure(extra, [*recipe.exclude, *locked]):
            pin = first_served(newest_first(index.pins(name)), mirrors, served)
            if pin is None:
                raise InfrastructureError(f"extra package {name} is served by no mirror in any version the "
                                          f"Debian {recipe.suite} index knows; choose another package")
            pins.append(pin)
            unlocked.append(name)
        log.info("extra packages %s are not locked: resolved against today's index", ", ".join(unlocked))
    return Resolution(tuple(sorted(pins, key=lambda p: p.package)), kernel.package if kernel else None,
                      tuple(unlocked))


def relock_recipe(recipe: Recipe, mirrors: Sequence[str], previous: Optional[Lock]) -> tuple[Lock, list[str]]:
    """Re-resolve the recipe against the index: the newest served file of each package."""
    index = index_view(recipe)
    index.update(force=True)
    mirrors = mirrors_from(mirrors)
    spec = recipe.kernel
    return relock(recipe.arch, index.arch, (recipe.suite, *recipe.extra_suites), recipe.packages, recipe.exclude,
                  index, mirrors, previous, KernelPattern(spec.metapackage, spec.pattern, spec.suffix))
