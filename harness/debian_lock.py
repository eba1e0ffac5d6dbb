"""Lock files: the exact Debian package files (version, pool path, SHA256, size) a build is made of.

A lock is JSON committed next to what it pins. Builds read only the lock and fetch those files from
mirrors (:mod:`harness.debian_pool`), so the same lock gives the same inputs on every machine.
:func:`relock` re-resolves names against Debian's signed index and keeps, for each package, the newest
version that a mirror actually serves (an index can be ahead of the pool it describes).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from .debian_pool import PinnedPackage, file_url, is_served
from .errors import InfrastructureError, UsageError

log = logging.getLogger(__name__)

LOCK_FORMAT = 1


@dataclass(frozen=True)
class Lock:
    """A lock file's content. ``packages`` is sorted by name; ``kernel_package`` names one of them (or None)."""

    name: str
    arch: str
    suites: tuple[str, ...]
    packages: tuple[PinnedPackage, ...]
    kernel_package: Optional[str] = None
    roots: tuple[str, ...] = field(default=())

    def by_name(self) -> dict[str, PinnedPackage]:
        return {p.package: p for p in self.packages}

    def versions(self) -> dict[str, str]:
        return {p.package: p.version for p in self.packages}

    def userland(self) -> list[PinnedPackage]:
        return [p for p in self.packages if p.package != self.kernel_package]

    def kernel(self) -> Optional[PinnedPackage]:
        return self.by_name().get(self.kernel_package) if self.kernel_package else None


