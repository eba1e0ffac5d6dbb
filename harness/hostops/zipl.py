"""Persistent installs on s390x with zipl: a ``[kvmh]`` section (or a BLS entry) made the default.

Two layouts of ``/etc/zipl.conf`` are handled:

* sections (Debian, Ubuntu, older SUSE): a ``[kvmh]`` section with image, ramdisk and parameters is
  added and ``default=kvmh`` set in ``[defaultboot]``;
* ``defaultauto`` with Boot Loader Specification snippets (RHEL, Fedora): a snippet
  ``<bls_dir>/kvmh-<release>.conf`` titled ``kvmh-<release>`` is written and ``default=`` names it.

The original zipl.conf is kept in the state directory; restore puts it back, deletes the snippet and
runs ``zipl`` again. These edits are pure text functions so they are unit-tested without a host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

SECTION = "kvmh"
_HEADER = re.compile(r"^\s*\[([^\]]+)\]\s*$")
_MENU = re.compile(r"^\s*:")
_KEY = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class BootEntry:
    image: str
    ramdisk: Optional[str]
    parameters: str
    release: str


def _blocks(text: str) -> list[tuple[Optional[str], list[str]]]:
    """Split zipl.conf into (section name or None for the preamble/menus, lines) blocks."""
    blocks: list[tuple[Optional[str], list[str]]] = [(None, [])]
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            blocks.append((header.group(1).strip(), [line]))
        elif _MENU.match(line):
            blocks.append((None, [line]))
        else:
            blocks[-1][1].append(line)
    return blocks


def _keys(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        match = _KEY.match(line)
        if match:
            out[match.group(1).lower()] = match.group(2).strip('"')
    return out


def uses_defaultauto(text: str) -> bool:
    """True when ``[defaultboot]`` says ``defaultauto`` (menus built from BLS snippets)."""
    for name, lines in _blocks(text):
        if name == "defaultboot":
            return any(line.strip() == "defaultauto" for line in lines)
    return False


def default_target(text: str) -> str:
    """The ``target=`` directory zipl writes its boot map to: from [defaultboot] or the default section."""
    blocks = _blocks(text)
    sections = {name: _keys(lines) for name, lines in blocks if name}
    boot = sections.get("defaultboot", {})
    if boot.get("target"):
        return boot["target"]
    default = sections.get(boot.get("default", ""), {})
    if default.get("target"):
        return default["target"]
    for keys in sections.values():
        if keys.get("target"):
            return keys["target"]
    return "/boot"


def _set_default(blocks: list[tuple[Optional[str], list[str]]], name: str) -> None:
    for block_name, lines in blocks:
        if block_name == "defaultboot":
            for i, line in enumerate(lines):
                match = _KEY.match(line)
                if match and match.group(1).lower() == "default":
                    lines[i] = f"default = {name}"
                    return
            lines.insert(1, f"default = {name}")
            return
    blocks.insert(1, ("defaultboot", ["[defaultboot]", f"default = {name}"]))


def _render(blocks: list[tuple[Optional[str], list[str]]]) -> str:
    lines = [line for _name, block in blocks for line in block]
    return "\n".join(lines).rstrip("\n") + "\n"


def add_section(text: str, entry: BootEntry) -> str:
    """Return zipl.conf with a ``[kvmh]`` section for ``entry`` that is the default."""
    blocks = [(name, lines) for name, lines in _blocks(text) if name != SECTION]
    target = default_target(text)
    section = [f"[{SECTION}]", f"target = {target}", f"image = {entry.image}"]
    if entry.ramdisk:
        section.append(f"ramdisk = {entry.ramdisk}")
    section.append(f'parameters = "{entry.parameters}"')
    # Sections must come before menus (":name" blocks), so insert after the last section.
    index = max((i for i, (name, _l) in enumerate(blocks) if name), default=len(blocks) - 1) + 1
    if blocks[index - 1][1] and blocks[index - 1][1][-1].strip():
        section.insert(0, "")
    blocks.insert(index, (SECTION, section))
    _set_default(blocks, SECTION)
    return _render(blocks)


def bls_title(release: str) -> str:
    return f"kvmh-{release}"


def bls_entry(entry: BootEntry) -> str:
    """A BLS snippet for ``entry`` (title first, as zipl requires)."""
    lines = [f"title {bls_title(entry.release)}", f"version {entry.release}", f"linux {entry.image}"]
    if entry.ramdisk:
        lines.append(f"initrd {entry.ramdisk}")
    lines.append(f"options {entry.parameters}")
    return "\n".join(lines) + "\n"


def set_default(text: str, name: str) -> str:
    """Return zipl.conf with ``default = name`` in ``[defaultboot]``."""
    blocks = _blocks(text)
    _set_default(blocks, name)
    return _render(blocks)
