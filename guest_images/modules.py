"""Pick kernel modules (and what they depend on) out of a ``lib/modules/<release>`` tree."""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from harness.errors import InfrastructureError, UsageError

from .elf import ElfFile

log = logging.getLogger(__name__)

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
METADATA_FILES = ("modules.order", "modules.builtin", "modules.builtin.modinfo")


def module_name(path: Path) -> str:
    """``.../virtio-net.ko.xz`` -> ``virtio_net`` (the name modprobe knows)."""
    name = path.name
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def find_release_dir(path: Path) -> Path:
    """Accept an INSTALL_MOD_PATH root, its ``lib/modules`` or ``lib/modules/<release>`` itself."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"modules directory {path} does not exist; pass the INSTALL_MOD_PATH of "
                         "'make modules_install' or its lib/modules/<release>")
    if (path / "modules.order").exists() or (path / "kernel").is_dir():
        return path
    for base in (path / "lib/modules", path / "usr/lib/modules", path):
        if base.is_dir():
            releases = [d for d in base.iterdir() if d.is_dir() and ((d / "modules.order").exists()
                                                                      or (d / "kernel").is_dir())]
            if len(releases) == 1:
                return releases[0]
            if len(releases) > 1:
                names = ", ".join(sorted(d.name for d in releases))
                raise UsageError(f"{base} holds several kernel releases ({names}); pass one of them")
    raise UsageError(f"{path} holds no lib/modules/<release> tree; run 'make modules_install "
                     f"INSTALL_MOD_PATH={path}' or pass the right directory")


def read_module(path: Path) -> bytes:
    """Return a module's ELF bytes, decompressing ``.xz``, ``.gz`` or ``.zst``."""
    raw = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise InfrastructureError(f"{path.name} is zstd-compressed and zstd is not installed; "
                                      "apt-get install zstd")
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return raw


@dataclass
class ModuleTree:
    """The modules of one kernel release, indexed by name."""

    release_dir: Path

    def __post_init__(self) -> None:
        self.by_name: dict[str, Path] = {}
        for path in sorted(self.release_dir.rglob("*.ko*")):
            if path.name.endswith(MODULE_SUFFIXES) and path.is_file():
                self.by_name.setdefault(module_name(path), path)
        self.builtin = self._builtin_names()

    @property
    def release(self) -> str:
        return self.release_dir.name

    def _builtin_names(self) -> set[str]:
        listing = self.release_dir / "modules.builtin"
        if not listing.exists():
            return set()
        return {module_name(Path(line.strip())) for line in listing.read_text().splitlines() if line.strip()}

    def dependencies(self, name: str) -> list[str]:
        path = self.by_name[name]
        try:
            info = ElfFile(read_module(path)).modinfo()
        except (ValueError, lzma.LZMAError, OSError) as exc:
            raise InfrastructureError(f"cannot read kernel module {path}: {exc}") from None
        deps = []
        for entry in info.get("depends", []):
            deps.extend(d.replace("-", "_") for d in entry.split(",") if d)
        return deps

    def closure(self, wanted: Iterable[str]) -> tuple[list[str], list[str]]:
        """Return (modules to ship incl. dependencies, wanted names that are neither modules nor built in)."""
        selected: list[str] = []
        missing: list[str] = []
        todo = [w.replace("-", "_") for w in wanted]
        while todo:
            name = todo.pop(0)
            if name in selected or name in missing:
                continue
            if name not in self.by_name:
                if name not in self.builtin:
                    missing.append(name)
                continue
            selected.append(name)
            todo.extend(self.dependencies(name))
        return sorted(selected), missing

    def content_hash(self, names: Iterable[str]) -> str:
        """Hash the given modules' paths and bytes plus the release's builtin list."""
        digest = hashlib.sha256(self.release.encode())
        for name in sorted(names):
            path = self.by_name[name]
            digest.update(str(path.relative_to(self.release_dir)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        for meta in METADATA_FILES:
            if (self.release_dir / meta).exists():
                digest.update(hashlib.sha256((self.release_dir / meta).read_bytes()).digest())
        return digest.hexdigest()

    def install(self, names: Iterable[str], root: Path) -> Path:
        """Copy the modules and the release's metadata into ``root/usr/lib/modules/<release>``; run depmod."""
        dest = root / "usr/lib/modules" / self.release
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            src = self.by_name[name]
            target = dest / src.relative_to(self.release_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        for meta in METADATA_FILES:
            if (self.release_dir / meta).exists():
                shutil.copy2(self.release_dir / meta, dest / meta)
        run_depmod(root, self.release)
        return dest


def run_depmod(root: Path, release: str) -> bool:
    """Build modules.dep(.bin) with the host's depmod; without it the guest's init runs depmod at boot."""
    depmod = shutil.which("depmod") or next((p for p in ("/usr/sbin/depmod", "/sbin/depmod")
                                             if Path(p).exists()), None)
    if depmod is None:
        log.info("no depmod on this host: the guest will run depmod at boot")
        return False
    proc = subprocess.run([depmod, "-b", str(root), release], capture_output=True, text=True)
    if proc.returncode != 0:
        log.warning("depmod failed (%s): the guest will run depmod at boot", proc.stderr.strip())
        return False
    return True
