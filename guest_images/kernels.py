"""Recognise kernel images and read their release string, for s390x and x86_64.

Signatures used:

* x86_64 bzImage: boot flag ``0xAA55`` at 0x1FE, ``"HdrS"`` at 0x202, and (boot protocol >= 2.12)
  ``XLF_KERNEL_64`` in ``xloadflags`` at 0x236. The release is the first word of the string the
  header's ``kernel_version`` field (0x20E) points to, at that value + 0x200.
* s390x image (``arch/s390/boot/bzImage``, Debian's ``vmlinuz``): it starts with the IPL record
  that ``head.S`` lays down: a PSW whose first word is ``0x00080000`` and two CCWs
  ``0x02000018 0x60000050`` and ``0x02000068 0x60000050``. An ELF ``vmlinux`` (``EM_S390``,
  64-bit big-endian, ``ET_EXEC``, with an ``.init.text`` section) is accepted too (QEMU loads it).
  The decompressor keeps an uncompressed copy of ``"<release> (<user>@<host>) #<n> ..."`` (at
  offset ~196 KiB in Debian's 6.12 image), which gives the release.
"""

from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path
from typing import Optional

from .elf import EM_S390, ElfFile, read_elf_header

S390_IPL_PSW0 = bytes.fromhex("00080000")
S390_IPL_CCWS = bytes.fromhex("0200001860000050" "0200006860000050")
X86_BOOT_FLAG = b"\x55\xaa"
X86_HDRS = b"HdrS"
XLF_KERNEL_64 = 1

# "<release> (<user>@<host>) #<build number>", as in UTS_RELEASE + LINUX_COMPILE_BY/HOST + UTS_VERSION.
_BANNER = re.compile(rb"(\d+\.\d+(?:\.\d+)?[^\s\x00()]*) \([^()\x00\s]*@[^()\x00]*\) #\d+")

_HEAD = 64 * 1024


def _head(path: Path, size: int = _HEAD) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


ET_EXEC = 2


def _is_s390_image(path: Path, head: bytes) -> bool:
    if head[0:4] == S390_IPL_PSW0 and head[8:24] == S390_IPL_CCWS:
        return True
    elf = read_elf_header(head)
    if elf != (ET_EXEC, EM_S390) or head[4] != 2 or head[5] != 2:
        return False
    return _is_vmlinux(path)


def _is_vmlinux(path: Path) -> bool:
    """An ELF executable is a kernel when it has the kernel's ``.init.text`` section."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        try:
            elf = ElfFile(mapped)  # type: ignore[arg-type]
        except (ValueError, struct.error):
            return False
        return any(sec.name == ".init.text" for sec in elf.sections)


def _is_x86_64_bzimage(head: bytes) -> bool:
    if len(head) < 0x240 or head[0x1FE:0x200] != X86_BOOT_FLAG or head[0x202:0x206] != X86_HDRS:
        return False
    (protocol,) = struct.unpack_from("<H", head, 0x206)
    if protocol >= 0x20C:
        (xloadflags,) = struct.unpack_from("<H", head, 0x236)
        return bool(xloadflags & XLF_KERNEL_64)
    return True


def looks_like_kernel(path: Path, arch: str) -> bool:
    """Tell whether ``path`` is a bootable kernel image for ``arch`` (``s390x`` or ``x86_64``)."""
    path = Path(path)
    if not path.is_file():
        return False
    head = _head(path)
    if arch == "s390x":
        return _is_s390_image(path, head)
    if arch in ("x86_64", "amd64"):
        return _is_x86_64_bzimage(head)
    return False


def kernel_arch_of(path: Path) -> Optional[str]:
    """Return which of the known architectures ``path`` is a kernel for, or None."""
    for arch in ("s390x", "x86_64"):
        if looks_like_kernel(path, arch):
            return arch
    return None


def kernel_release_of(path: Path, arch: str) -> Optional[str]:
    """Return the kernel release (``uname -r``) built into the image, or None when it cannot be found."""
    path = Path(path)
    data = path.read_bytes()
    if arch in ("x86_64", "amd64") and _is_x86_64_bzimage(data[:_HEAD]):
        (pointer,) = struct.unpack_from("<H", data, 0x20E)
        if pointer:
            start = pointer + 0x200
            end = data.find(b"\0", start, start + 512)
            words = data[start:end].split() if end > start else []
            if words:
                return words[0].decode("ascii", "replace")
    match = _BANNER.search(data)
    return match.group(1).decode("ascii", "replace") if match else None
