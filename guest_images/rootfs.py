"""Lay out the guest's root filesystem tree: unpacked packages, merged /usr, pruning, config files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Iterable

from harness.debian import unpack
from harness.errors import InfrastructureError

from .cpio import walk_tree
from .elf import ElfFile
from .keys import ImageKeys

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
INIT_SCRIPT = HERE / "init"
PROFILE = HERE / "profile.sh"

INITTAB = """\
# busybox init: a root shell on the console, respawned; clean shutdown on poweroff/reboot.
::respawn:/usr/bin/cttyhack /bin/sh -l
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""

MERGED_DIRS = ("bin", "sbin", "lib", "lib64", "lib32")
EMPTY_DIRS = ("proc", "sys", "dev", "tmp", "run", "var/log", "var/tmp", "mnt", "etc/kvmh")
BINARY_DIRS = ("usr/bin", "usr/sbin", "usr/libexec", "usr/lib/openssh")


def static_files(hostname: str) -> dict[str, str]:
    """The fixed configuration files of every image (path -> content)."""
    return {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/shadow": "root:*:20000:0:99999:7:::\nnobody:*:20000:0:99999:7:::\n",
        "etc/group": "root:x:0:\ntty:x:5:\nkvm:x:104:\nnogroup:x:65534:\n",
        "etc/shells": "/bin/sh\n",
        "etc/hostname": hostname + "\n",
        "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost\n",
        "etc/resolv.conf": "nameserver 10.0.2.3\n",
        "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        "etc/inittab": INITTAB,
        "etc/profile": PROFILE.read_text(),
    }


def unpack_all(debs: Iterable[Path], root: Path) -> None:
    for deb in debs:
        unpack(deb, root)


def merge_usr(root: Path) -> None:
    """Move /bin, /sbin, /lib* into /usr and leave symlinks, as Debian's merged-/usr layout does."""
    for name in MERGED_DIRS:
        top = root / name
        usr = root / "usr" / name
        if top.is_dir() and not top.is_symlink():
            usr.mkdir(parents=True, exist_ok=True)
            for child in top.iterdir():
                target = usr / child.name
                if target.exists() or target.is_symlink():
                    log.debug("merge-usr: /%s/%s shadowed by /usr/%s/%s", name, child.name, name, child.name)
                    _remove(child)
                else:
                    child.rename(target)
            top.rmdir()
        if usr.is_dir() and not top.exists():
            top.symlink_to(f"usr/{name}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def prune(root: Path, patterns: Iterable[str]) -> int:
    """Delete what matches the recipe's glob patterns; return the bytes freed."""
    freed = 0
    for pattern in patterns:
        for path in sorted(root.glob(pattern), key=lambda p: len(p.parts), reverse=True):
            if not (path.exists() or path.is_symlink()):
                continue
            freed += tree_size(path)
            _remove(path)
    return freed


def tree_digest(root: Path) -> str:
    """SHA256 over every entry of a tree (name, kind, permission bits, link target or content), in a fixed order.

    Two trees unpacked from the same package files have the same digest on any machine.
    """
    digest = hashlib.sha256()
    for name, path in walk_tree(root):
        st = path.lstat()
        digest.update(f"{name}\0{stat.S_IFMT(st.st_mode):o}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            digest.update(os.readlink(path).encode())
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def tree_size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _library_dirs(root: Path) -> list[Path]:
    usr_lib = root / "usr/lib"
    dirs = [d for d in usr_lib.glob("*-linux-gnu") if d.is_dir()]
    return [*dirs, usr_lib, root / "usr/lib64"]


def _elf_objects(root: Path) -> Iterable[Path]:
    for base in (root / "usr/bin", root / "usr/sbin", root / "usr/libexec", root / "usr/lib"):
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if path.is_file() and not path.is_symlink() and "modules" not in path.parts:
                with open(path, "rb") as handle:
                    if handle.read(4) == b"\x7fELF":
                        yield path


def check_libraries(root: Path) -> list[str]:
    """Verify every ELF object finds its DT_NEEDED libraries in the tree.

    Libraries and Python extension modules whose libraries were left out are removed, until none
    is left (so ``import`` fails cleanly); a program with a missing library is an error. Returns
    what was removed.
    """
    lib_dirs = _library_dirs(root)
    available = {p.name for d in lib_dirs if d.is_dir() for p in d.iterdir() if p.exists()}
    objects = {}
    for path in sorted(_elf_objects(root)):
        try:
            objects[path] = ElfFile(path.read_bytes()).needed()
        except ValueError:
            continue
    removed: list[str] = []
    changed = True
    while changed:
        changed = False
        for path, needed in list(objects.items()):
            missing = [lib for lib in needed if lib not in available]
            if not missing or not _is_library(root, path):
                continue
            rel = str(path.relative_to(root))
            path.unlink()
            del objects[path]
            available.difference_update(_names_of(path, lib_dirs))
            removed.append(f"{rel} (needs {', '.join(missing)})")
            changed = True
    broken = []
    for path, needed in objects.items():
        missing = [lib for lib in needed if lib not in available]
        if missing:
            broken.append(f"{path.relative_to(root)} needs {', '.join(missing)}")
    if broken:
        raise InfrastructureError(
            f"guest image misses shared libraries: {'; '.join(broken[:5])}; "
            "remove the package from the recipe's exclude list",
            details="\n".join(broken),
        )
    for entry in removed:
        log.info("dropped %s", entry)
    return removed


def _is_library(root: Path, path: Path) -> bool:
    """Programs live in bin/sbin/libexec (and openssh's helpers); everything else under usr/lib is a library."""
    rel = path.relative_to(root)
    return rel.parts[:2] == ("usr", "lib") and "openssh" not in rel.parts


def _names_of(path: Path, lib_dirs: list[Path]) -> set[str]:
    """The names under which a removed library was reachable (itself and symlinks to it in lib dirs)."""
    names = {path.name}
    for directory in lib_dirs:
        if directory.is_dir():
            names.update(p.name for p in directory.iterdir() if p.is_symlink() and not p.exists())
    return names


def configure(root: Path, *, hostname: str, keys: ImageKeys, load_modules: Iterable[str],
              manifest: dict[str, object]) -> None:
    """Write /init, /etc, the SSH keys and the mount points into the tree."""
    for name in EMPTY_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    for rel, text in static_files(hostname).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)
    (root / "etc/shadow").chmod(0o600)
    _write(root / "init", INIT_SCRIPT.read_bytes(), 0o755)
    _write(root / "etc/kvmh/modules", ("\n".join(load_modules) + "\n").encode(), 0o644)
    _write(root / "etc/kvmh/image.json", json.dumps(manifest, indent=1, sort_keys=True).encode(), 0o644)
    dropbear_dir = root / "etc/dropbear"
    dropbear_dir.mkdir(parents=True, exist_ok=True)
    _write(dropbear_dir / "dropbear_ed25519_host_key", keys.host_private_dropbear, 0o600)
    home = root / "root"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    (home / ".ssh").chmod(0o700)
    _write(home / ".ssh/authorized_keys", (keys.client_public_line + "\n").encode(), 0o600)
    _symlink(root / "usr/bin/sh", "busybox")
    python = sorted((root / "usr/bin").glob("python3.[0-9]*"))
    if python:
        _symlink(root / "usr/bin/python3", python[0].name)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _symlink(path: Path, target: str) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)
