"""Read a patch series from an mbox, a directory of ``.patch`` files, a git range or a lore message-id.

The result is a :class:`Series`: the patches in application order (cover letters and replies dropped),
each with its subject, author and raw mail bytes, plus a content hash that ignores mail transport
details (Message-Id, Date, the mbox ``From`` line) so that re-exporting the same commits gives the
same hash.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Optional, Union

from ..errors import InfrastructureError

log = logging.getLogger(__name__)


class KernelInputError(InfrastructureError):
    """A tree, base or series given to the kernel builder cannot be used (exit status 2)."""


# An mbox separator as written by git format-patch, git send-email, b4 and lore:
# "From <sender-or-sha> <weekday> <month> <day> <hh:mm:ss> <year>".
GIT_TIMEOUT_S = 600.0
B4_TIMEOUT_S = 300.0
_FROM_LINE = re.compile(rb"^From \S+ +\w{3} \w{3} +\d{1,2} \d{1,2}:\d{2}:\d{2} \d{4}\s*$")
_PREFIX = re.compile(r"^\s*\[([^\]]*)\]\s*(.*)$", re.S)
_NUMBER = re.compile(r"(\d+)\s*/\s*(\d+)")
_VERSION = re.compile(r"\bv(\d+)\b", re.I)
_DIFF = re.compile(rb"^(diff --git |--- \S|Index: )", re.M)


@dataclass(frozen=True)
class Patch:
    """One patch mail."""

    subject: str  # without the [PATCH ...] prefix
    author: str
    raw: bytes  # the mail as git am reads it
    number: int = 0  # n of [PATCH n/m]; 0 when unnumbered
    total: int = 0
    version: int = 1

    @property
    def hash(self) -> str:
        """Content hash: author, subject and decoded body, not transport headers."""
        msg = BytesParser(policy=policy.default).parsebytes(_strip_from_line(self.raw))
        body = _normalized_body(_payload(msg))
        h = hashlib.sha256()
        for part in (self.author.encode(), self.subject.encode(), body):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.hexdigest()


@dataclass(frozen=True)
class Series:
    """An ordered patch series; ``base`` is the commit it is known to apply to (git ranges only)."""

    patches: tuple[Patch, ...] = ()
    source: str = ""
    base: Optional[str] = None

    @property
    def subjects(self) -> list[str]:
        return [p.subject for p in self.patches]

    @property
    def hash(self) -> str:
        """Hash of the patch contents in order; the empty series has a fixed hash."""
        h = hashlib.sha256(b"kvmh-series-v1")
        for p in self.patches:
            h.update(p.hash.encode())
        return h.hexdigest()

    def mbox(self) -> bytes:
        """The patches as one mbox, in order, for ``git am``."""
        parts = []
        for p in self.patches:
            raw = p.raw if p.raw.startswith(b"From ") else b"From kvmh Mon Sep 17 00:00:00 2001\n" + p.raw
            parts.append(raw if raw.endswith(b"\n") else raw + b"\n")
        return b"".join(parts)

    def __len__(self) -> int:
        return len(self.patches)


EMPTY = Series(source="(no series)")


def _strip_from_line(raw: bytes) -> bytes:
    if raw.startswith(b"From "):
        return raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return raw


def _normalized_body(body: bytes) -> bytes:
    """Drop the format-patch signature (``-- `` + git version) and trailing blank space."""
    body = body.replace(b"\r\n", b"\n")
    cut = body.rfind(b"\n-- \n")
    if cut >= 0 and body[cut + 5:].count(b"\n") <= 3:
        body = body[:cut]
    return body.rstrip()


def _payload(msg) -> bytes:
    """The decoded text body of a (possibly multipart) mail."""
    if msg.is_multipart():
        chunks = []
        for part in msg.walk():
            if part.get_content_maintype() == "text":
                chunks.append(part.get_payload(decode=True) or b"")
        return b"\n".join(chunks)
    return msg.get_payload(decode=True) or b""


def split_mbox(data: bytes) -> list[bytes]:
    """Split mbox bytes into messages at ``From <x> <date>`` lines; a lone mail is one message."""
    messages: list[bytes] = []
    current: list[bytes] = []
    for line in data.splitlines(keepends=True):
        if _FROM_LINE.match(line.rstrip(b"\r\n")) and current:
            messages.append(b"".join(current))
            current = []
        current.append(line)
    if current and b"".join(current).strip():
        messages.append(b"".join(current))
    return messages


def parse_message(raw: bytes) -> Optional[Patch]:
    """Return the Patch a mail carries, or None for a cover letter, a reply or a mail without a diff."""
    msg = BytesParser(policy=policy.default).parsebytes(_strip_from_line(raw))
    full_subject = " ".join(str(msg.get("Subject", "")).split())
    if re.match(r"^(re|aw|fwd?)\s*:", full_subject, re.I):
        return None
    number = total = 0
    version = 1
    subject = full_subject
    m = _PREFIX.match(full_subject)
    if m:
        tags, subject = m.group(1), m.group(2).strip()
        n = _NUMBER.search(tags)
        if n:
            number, total = int(n.group(1)), int(n.group(2))
        v = _VERSION.search(tags)
        if v:
            version = int(v.group(1))
    if total and number == 0:
        return None  # cover letter [PATCH 0/n]
    if not _DIFF.search(_payload(msg)):
        return None
    author = " ".join(str(msg.get("From", "")).split())
    return Patch(subject=subject, author=author, raw=raw, number=number, total=total, version=version)


def series_from_mbox_bytes(data: bytes, source: str, base: Optional[str] = None) -> Series:
    """Parse mbox bytes into an ordered Series; raise KernelInputError when nothing usable is there."""
    patches = [p for p in (parse_message(m) for m in split_mbox(data)) if p is not None]
    if not patches:
        raise KernelInputError(f"{source} contains no patches (no mail with a diff): "
                               "pass git format-patch output or an mbox of the series")
    return Series(patches=tuple(_order(patches, source)), source=source, base=base)


def _order(patches: list[Patch], source: str) -> list[Patch]:
    """Order numbered patches by n, check the series is whole and of one version."""
    numbered = [p for p in patches if p.total]
    if not numbered:
        return patches
    versions = sorted({p.version for p in numbered})
    if len(versions) > 1:
        raise KernelInputError(f"{source} mixes versions {', '.join('v%d' % v for v in versions)} of the "
                               "series: save only one version")
    if len(numbered) != len(patches):
        loose = next(p for p in patches if not p.total)
        raise KernelInputError(f"{source} mixes numbered patches with the unnumbered {loose.subject!r}: "
                               "save only the series")
    totals = {p.total for p in numbered}
    if len(totals) > 1:
        raise KernelInputError(f"{source} mixes series of {sorted(totals)} patches: save only one series")
    total = totals.pop()
    by_number: dict[int, Patch] = {}
    for p in numbered:
        if p.number in by_number and by_number[p.number].hash != p.hash:
            raise KernelInputError(f"{source} holds two different patches {p.number}/{total}: save only one")
        by_number[p.number] = p
    missing = [n for n in range(1, total + 1) if n not in by_number]
    if missing:
        raise KernelInputError(f"{source} is missing patch {missing[0]}/{total} of the series: "
                               "save the whole series")
    return [by_number[n] for n in range(1, total + 1)]


def series_from_mbox(path: Path) -> Series:
    return series_from_mbox_bytes(Path(path).read_bytes(), str(path))


def series_from_dir(path: Path) -> Series:
    """Read ``*.patch`` files (git format-patch output) in name order; cover letters are skipped."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix == ".patch" and p.is_file())
    if not files:
        raise KernelInputError(f"{path} holds no .patch files: pass git format-patch output")
    patches: list[Patch] = []
    for f in files:
        data = f.read_bytes()
        if not data.lstrip().startswith((b"From ", b"Subject:", b"Date:", b"Message-Id:", b"Message-ID:")) \
                and _DIFF.search(data):
            raise KernelInputError(f"{f} is a bare diff, not a mail: create patches with git format-patch")
        patches.extend(p for p in (parse_message(m) for m in split_mbox(data)) if p is not None)
    if not patches:
        raise KernelInputError(f"{path} contains no patches (no .patch file with a diff): "
                               "pass git format-patch output")
    return Series(patches=tuple(_order(patches, str(path))), source=str(path))