def load_lock(path: Path) -> Lock:
    """Read a lock file; a missing or malformed one is a one-line error naming the file and the fix."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("format") != LOCK_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {LOCK_FORMAT}")
        packages = tuple(sorted((PinnedPackage(**p) for p in data["packages"]), key=lambda p: p.package))
        return Lock(name=data["name"], arch=data["arch"], suites=tuple(data["suites"]), packages=packages,
                    kernel_package=data.get("kernel_package"), roots=tuple(data.get("roots", ())))
    except FileNotFoundError:
        raise UsageError(f"lock file {path} is missing; restore it from git or make it with "
                         f"`kvmh image lock --update`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"lock file {path} is malformed ({exc}); restore it from git or remake it with "
                         f"`kvmh image lock --update`") from None


def dump_lock(lock: Lock) -> str:
    data = {
        "format": LOCK_FORMAT,
        "name": lock.name,
        "arch": lock.arch,
        "suites": list(lock.suites),
        "roots": list(lock.roots),
        "kernel_package": lock.kernel_package,
        "packages": [p.as_dict() for p in sorted(lock.packages, key=lambda p: p.package)],
    }
    return json.dumps(data, indent=1) + "\n"


def write_lock(path: Path, lock: Lock) -> None:
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(dump_lock(lock))
    tmp.replace(path)


def diff_locks(old: Optional[Lock], new: Lock) -> list[str]:
    """Readable lines: packages added, removed, or moved to another version (or another file)."""
    before = old.by_name() if old else {}
    after = new.by_name()
    lines = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a is None:
            lines.append(f"+ {name} {b.version}")
        elif b is None:
            lines.append(f"- {name} {a.version}")
        elif a.version != b.version:
            lines.append(f"~ {name} {a.version} -> {b.version}")
        elif a.sha256 != b.sha256 or a.filename != b.filename:
            lines.append(f"~ {name} {a.version}: file changed ({a.sha256[:12]} -> {b.sha256[:12]})")
    return lines


# --- re-resolution against the index --------------------------------------------------------------------

class IndexView:
    """What :func:`relock` asks of Debian's index (a :class:`harness.debian.DebianSuite` answers it)."""

    def closure(self, roots: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def depends(self, package: str) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def pins(self, package: str) -> list[PinnedPackage]:  # pragma: no cover
        """Every version of ``package`` the index knows, as pins, newest first."""
        raise NotImplementedError

    def package_names(self, prefix: str) -> list[str]:  # pragma: no cover
        raise NotImplementedError


def newest_first(pins: Sequence[PinnedPackage]) -> list[PinnedPackage]:
    """Sort pins by Debian version, newest first (``dpkg --compare-versions``)."""
    def compare(a: PinnedPackage, b: PinnedPackage) -> int:
        if a.version == b.version:
            return 0
        proc = subprocess.run(["dpkg", "--compare-versions", a.version, "gt", b.version], timeout=30)
        return -1 if proc.returncode == 0 else 1
    return sorted(pins, key=functools.cmp_to_key(compare))


def first_served(candidates: Sequence[PinnedPackage], mirrors: Sequence[str],
                 served: Callable[[str], bool] = is_served) -> Optional[PinnedPackage]:
    """The first candidate whose file some mirror serves."""
    for pin in candidates:
        if any(served(file_url(m, pin)) for m in mirrors):
            return pin
        log.info("%s %s is in the index but served by no mirror; trying an older one", pin.package, pin.version)
    return None


@dataclass(frozen=True)
class KernelPattern:
    """Which package is the kernel: the versioned package ``metapackage`` depends on, matching ``pattern``."""

    metapackage: str
    pattern: str
    suffix: str = ""


def relock(name: str, arch: str, suites: Sequence[str], roots: Sequence[str], exclude: Sequence[str],
           index: IndexView, mirrors: Sequence[str], previous: Optional[Lock] = None,
           kernel: Optional[KernelPattern] = None,
           served: Callable[[str], bool] = is_served) -> tuple[Lock, list[str]]:
    """Resolve ``roots`` (and the kernel) to the newest served files; returns the lock and unresolved names.

    For each package the candidates are every version the index knows (all listed suites), newest first,
    then the version the previous lock pinned; the first one a mirror serves wins. A package with no
    served candidate keeps its previous pin when there is one and is named in the second return value.
    """
    old = previous.by_name() if previous else {}
    chosen: list[PinnedPackage] = []
    unresolved: list[str] = []
    for package in index.closure(roots, exclude):
        candidates = newest_first(index.pins(package))
        if package in old and all(c.version != old[package].version for c in candidates):
            candidates.append(old[package])
        pin = first_served(candidates, mirrors, served)
        if pin is None:
            unresolved.append(package)
            if package in old:
                chosen.append(old[package])
            continue
        chosen.append(pin)
    kernel_name = None
    if kernel is not None:
        kernel_pin = _kernel_pin(index, kernel, mirrors, served, old)
        if kernel_pin is None:
            unresolved.append(f"{kernel.pattern}{kernel.suffix}")
        else:
            kernel_name = kernel_pin.package
            chosen.append(kernel_pin)
    lock = Lock(name=name, arch=arch, suites=tuple(suites), roots=tuple(roots), kernel_package=kernel_name,
                packages=tuple(sorted(chosen, key=lambda p: p.package)))
    return lock, unresolved


def _kernel_pin(index: IndexView, kernel: KernelPattern, mirrors: Sequence[str], served: Callable[[str], bool],
                old: dict[str, PinnedPackage]) -> Optional[PinnedPackage]:
    """The newest served kernel package: the metapackage's choice first, then any other matching the pattern."""
    preferred = [d + kernel.suffix for d in index.depends(kernel.metapackage) if fnmatch.fnmatchcase(d, kernel.pattern)]
    prefix = kernel.pattern.split("*", 1)[0]
    others = [n for n in index.package_names(prefix)
              if fnmatch.fnmatchcase(n[: len(n) - len(kernel.suffix)] if kernel.suffix else n, kernel.pattern)
              and n.endswith(kernel.suffix) and n not in preferred]
    pins: list[PinnedPackage] = []
    for package in preferred:
        pins.extend(newest_first(index.pins(package)))
    pins.extend(newest_first([p for n in others for p in index.pins(n)]))
    pins.extend(p for p in old.values() if fnmatch.fnmatchcase(p.package, kernel.pattern + kernel.suffix))
    return first_served(pins, mirrors, served)


def check_served(lock: Lock, mirrors: Sequence[str],
                 served: Callable[[str], bool] = is_served) -> list[PinnedPackage]:
    """The pins of ``lock`` that no mirror serves."""
    return [p for p in lock.packages if not any(served(file_url(m, p)) for m in mirrors)]


def require_packages(lock: Lock, names: Iterable[str]) -> None:
    missing = [n for n in names if n not in lock.by_name()]
    if missing:
        raise InfrastructureError(f"lock {lock.name} has no pin for {', '.join(missing)}; "
                                  f"refresh it: kvmh image lock --update")
