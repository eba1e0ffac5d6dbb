"""The default kernel tree: Debian's ``linux-source-6.12``, downloaded and unpacked once into the cache."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..debian import DebianSuite, unpack
from ..debian_lock import Lock, check_served, diff_locks, first_served, load_lock, newest_first, write_lock
from ..debian_pool import PinnedPackage, fetch, mirrors_from
from ..errors import EXIT_INFRA, InfrastructureError, UsageError
from ..locks import file_lock
from ..paths import cache_subdir, staged_replacement
from .. import progress
from ..stages import stage

log = logging.getLogger(__name__)

DEFAULT_SOURCE_PACKAGE = "linux-source-6.12"
DEFAULT_SUITE = "trixie"


LOCK_FILE = Path(__file__).with_name("linux-source.lock.json")
SUITES = (DEFAULT_SUITE, f"{DEFAULT_SUITE}-updates", f"{DEFAULT_SUITE}-security")
REFRESH_HINT = "kvmh source lock --update"


def _index() -> DebianSuite:
    return DebianSuite(DEFAULT_SUITE, "x86_64", SUITES[1:])


def source_pin(package: str = DEFAULT_SOURCE_PACKAGE, mirrors: Sequence[str] = ()) -> PinnedPackage:
    """The pinned file of ``package``: from the committed lock, else the newest served version in the index."""
    locked = load_lock(LOCK_FILE).by_name().get(package)
    if locked is not None:
        return locked
    log.warning("%s is not in %s: taking the newest version a mirror serves (not reproducible)", package,
                LOCK_FILE.name)
    pin = first_served(newest_first(_index().pins(package)), mirrors_from(mirrors))
    if pin is None:
        raise UsageError(f"{package} is served by no mirror in any version Debian {DEFAULT_SUITE} knows; "
                         f"check the name (e.g. {DEFAULT_SOURCE_PACKAGE})")
    return pin


def relock_source(update: bool, mirrors: Sequence[str] = (), out: Callable[[str], None] = print) -> int:
    """``kvmh source lock``: check the pinned source file is served; with ``update``, pin the newest served."""
    mirrors = mirrors_from(mirrors)
    previous = load_lock(LOCK_FILE)
    if not update:
        gone = check_served(previous, mirrors)
        for pin in gone:
            out(f"not served: {pin.package} {pin.version}; tried {', '.join(mirrors)}; refresh: {REFRESH_HINT}")
        if not gone:
            out(f"{LOCK_FILE}: all {len(previous.packages)} pinned files are served")
        return EXIT_INFRA if gone else 0
    index = _index()
    index.update(force=True)
    pins = []
    for old in previous.packages:
        candidates = newest_first(index.pins(old.package))
        if all(c.version != old.version for c in candidates):
            candidates.append(old)
        pins.append(first_served(candidates, mirrors) or old)
    lock = Lock(previous.name, previous.arch, SUITES, tuple(pins), roots=previous.roots)
    for line in diff_locks(previous, lock):
        out(line)
    write_lock(LOCK_FILE, lock)
    out(f"{LOCK_FILE}: {len(pins)} packages")
    return 0


def linux_source(package: str = DEFAULT_SOURCE_PACKAGE, mirrors: Sequence[str] = ()) -> Path:
    """Return the unpacked tree of a Debian ``linux-source-X.Y`` package, fetching it on first use.

    The file is the one the lock pins, checked by SHA256. Concurrent first runs wait for each other
    (one lock per version); the tree is unpacked in a private staging dir beside its destination and
    renamed into place, so no run ever sees or removes another's half-made tree.
    """
    pin = source_pin(package, mirrors)
    src = cache_subdir("src")
    dest = src / f"{package}_{pin.version}"
    if (dest / ".kvmh-complete").exists():
        return _tree_in(dest)
    with file_lock(src / f".{dest.name}.lock", what=f"unpacking {package} {pin.version}"):
        if (dest / ".kvmh-complete").exists():
            return _tree_in(dest)
        name = f"source: {package} {pin.version}"
        with staged_replacement(Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=src)), dest) as staging, \
                stage(name):
            _fetch_and_unpack(pin, staging, mirrors, name)
    return _tree_in(dest)


def _fetch_and_unpack(pin: PinnedPackage, staging: Path, mirrors: Sequence[str], stage_name: str) -> None:
    """Fetch the pinned package and unpack its tarball's tree into ``staging/tree``."""
    progress.update(stage_name, total=pin.size, unit="B", current=f"downloading {pin.basename}")
    deb = fetch(pin, cache_subdir("debs/all"), mirrors_from(mirrors), refresh_hint=REFRESH_HINT,
                progress=lambda n: progress.update(stage_name, advance=n))
    progress.update(stage_name, current="unpacking")
    unpack(deb, staging / "deb")
    tarballs = sorted((staging / "deb/usr/src").glob("linux-source-*.tar.*"))
    if not tarballs:
        raise InfrastructureError(f"{deb.name} holds no linux-source tarball under /usr/src")
    log.info("unpacking %s", tarballs[0].name)
    _extract(tarballs[0], staging / "tree")
    shutil.rmtree(staging / "deb")
    (staging / ".kvmh-complete").write_text(pin.version + "\n")


def cached_tree(package: str = DEFAULT_SOURCE_PACKAGE) -> Optional[Path]:
    """The unpacked tree of the pinned ``package`` if it is already in the cache, else None (fetches nothing)."""
    pin = load_lock(LOCK_FILE).by_name().get(package)
    if pin is None:
        return None
    dest = cache_subdir("src") / f"{package}_{pin.version}"
    return _tree_in(dest) if (dest / ".kvmh-complete").exists() else None


EXTRACT_TIMEOUT_S = 1800.0


def _extract(tarball: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    if shutil.which("tar"):
        try:
            proc = subprocess.run(["tar", "--no-same-owner", "-xf", str(tarball), "-C", str(dest)],
                                  capture_output=True, text=True, timeout=EXTRACT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise InfrastructureError(f"unpacking {tarball.name} took more than {EXTRACT_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            raise InfrastructureError(f"unpacking {tarball.name} failed: {proc.stderr.strip()}")
        return
    safe_extract(tarball, dest)


def safe_extract(tarball: Path, dest: Path) -> None:
    """Unpack with tarfile's ``data`` filter: no absolute paths, no ``..``, no links leading out, no devices."""
    with tarfile.open(tarball) as tar:
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as err:
            raise InfrastructureError(f"refusing to unpack {tarball.name}: {err}") from None


def _tree_in(dest: Path) -> Path:
    trees = [p for p in (dest / "tree").iterdir() if p.is_dir()]
    if len(trees) != 1:
        raise InfrastructureError(f"expected one kernel tree in {dest / 'tree'}, found {len(trees)}")
    return trees[0]


def check_kernel_tree(path: Path) -> Path:
    """Return the tree's resolved path, or raise a UsageError if ``path`` is not a kernel source tree."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UsageError(f"kernel tree {path} does not exist: pass --tree with a kernel source directory")
    markers = ("Makefile", "Kconfig", "arch", "include/uapi/linux/kvm.h")
    if not all((path / m).exists() for m in markers):
        raise UsageError(f"{path} is not a kernel source tree (no Makefile, Kconfig, arch/, include/uapi/linux/kvm.h)")
    return path.resolve()