def series_from_range(tree: Path, spec: str) -> Series:
    """Export ``base..tip`` of a git tree with format-patch; the Series remembers the resolved base."""
    left, _, right = spec.partition("..")
    if right.startswith("."):
        raise KernelInputError(f"git range {spec!r} uses '...': give base..tip")
    left = left or "HEAD"
    right = right or "HEAD"
    if not (Path(tree) / ".git").exists():
        raise KernelInputError(f"git range {spec!r} needs a git tree but {tree} is not one: "
                               "pass an mbox or a directory of patches")
    resolved = []
    for rev in (left, right):
        proc = _git(tree, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if proc.returncode != 0:
            raise KernelInputError(f"commit {rev!r} of range {spec!r} not found in {tree}: "
                                   "fetch it or fix the range")
        resolved.append(proc.stdout.strip())
    proc = _run(["git", "-C", str(tree), "format-patch", "--stdout", "--no-signature",
                 f"{resolved[0]}..{resolved[1]}"], f"git format-patch {spec}")
    if proc.returncode != 0:
        raise KernelInputError(f"git format-patch {spec} failed in {tree}: "
                               f"{proc.stderr.decode(errors='replace').strip()}")
    if not proc.stdout.strip():
        raise KernelInputError(f"git range {spec!r} in {tree} holds no commits: give base..tip with tip "
                               "ahead of base")
    return series_from_mbox_bytes(proc.stdout, f"{tree}:{spec}", base=resolved[0])


def series_from_message_id(msgid: str) -> Series:
    """Fetch a series from lore with ``b4 am``; needs b4 and network access."""
    msgid = msgid.strip().strip("<>")
    if msgid.startswith(("http://", "https://")):
        msgid = msgid.rstrip("/").split("/")[-1] if "/T/" not in msgid else msgid.split("/")[-3]
    hint = "save the series as an mbox and pass the file"
    if shutil.which("b4") is None:
        raise KernelInputError(f"cannot fetch message-id {msgid}: b4 not installed — {hint}")
    with tempfile.TemporaryDirectory(prefix="kvmh-b4-") as tmp:
        # "--": a message-id starting with "-" is an argument, never an option of b4.
        proc = _run(["b4", "am", "-n", "series", "-o", tmp, "--", msgid], f"fetching message-id {msgid} with b4",
                    timeout=B4_TIMEOUT_S, text=True)
        mboxes = sorted(Path(tmp).glob("*.mbx"))
        if proc.returncode != 0 or not mboxes:
            last = (proc.stderr.strip().splitlines() or ["no mbox written"])[-1]
            raise KernelInputError(f"cannot fetch message-id {msgid}: network unreachable or b4 failed "
                                   f"({last}) — {hint}")
        return series_from_mbox_bytes(mboxes[0].read_bytes(), f"message-id {msgid}")


def looks_like_message_id(text: str) -> bool:
    return bool(re.match(r"^<?[^\s/<>@]+@[^\s/<>@]+>?$", text)) or "lore.kernel.org/" in text


def load_series(spec: Union[str, Path, None], tree: Optional[Path] = None) -> Series:
    """Read a series from any accepted form; None or "" gives the empty series (build the base as is)."""
    if spec is None or str(spec) == "":
        return EMPTY
    path = Path(spec).expanduser()
    if path.is_dir():
        return series_from_dir(path)
    if path.is_file():
        return series_from_mbox(path)
    text = str(spec)
    if ".." in text and tree is not None and not looks_like_message_id(text):
        return series_from_range(tree, text)
    if looks_like_message_id(text):
        return series_from_message_id(text)
    raise KernelInputError(f"series {text!r} is neither an mbox file, a directory of .patch files, "
                           "a git range base..tip nor a message-id: check the path")


def _git(tree: Path, *args: str) -> subprocess.CompletedProcess:
    return _run(["git", "-C", str(tree), *args], f"git {' '.join(args[:2])} in {tree}", text=True)


def _run(cmd: list[str], what: str, timeout: float = GIT_TIMEOUT_S, text: bool = False) -> subprocess.CompletedProcess:
    """``subprocess.run`` with output captured and a deadline; past it, a KernelInputError naming the step."""
    try:
        return subprocess.run(cmd, capture_output=True, text=text, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise KernelInputError(f"{what} did not finish within {timeout:.0f} s") from None
