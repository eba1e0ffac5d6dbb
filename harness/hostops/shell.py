"""Root commands on a host: run as root directly or through ``sudo -n``, fail with one clear line."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Optional

from ..errors import InfrastructureError
from ..targets.base import CommandResult, Target

log = logging.getLogger(__name__)

# Non-login SSH sessions of ordinary users often lack the sbin directories (kexec, zipl, depmod).
PATH_PREFIX = "PATH=/usr/sbin:/sbin:/usr/bin:/bin:$PATH; export PATH; "


class RemoteCommandError(InfrastructureError):
    """A root command on the host failed."""


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def root_prefix(target: Target) -> str:
    """Return ``""`` when the login is root, ``"sudo -n "`` when passwordless sudo works; else raise."""
    result = target.run("id -u; id -un", timeout=30)
    lines = result.stdout.split()
    if lines and lines[0] == "0":
        return ""
    user = lines[1] if len(lines) > 1 else "this user"
    sudo = target.run("sudo -n true", timeout=30)
    if sudo.ok:
        return "sudo -n "
    reason = _first_line(sudo.stderr) or f"exit status {sudo.exit_status}"
    raise InfrastructureError(
        f"{user} on {target.spec} is not root and cannot use sudo without a password ({reason}): "
        f"connect as root (ssh://root@...) or allow passwordless sudo for {user}")


class HostShell:
    """Run commands as root on a target; every failure becomes a RemoteCommandError naming the step."""

    def __init__(self, target: Target, prefix: Optional[str] = None) -> None:
        self.target = target
        self.prefix = root_prefix(target) if prefix is None else prefix

    @property
    def is_root(self) -> bool:
        return self.prefix == ""

    def wrap(self, command: str) -> str:
        """The command line that runs ``command`` (a shell snippet) as root."""
        body = PATH_PREFIX + command
        if self.prefix:
            return f"{self.prefix}sh -c {shlex.quote(body)}"
        return body

    def run(self, command: str, timeout: float = 300.0, *, stdin: Optional[bytes] = None) -> CommandResult:
        return self.target.run(self.wrap(command), timeout=timeout, stdin=stdin)

    def check(self, command: str, what: str, timeout: float = 300.0, *, stdin: Optional[bytes] = None) -> str:
        """Run as root; raise ``RemoteCommandError("<what> failed on <host>: <first stderr line>")``."""
        result = self.run(command, timeout=timeout, stdin=stdin)
        if result.timed_out:
            raise RemoteCommandError(f"{what} on {self.target.spec} did not finish within {timeout:.0f} s")
        if result.exit_status != 0:
            reason = _first_line(result.stderr) or _first_line(result.stdout) or f"exit status {result.exit_status}"
            raise RemoteCommandError(f"{what} failed on {self.target.spec}: {reason}", details=result.stderr)
        return result.stdout

    def write_file(self, local: Path, remote: str, what: str, mode: int = 0o644) -> None:
        """Copy a local file to ``remote`` as root (directly when root, else streamed through sudo)."""
        if self.is_root:
            try:
                self.target.put(local, remote, mode=mode)
            except InfrastructureError as err:
                raise RemoteCommandError(f"{what} failed on {self.target.spec}: {err}") from None
            except OSError as err:
                raise RemoteCommandError(f"{what} failed on {self.target.spec}: {err}") from None
            return
        quoted = shlex.quote(remote)
        # Created unreadable to others (umask), then given its mode: never world-readable while written.
        self.check(f"umask 077 && cat > {quoted} && chmod {mode:o} {quoted}", what, stdin=Path(local).read_bytes())

    def write_text(self, text: str, remote: str, what: str, mode: int = 0o644) -> None:
        """Write ``text`` to ``remote`` as root, atomically (temporary file, then rename)."""
        quoted = shlex.quote(remote)
        tmp = shlex.quote(remote + ".tmp")
        self.check(f"mkdir -p \"$(dirname {quoted})\" && cat > {tmp} && chmod {mode:o} {tmp} && mv -f {tmp} {quoted}",
                   what, stdin=text.encode())
