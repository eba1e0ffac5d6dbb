"""Fetch Debian packages of any suite and architecture with apt, without touching the host's apt state.

Packages are downloaded into the cache with a private sources list, lists and status directory, and
unpacked with ``dpkg -x``; nothing is ever installed into the host.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .arch import get_arch
from .debian_pool import PinnedPackage
from .errors import InfrastructureError
from .locks import file_lock
from .paths import cache_subdir

log = logging.getLogger(__name__)

MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
APT_TIMEOUT_S = 600
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE_S = 24 * 3600

def debian_arch(arch: str) -> str:
    """Debian's name of an architecture (``x86_64`` -> ``amd64``); Debian's own names pass through."""
    return get_arch(arch).debian_arch


@dataclass
class DebianSuite:
    """A private apt view of one Debian suite (plus ``extra_suites``, such as ``trixie-security``) for one arch.

    Every apt call that writes the view's lists or downloads runs under the view's lock, so concurrent
    runs sharing the cache wait for each other instead of writing the same files.
    """

    suite: str = "trixie"
    arch: str = "s390x"
    extra_suites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.arch = debian_arch(self.arch)
        suites = (self.suite, *self.extra_suites)
        name = "+".join(suites)
        self.root = cache_subdir(f"apt/{name}-{self.arch}")
        self.lock_path = self.root / "view.lock"
        for sub in ("lists/partial", "cache/archives/partial", "etc/preferences.d", "etc/apt.conf.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        sources = "".join(f"deb [signed-by={KEYRING}] {archive_mirror(s)} {s} main\n" for s in suites)
        sources_path = self.root / "etc/sources.list"
        if not sources_path.exists() or sources_path.read_text() != sources:
            with file_lock(self.lock_path, what=f"apt view {name}"):
                tmp = sources_path.with_name(f".sources.list.{os.getpid()}")
                tmp.write_text(sources)
                tmp.replace(sources_path)
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
            "-o", "Debug::NoLocking=1",  # apt would fail, not wait, on its own lock: the view lock serialises
            "-o", "APT::Sandbox::User=root",
        ]

    def _apt(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        if shutil.which(tool) is None:
            raise InfrastructureError(f"{tool} not found: run the harness on Debian or Ubuntu (package apt)")
        cmd = [tool, *self._apt_options(), *args]
        log.debug("running %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise InfrastructureError(f"{tool} {' '.join(args[:3])} for Debian {self.suite}/{self.arch} took over "
                                      f"{APT_TIMEOUT_S} s; check the network path to the mirror") from None
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

        def fresh() -> bool:
            return not force and stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S

        if fresh():
            return
        with file_lock(self.lock_path, what=f"apt lists of {self.root.name}"):
            if fresh():
                return
            log.info("updating Debian %s package lists for %s", "+".join((self.suite, *self.extra_suites)),
                     self.arch)
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
            with file_lock(self.lock_path, what=f"downloads into {pool}"):
                self._apt("apt-get", "download", "-q", *missing, cwd=pool)
        for name in packages:
            found = self._find_deb(pool, name, self.version(name))
            if found is None:
                raise InfrastructureError(f"download of {name} from Debian {self.suite} left no .deb")
            paths.append(found)
        return paths

    def pins(self, package: str) -> list[PinnedPackage]:
        """Every version of ``package`` the view's index knows, as pins (pool path, SHA256, size)."""
        self.update()
        archives = {}
        for line in self._apt("apt-cache", "madison", package).splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 3 and parts[0] == package:
                archives.setdefault(parts[1], "debian-security" if "debian-security" in parts[2] else "debian")
        pins = []
        for version, archive in archives.items():
            record = _first_record(self._apt("apt-cache", "show", f"{package}={version}"))
            try:
                pins.append(PinnedPackage(package, version, archive, record["Filename"], record["SHA256"],
                                          int(record["Size"])))
            except (KeyError, ValueError):
                log.warning("index record of %s %s lacks Filename/SHA256/Size; skipped", package, version)
        return pins

    def package_names(self, prefix: str) -> list[str]:
        """Names of the packages in the index that start with ``prefix``."""
        self.update()
        return sorted(set(self._apt("apt-cache", "pkgnames", prefix).split()))

    @staticmethod
    def _find_deb(pool: Path, name: str, version: str) -> Path | None:
        quoted = version.replace(":", "%3a")
        for candidate in pool.glob(f"{name}_*.deb"):
            if candidate.name.split("_")[1] in (version, quoted):
                return candidate
        return None


def archive_mirror(suite: str) -> str:
    """The mirror URL of the archive a suite lives in (``*-security`` suites are in debian-security)."""
    return SECURITY_MIRROR if suite.endswith("-security") else MIRROR


def _first_record(text: str) -> dict[str, str]:
    """The fields of the first stanza of ``apt-cache show`` output."""
    record: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if record:
                break
            continue
        if not line[0].isspace() and ":" in line:
            key, value = line.split(":", 1)
            record.setdefault(key, value.strip())
    return record


def unpack(deb: Path, dest: Path) -> None:
    """Unpack a .deb's data into ``dest`` with ``dpkg -x`` (never installs it)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["dpkg", "-x", str(deb), str(dest)], capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    if proc.returncode != 0:
        raise InfrastructureError(f"dpkg -x {deb.name} failed: {proc.stderr.strip()}")
