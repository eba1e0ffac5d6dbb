"""Write "newc" (SVR4, no CRC) cpio archives, the format the Linux kernel unpacks as an initramfs."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator, Optional

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


class NewcWriter:
    """Append entries to a newc archive; ``close()`` writes the trailer.

    Entries are written with uid/gid 0 and a fixed mtime so archives are reproducible. Hard links
    are not tracked: each file is stored with its own data and ``nlink`` 1.
    """

    def __init__(self, out: BinaryIO, mtime: int = 0) -> None:
        self._out = out
        self._mtime = mtime
        self._ino = 0
        self._names: set[str] = set()
        self._closed = False

    def _header(self, name: str, mode: int, size: int, nlink: int = 1,
                rdev: tuple[int, int] = (0, 0), ino: Optional[int] = None) -> None:
        if name in self._names and name != TRAILER:
            raise ValueError(f"duplicate cpio entry {name!r}")
        self._names.add(name)
        if ino is None:
            self._ino += 1
            ino = self._ino
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, self._mtime, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = MAGIC + b"".join(b"%08X" % value for value in fields)
        self._out.write(header + encoded + _pad4(len(header) + len(encoded)))

    @staticmethod
    def _clean(name: str) -> str:
        clean = str(PurePosixPath("/", name))[1:]
        if not clean:
            raise ValueError("empty cpio entry name")
        return clean

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._header(self._clean(name), stat.S_IFDIR | (perm & 0o7777), 0, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._header(self._clean(name), stat.S_IFREG | (perm & 0o7777), len(data))
        self._out.write(data + _pad4(len(data)))

    def add_symlink(self, name: str, target: str) -> None:
        encoded = target.encode()
        self._header(self._clean(name), stat.S_IFLNK | 0o777, len(encoded))
        self._out.write(encoded + _pad4(len(encoded)))

    def add_device(self, name: str, kind: str, major: int, minor: int, perm: int = 0o600) -> None:
        """Add a character (``kind="c"``) or block (``kind="b"``) device node."""
        type_bits = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}[kind]
        self._header(self._clean(name), type_bits | (perm & 0o7777), 0, rdev=(major, minor))

    def add_path(self, name: str, path: Path) -> None:
        """Add one filesystem object (file, directory or symlink) under ``name``, keeping its mode."""
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            self.add_symlink(name, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            self.add_dir(name, stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            self.add_file(name, path.read_bytes(), stat.S_IMODE(st.st_mode))
        else:
            raise ValueError(f"cannot store {path} in a cpio archive: not a file, directory or symlink")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._header(TRAILER, 0, 0, nlink=1, ino=0)


def walk_tree(root: Path) -> Iterator[tuple[str, Path]]:
    """Yield ``(archive name, path)`` for everything under ``root``, parents before children, sorted."""
    def visit(directory: Path, prefix: str) -> Iterator[tuple[str, Path]]:
        for child in sorted(directory.iterdir(), key=lambda p: p.name):
            name = f"{prefix}{child.name}"
            yield name, child
            if child.is_dir() and not child.is_symlink():
                yield from visit(child, name + "/")
    yield from visit(root, "")


def write_initramfs(root: Path, out: Path, devices: tuple[tuple[str, str, int, int, int], ...] = (),
                    level: int = 9) -> int:
    """Pack the tree at ``root`` into a gzip-compressed newc archive at ``out`` (mode 0600); return its size.

    ``devices`` holds extra ``(name, kind, major, minor, perm)`` device nodes (their parent
    directories must exist in the tree).
    """
    tmp = out.with_name(out.name + ".part")
    tmp.unlink(missing_ok=True)
    # 0600 from the first byte: an image's initramfs holds its SSH host key.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                   compresslevel=level, mtime=0) as gz:
        writer = NewcWriter(gz)  # type: ignore[arg-type]
        for name, path in walk_tree(root):
            writer.add_path(name, path)
        for name, kind, major, minor, perm in devices:
            writer.add_device(name, kind, major, minor, perm)
        writer.close()
    tmp.replace(out)
    return out.stat().st_size
