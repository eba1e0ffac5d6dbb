"""Fetch exact Debian package files (pinned by version and SHA256) from a list of mirrors.

A mirror is a URL template. ``{archive}`` stands for the archive a file lives in (``debian`` or
``debian-security``); a URL without it is the ``debian`` archive's root, and the security archive is
taken to sit beside it with ``-security`` appended (as on Debian's own mirrors). Debian's snapshot
archive works as ``https://snapshot.debian.org/archive/{archive}/20251201T000000Z``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from .errors import InfrastructureError
from .locks import file_lock

log = logging.getLogger(__name__)

DEFAULT_MIRRORS = ("http://deb.debian.org/{archive}",)
MIRRORS_ENV = "KVMH_DEBIAN_MIRRORS"
ARCHIVES = ("debian", "debian-security")
TIMEOUT_S = 30.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class PinnedPackage:
    """One package file of a lock: what to fetch (``archive``/``filename``) and what it must hash to."""

    package: str
    version: str
    archive: str
    filename: str
    sha256: str
    size: int

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]

    def as_dict(self) -> dict:
        return asdict(self)


class NotServed(InfrastructureError):
    """No mirror serves a pinned file: one line naming package, version, mirrors and the refresh command."""


def mirrors_from(explicit: Sequence[str] = ()) -> list[str]:
    """The mirrors to try, in order: ``explicit`` ones, else ``$KVMH_DEBIAN_MIRRORS``, else Debian's."""
    if explicit:
        return list(explicit)
    env = os.environ.get(MIRRORS_ENV, "")
    listed = [m for m in re.split(r"[\s,]+", env) if m]
    return listed or list(DEFAULT_MIRRORS)


def archive_root(mirror: str, archive: str) -> str:
    """The URL of ``archive``'s root on ``mirror``."""
    if archive not in ARCHIVES:
        raise InfrastructureError(f"unknown Debian archive {archive!r} in a lock; use one of {', '.join(ARCHIVES)}")
    if "{archive}" in mirror:
        return mirror.replace("{archive}", archive).rstrip("/")
    root = mirror.rstrip("/")
    return root if archive == "debian" else root + "-security"


def file_url(mirror: str, pinned: PinnedPackage) -> str:
    return f"{archive_root(mirror, pinned.archive)}/{pinned.filename}"


def is_served(url: str, timeout: float = TIMEOUT_S) -> bool:
    """Whether ``url`` answers a HEAD request with success (404 and network errors: no)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as reply:
            return 200 <= reply.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.debug("HEAD %s: %s", url, exc)
        return False


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, timeout: float, progress: Optional[Callable[[int], None]]) -> None:
    """Stream ``url`` into ``dest`` (created 0644 in its final directory); raises urllib/OS errors."""
    with urllib.request.urlopen(url, timeout=timeout) as reply, open(dest, "wb") as out:
        while True:
            block = reply.read(CHUNK)
            if not block:
                break
            out.write(block)
            if progress:
                progress(len(block))


def fetch(pinned: PinnedPackage, pool: Path, mirrors: Sequence[str], *, refresh_hint: str,
          timeout: float = TIMEOUT_S, progress: Optional[Callable[[int], None]] = None) -> Path:
    """Return the verified file for ``pinned`` in ``pool``, downloading it from the first mirror that has it.

    A mirror that answers 404 (or cannot be reached) is passed over for the next. A file whose SHA256
    differs from the pin is refused: it is deleted and the next mirror is tried. When no mirror gives
    the pinned file, raises :class:`NotServed` with ``refresh_hint`` (the command that refreshes the lock).
    """
    pool.mkdir(parents=True, exist_ok=True)
    dest = pool / f"{pinned.sha256[:16]}-{pinned.basename}"
    if dest.exists() and dest.stat().st_size == pinned.size:
        if progress:
            progress(pinned.size)
        return dest
    tried: list[str] = []
    mismatched: list[str] = []
    with file_lock(pool / f".{dest.name}.lock", what=f"download of {pinned.basename}"):
        if dest.exists() and dest.stat().st_size == pinned.size:
            return dest
        for mirror in mirrors:
            url = file_url(mirror, pinned)
            partial = pool / f".{dest.name}.{os.getpid()}.partial"
            try:
                log.debug("fetching %s", url)
                _download(url, partial, timeout, progress)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "code", None) or getattr(exc, "reason", None) or exc
                log.info("%s not served by %s (%s); trying the next mirror", pinned.basename, mirror, reason)
                tried.append(mirror)
                partial.unlink(missing_ok=True)
                continue
            actual = sha256_of(partial)
            if actual != pinned.sha256:
                partial.unlink(missing_ok=True)
                log.warning("%s from %s has SHA256 %s, but the lock pins %s: refused", pinned.basename, mirror,
                            actual, pinned.sha256)
                mismatched.append(mirror)
                continue
            partial.replace(dest)
            return dest
    if mismatched:
        raise NotServed(f"{pinned.package} {pinned.version}: SHA256 mismatch from {', '.join(mismatched)} "
                        f"(lock pins {pinned.sha256[:16]}…)"
                        + (f", not served by {', '.join(tried)}" if tried else "")
                        + f"; the file changed or the lock is wrong: check it, then {refresh_hint}")
    raise NotServed(f"{pinned.package} {pinned.version} ({pinned.basename}) is served by no mirror "
                    f"(tried {', '.join(tried) or 'none'}); refresh the lock: {refresh_hint}")


def fetch_all(pins: Iterable[PinnedPackage], pool: Path, mirrors: Sequence[str], *, refresh_hint: str,
              progress: Optional[Callable[[int], None]] = None) -> dict[str, Path]:
    """Fetch every pin; returns package name -> verified file."""
    return {p.package: fetch(p, pool, mirrors, refresh_hint=refresh_hint, progress=progress) for p in pins}
