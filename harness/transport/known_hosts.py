"""Host key verification against an OpenSSH known_hosts file, with trust-on-first-use only on request."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import paramiko

from .ssh import SshError, fingerprint

log = logging.getLogger(__name__)


class HostKeyError(SshError):
    """The host's key is unknown or does not match the known one (never retried)."""


def host_entry_name(host: str, port: int) -> str:
    """The known_hosts name of ``host:port`` (``[host]:port`` unless the port is 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def default_known_hosts() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


def load_known_hosts(keys: paramiko.HostKeys, path: Path) -> int:
    """Add the usable entries of an OpenSSH known_hosts file to ``keys``; return how many were read.

    Lines paramiko cannot parse (markers such as ``@cert-authority``, unknown key types, damaged
    lines) are skipped instead of failing the whole file, as OpenSSH does.
    """
    count = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise HostKeyError(f"cannot read known_hosts file {path}: {err.strerror or err}") from None
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#") or text.startswith("@"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(text, lineno)
        except Exception as err:  # noqa: BLE001 - paramiko raises several types for bad lines
            log.debug("%s:%d skipped: %s", path, lineno, err)
            continue
        if entry is None or entry.key is None:
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
            count += 1
    return count


def append_known_host(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append one ``name keytype base64`` line to ``path`` (created 0600, its directory 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(line)


class VerifyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko for a host whose key is not in known_hosts: trust it only when allowed."""

    def __init__(self, known_hosts: Path, accept_new: bool) -> None:
        self.known_hosts = known_hosts
        self.accept_new = accept_new
        self.accepted: Optional[str] = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self.accept_new:
            append_known_host(self.known_hosts, hostname, key)
            client.get_host_keys().add(hostname, key.get_name(), key)
            self.accepted = fingerprint(key)
            log.warning("trusting the new host key of %s (%s %s), saved to %s", hostname, key.get_name(),
                        self.accepted, self.known_hosts)
            return
        raise HostKeyError(
            f"host key of {hostname} is not known ({key.get_name()} {fingerprint(key)}, not in {self.known_hosts}): "
            f"check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and pass "
            f"--accept-new-host-key to trust it")


def mismatch_error(name: str, got: paramiko.PKey, expected: paramiko.PKey, known_hosts: Path) -> HostKeyError:
    """The one-line error for a host whose key differs from the known one (never accepted)."""
    return HostKeyError(
        f"host key of {name} does NOT match {known_hosts} (got {got.get_name()} {fingerprint(got)}, expected "
        f"{fingerprint(expected)}): someone may be intercepting the connection; if the host was reinstalled, "
        f"remove the old key with: ssh-keygen -R '{name}' -f {known_hosts}")
