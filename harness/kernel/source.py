"""The default kernel tree: Debian's ``linux-source-6.12``, downloaded and unpacked once into the cache."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
from pathlib import Path

from ..debian import DebianSuite, unpack
from ..errors import InfrastructureError, UsageError
from ..paths import cache_subdir

log = logging.getLogger(__name__)

DEFAULT_SOURCE_PACKAGE = "linux-source-6.12"
DEFAULT_SUITE = "trixie"


def linux_source(package: str = DEFAULT_SOURCE_PACKAGE, suite: str = DEFAULT_SUITE) -> Path:
    """Return the unpacked tree of a Debian ``linux-source-X.Y`` package, fetching it on first use."""
    apt = DebianSuite(suite, "x86_64")
    version = apt.version(package)
    dest = cache_subdir("src") / f"{package}_{version}"
    done = dest / ".kvmh-complete"
    if done.exists():
        return _tree_in(dest)
    if dest.exists():
        shutil.rmtree(dest)
    (deb,) = apt.download([package])
    staging = dest.with_name(dest.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    unpack(deb, staging / "deb")
    tarballs = sorted((staging / "deb/usr/src").glob("linux-source-*.tar.*"))
    if not tarballs:
        raise InfrastructureError(f"{deb.name} holds no linux-source tarball under /usr/src")
    log.info("unpacking %s", tarballs[0].name)
    _extract(tarballs[0], staging / "tree")
    shutil.rmtree(staging / "deb")
    staging.rename(dest)
    (dest / ".kvmh-complete").write_text(version + "\n")
    return _tree_in(dest)


def _extract(tarball: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    if shutil.which("tar"):
        proc = subprocess.run(["tar", "-xf", str(tarball), "-C", str(dest)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise InfrastructureError(f"unpacking {tarball.name} failed: {proc.stderr.strip()}")
        return
    with tarfile.open(tarball) as tar:
        tar.extractall(dest)


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
