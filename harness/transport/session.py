"""The private working directory of one SSH connection on the remote machine.

Every connection gets its own directory, made with ``mkdtemp``/``mktemp -d`` (mode 0700) under
``$TMPDIR`` or ``/tmp`` and checked (a real directory, owned by the login user, mode 0700) before
anything is put in it.  Commands run there (it is their working directory, so relative remote paths
name files in it) with ``KVMH_SESSION=<token>`` and ``PYTHONDONTWRITEBYTECODE=1`` in their environment.

With a keeper (:mod:`harness.transport.keeper`, needs ``python3`` on the remote side) the directory
and every process of the session end with the connection: at ``close()``, when the harness dies (its
TCP connection closes) or when the heartbeats stop for ``REMOTE_SILENCE_S`` (a dead link).  Without
one, ``close()`` removes the directory.
"""

from __future__ import annotations

import base64
import functools
import logging
import secrets
import shlex
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import InfrastructureError
from .heartbeat import REMOTE_SILENCE_S, HeldCommand

log = logging.getLogger(__name__)

SESSION_ENV = "KVMH_SESSION"
KEEPER_SOURCE = Path(__file__).with_name("keeper.py")
SETUP_DEADLINE_S = 60.0
CLOSE_DEADLINE_S = 15.0

# Makes and checks the private directory without python3 (owner and mode read with stat, or ls -ldn).
_MKTEMP = r"""umask 077
d=$(mktemp -d "${TMPDIR:-/tmp}/kvmh.XXXXXX") || exit 1
m=$(stat -c '%u %a' "$d" 2>/dev/null) || m=$(ls -ldn "$d" | awk '{print $3, ($1 ~ /^drwx------/) ? "700" : $1}')
if [ -d "$d" ] && [ ! -L "$d" ] && [ "$m" = "$(id -u) 700" ]; then
  echo "KVMH-SESSION $d"
else
  rmdir "$d" 2>/dev/null; echo "KVMH-ERROR $d is not a private directory ($m)"; exit 1
fi
"""

RunRaw = Callable[[str, float], tuple[int, str, str]]
"""Runs a command outside the session (no working directory set): (status, stdout, stderr)."""
StartHeld = Callable[[str, str], HeldCommand]
"""Starts a held command: (command, description) -> HeldCommand."""


@functools.lru_cache(maxsize=1)
def _keeper_loader() -> str:
    """A ``python3 -c`` program that runs the keeper, compressed (dropbear takes commands up to 9000 bytes)."""
    packed = base64.b64encode(zlib.compress(KEEPER_SOURCE.read_bytes(), 9)).decode()
    return f"import base64,zlib;exec(zlib.decompress(base64.b64decode('{packed}')))"


def keeper_command(mode_args: str) -> str:
    """The shell command running the keeper program with ``mode_args`` (already quoted)."""
    return f"PYTHONDONTWRITEBYTECODE=1 exec python3 -c {shlex.quote(_keeper_loader())} {mode_args}"


@dataclass
class RemoteSession:
    """One connection's private directory, its token and (when it runs) its keeper."""

    token: str
    directory: str
    keeper: Optional[HeldCommand] = None

    def prelude(self) -> str:
        """Shell lines that put a command into the session (environment token, working directory)."""
        # No .pyc files written into the host's Python directories by the programs the harness runs.
        return (f"export {SESSION_ENV}={self.token} PYTHONDONTWRITEBYTECODE=1\n"
                f"cd -- {shlex.quote(self.directory)} || exit 125\n")

    def close(self, run_raw: RunRaw) -> None:
        """End the session: the keeper kills its processes and removes the directory; else ``rm -rf``."""
        if self.keeper is not None:
            status = self.keeper.stop(CLOSE_DEADLINE_S)
            if status is None:
                log.warning("the session keeper of %s did not confirm its cleanup", self.directory)
            return
        try:
            status, _, err = run_raw(f"rm -rf -- {shlex.quote(self.directory)}", CLOSE_DEADLINE_S)
        except InfrastructureError as error:
            log.warning("could not remove the session directory %s: %s", self.directory, error)
            return
        if status != 0:
            log.warning("could not remove the session directory %s: %s", self.directory, err.strip())


def _parse(line: str, address: str) -> str:
    word, _, directory = line.strip().partition(" ")
    if word != "KVMH-SESSION" or not directory.startswith("/"):
        raise InfrastructureError(f"cannot make a private working directory on {address}: {line.strip()[:200]}")
    return directory


def open_session(address: str, run_raw: RunRaw, start_held: Optional[StartHeld]) -> RemoteSession:
    """Create the session's directory; with ``start_held``, under a keeper when the remote has python3."""
    token = secrets.token_hex(12)
    if start_held is not None:
        held = start_held(
            "command -v python3 >/dev/null 2>&1 || { echo KVMH-NO-PYTHON; exit 0; }\n"
            + keeper_command(f"session {token} {REMOTE_SILENCE_S:g}"), "the session keeper")
        line = held.read_line(time.monotonic() + SETUP_DEADLINE_S)
        if line.strip() != "KVMH-NO-PYTHON":
            try:
                session = RemoteSession(token, _parse(line, address), held)
            except InfrastructureError:
                held.stop(CLOSE_DEADLINE_S)
                raise
            log.debug("session %s on %s (with keeper)", session.directory, address)
            return session
        held.stop(CLOSE_DEADLINE_S)
        log.info("%s has no python3: its session directory is removed at close, but commands left running "
                 "when the harness dies are not ended", address)
    status, out, err = run_raw(_MKTEMP, SETUP_DEADLINE_S)
    lines = out.strip().splitlines()
    if status != 0 or not lines:
        raise InfrastructureError(f"cannot make a private working directory on {address}: "
                                  f"{(lines[-1] if lines else err.strip()) or status}")
    session = RemoteSession(token, _parse(lines[-1], address))
    log.debug("session %s on %s", session.directory, address)
    return session
