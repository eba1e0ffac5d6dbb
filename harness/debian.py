"""Fetch Debian packages of any suite and architecture with apt, without touching the host's apt state.

Packages are downloaded into the cache with a private sources list, lists and status directory, and
unpacked with ``dpkg -x``; nothing is ever installed into the host.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import InfrastructureError
from .paths import cache_subdir

log = logging.getLogger(__name__)

MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE_S = 24 * 3600

# Debian architecture names for the harness's arch names.
DEBIAN_ARCH = {"s390x": "s390x", "x86_64": "amd64", "amd64": "amd64"}


def debian_arch(arch: str) -> str:
    try:
        return DEBIAN_ARCH[arch]
    except KeyError:
        raise InfrastructureError(f"no Debian architecture known for {arch!r}; use s390x or x86_64") from None


@dataclass
class DebianSuite:
    """A private apt view of one Debian suite for one architecture."""

    suite: str = "trixie"
    arch: str = "s390x"

    def __post_init__(self) -> None:
        self.arch = debian_arch(self.arch)
        self.root = cache_subdir(f"apt/{self.suite}-{self.arch}")
        for sub in ("lists/partial", "cache/archives/partial", "etc/preferences.d", "etc/apt.conf.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc/sources.list").write_text(
            f"deb [signed-by={KEYRING}] {MIRROR} {self.suite} main\n"
        )
        status = self.root / "status"
        if not status.exists():
            status.write_text("")
        self._versions: dict[str, str] = {}

    def _apt_options(self) -> list[str]:
        r = self.root
        return [
            "-o", f"APT::Architecture={self.arch}",
            "-o", f"APT::Architectures={self.arch}",
            "-o", f"Dir::Etc::SourceList={r}/etc/sources.list",
            "-o", "Dir::Etc::SourceParts=-",
            "-o", f"Dir::Etc::Preferences={r}/etc/preferences",
            "-o", f"Dir::Etc::PreferencesParts={r}/etc/preferences.d",
            "-o", f"Dir::Etc::Parts={r}/etc/apt.conf.d",
            "-o", f"Dir::State::Lists={r}/lists",
            "-o", f"Dir::State::Status={r}/status",
            "-o", f"Dir::Cache={r}/cache",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root",
        ]

    def _apt(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        if shutil.which(tool) is None:
            raise InfrastructureError(f"{tool} not found: run the harness on Debian or Ubuntu (package apt)")
        cmd = [tool, *self._apt_options(), *args]
        log.debug("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise InfrastructureError(
                f"{tool} {' '.join(args[:3])} failed for Debian {self.suite}/{self.arch}: {last}",
                details=proc.stderr,
            )
        return proc.stdout

    def update(self, force: bool = False) -> None:
        """Refresh the package lists at most once a day (or when forced)."""
        stamp = self.root / "updated"
        if not force and stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S:
            return
        log.info("updating Debian %s package lists for %s", self.suite, self.arch)
        self._apt("apt-get", "update", "-q")
        self._versions.clear()
        stamp.touch()

    def version(self, package: str) -> str:
        """Return the candidate version of a package (looked up once per instance)."""
        if package in self._versions:
            return self._versions[package]
        self.update()
        out = self._apt("apt-cache", "policy", package)
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("Candidate:"):
                version = line.split(":", 1)[1].strip()
                if version and version != "(none)":
                    self._versions[package] = version
                    return version
        raise InfrastructureError(f"package {package} not found in Debian {self.suite} for {self.arch}")

    def depends(self, package: str) -> list[str]:
        """Return the direct Depends/PreDepends of a package (first alternative of each)."""
        self.update()
        out = self._apt("apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
                        "--no-breaks", "--no-replaces", "--no-enhances", package)
        deps = []
        alternative = False
        for line in out.splitlines():
            stripped = line.strip()
            if stripped.startswith(("Depends:", "PreDepends:", "|Depends:", "|PreDepends:")):
                name = stripped.split(":", 1)[1].strip().strip("<>")
                if not alternative:
                    deps.append(name.split(":")[0])
                alternative = stripped.startswith("|")
        return deps

    def closure(self, roots: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
        """Return the package dependency closure of ``roots``, leaving out ``exclude`` and their deps."""
        excluded = set(exclude)
        seen: list[str] = []
        todo = [r for r in roots]
        while todo:
            name = todo.pop()
            if name in seen or name in excluded:
                continue
            seen.append(name)
            todo.extend(self.depends(name))
        return sorted(seen)

    def download(self, packages: Sequence[str]) -> list[Path]:
        """Download .deb files (cached) and return their paths, in the order asked."""
        self.update()
        pool = self.root / "debs"
        pool.mkdir(exist_ok=True)
        paths = []
        missing = []
        for name in packages:
            version = self.version(name)
            found = self._find_deb(pool, name, version)
            if found is None:
                missing.append(f"{name}={version}")
        if missing:
            log.info("downloading %d Debian %s packages for %s", len(missing), self.suite, self.arch)
            self._apt("apt-get", "download", "-q", *missing, cwd=pool)
        for name in packages:
            found = self._find_deb(pool, name, self.version(name))
            if found is None:
                raise InfrastructureError(f"download of {name} from Debian {self.suite} left no .deb")
            paths.append(found)
        return paths

    @staticmethod
    def _find_deb(pool: Path, name: str, version: str) -> Path | None:
        quoted = version.replace(":", "%3a")
        for candidate in pool.glob(f"{name}_*.deb"):
            if candidate.name.split("_")[1] in (version, quoted):
                return candidate
        return None


def unpack(deb: Path, dest: Path) -> None:
    """Unpack a .deb's data into ``dest`` with ``dpkg -x`` (never installs it)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["dpkg", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InfrastructureError(f"dpkg -x {deb.name} failed: {proc.stderr.strip()}")
