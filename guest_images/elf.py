"""A minimal ELF reader: machine type, section contents, DT_NEEDED entries (any endianness, 32/64 bit)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62
EM_S390 = 22
SHT_DYNAMIC = 6
DT_NEEDED = 1
DT_STRTAB = 5


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int


class ElfFile:
    """Parse the header and section table of an in-memory ELF image."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != ELF_MAGIC or len(data) < 64:
            raise ValueError("not an ELF file")
        self.data = data
        self.is64 = data[4] == 2
        self.endian = "<" if data[5] == 1 else ">"
        e = self.endian
        if self.is64:
            (self.type, self.machine, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx) = struct.unpack_from(
                e + "HHIQQQIHHHHHH", data, 16)
        else:
            (self.type, self.machine, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx) = struct.unpack_from(
                e + "HHIIIIIHHHHHH", data, 16)
        self.sections = self._read_sections(shoff, shentsize, shnum, shstrndx)

    def _read_sections(self, shoff: int, shentsize: int, shnum: int, shstrndx: int) -> list[Section]:
        if shoff == 0 or shnum == 0 or shoff + shnum * shentsize > len(self.data):
            return []
        fmt = self.endian + ("IIQQQQIIQQ" if self.is64 else "IIIIIIIIII")
        raw = [struct.unpack_from(fmt, self.data, shoff + i * shentsize) for i in range(shnum)]
        strtab = raw[shstrndx] if shstrndx < shnum else None
        sections = []
        for name_off, sh_type, _flags, addr, offset, size, link, *_rest in raw:
            name = self._cstr(strtab[4] + name_off) if strtab else ""
            sections.append(Section(name, sh_type, addr, offset, size, link))
        return sections

    def _cstr(self, offset: int) -> str:
        end = self.data.find(b"\0", offset)
        return self.data[offset:end if end >= 0 else len(self.data)].decode("utf-8", "replace")

    def section(self, name: str) -> Optional[bytes]:
        for sec in self.sections:
            if sec.name == name:
                return self.data[sec.offset:sec.offset + sec.size]
        return None

    def needed(self) -> list[str]:
        """Return the DT_NEEDED library names of a dynamically linked object."""
        result = []
        for sec in self.sections:
            if sec.type != SHT_DYNAMIC or sec.link >= len(self.sections):
                continue
            strtab = self.sections[sec.link]
            fmt = self.endian + ("qQ" if self.is64 else "iI")
            step = struct.calcsize(fmt)
            for pos in range(sec.offset, sec.offset + sec.size - step + 1, step):
                tag, value = struct.unpack_from(fmt, self.data, pos)
                if tag == 0:
                    break
                if tag == DT_NEEDED:
                    result.append(self._cstr(strtab.offset + value))
        return result

    def modinfo(self) -> dict[str, list[str]]:
        """Return a kernel module's ``.modinfo`` key/value pairs (keys may repeat, e.g. ``alias``)."""
        info: dict[str, list[str]] = {}
        raw = self.section(".modinfo") or b""
        for item in raw.split(b"\0"):
            key, sep, value = item.decode("utf-8", "replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
        return info


def read_elf_header(data: bytes) -> Optional[tuple[int, int]]:
    """Return ``(e_type, e_machine)`` of an ELF image, or None when ``data`` is not ELF."""
    if data[:4] != ELF_MAGIC or len(data) < 20:
        return None
    endian = "<" if data[5] == 1 else ">"
    return struct.unpack_from(endian + "HH", data, 16)
