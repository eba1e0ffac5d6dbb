"""A long-lived ``sh`` on one SSH channel that runs commands without a new channel or exec each.

Under TCG every ``fork``+``exec`` in the guest costs tens of milliseconds, and a new SSH exec
channel costs a dropbear fork plus a shell exec; a command sent to an already running shell costs
one ``fork`` (the subshell that runs it).  Each command is framed on both streams:

    KVMH_B_<token>\\n  <the command's output>  KVMH_E_<token> <status>\\n   (stdout)
    KVMH_B_<token>\\n  <the command's errors>  KVMH_E_<token>\\n            (stderr)

Bytes before the begin marker (late output of an earlier command's background process) are
dropped.  The command runs with ``KVMH_CMD=<token>`` in its environment, so a timed-out command
and everything it started can be found in ``/proc/*/environ`` and killed (:func:`kill_script`).
"""

from __future__ import annotations

import codecs
import logging
import re
import select
import shlex
import time
from typing import Callable, Optional

import paramiko

from ..command import OutputCallback

log = logging.getLogger(__name__)

ENV_MARK = "KVMH_CMD"


def command_wrapper(token: str, command: str) -> str:
    """The lines that run ``command`` marked with ``token`` in the persistent shell."""
    return (
        f"__kvmh_t={token}\n"
        'printf "KVMH_B_%s\\n" "$__kvmh_t"; printf "KVMH_B_%s\\n" "$__kvmh_t" >&2\n'
        f"( export {ENV_MARK}=$__kvmh_t; eval {shlex.quote(command)}\n) </dev/null\n"
        'printf "KVMH_E_%s %s\\n" "$__kvmh_t" "$?"; printf "KVMH_E_%s\\n" "$__kvmh_t" >&2\n'
    )


def kill_script(token: str, parent: Optional[int] = None) -> str:
    """Shell code that SIGKILLs a command and everything it started.

    The roots are the processes whose environment or command line carries ``KVMH_CMD=<token>``
    and, when ``parent`` (the persistent shell) is given, that shell's children; every descendant
    of a root goes too (forked subshells do not show the token in ``/proc/PID/environ``).  All of
    them are stopped first, so none runs on when its child dies, then killed.  It repeats until no
    such process is left (at most 10 rounds; exit status 1 if some remained).
    The grep pattern puts the token's first character in brackets so that grep's own command
    line does not match.
    """
    pattern = f"{ENV_MARK}=[{token[0]}]{token[1:]}"
    parent_text = str(parent) if parent else ""
    return f"""s={parent_text}; n=0
while [ $n -lt 10 ]; do
  roots=" "
  for f in $(grep -l '{pattern}' /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${{f#/proc/}}; roots="$roots${{p%%/*}} "
  done
  list=
  for f in /proc/[0-9]*/stat; do
    read -r l 2>/dev/null < "$f" || continue
    r=${{l##*) }}; set -- $r; p=${{f#/proc/}}; list="$list ${{p%/stat}}:$2"
  done
  if [ -n "$s" ]; then
    for e in $list; do [ "${{e#*:}}" = "$s" ] && roots="$roots${{e%:*}} "; done
  fi
  tree=$roots; grew=1
  while [ -n "$grew" ]; do
    grew=
    for e in $list; do
      case "$tree" in
        *" ${{e#*:}} "*) case "$tree" in *" ${{e%:*}} "*) ;; *) tree="$tree${{e%:*}} "; grew=1;; esac;;
      esac
    done
  done
  victims=
  for p in $tree; do [ "$p" = "$$" ] || [ "$p" = "$s" ] || victims="$victims $p"; done
  [ -n "$victims" ] || exit 0
  kill -STOP $victims 2>/dev/null
  kill -KILL $victims 2>/dev/null
  n=$((n + 1))
done
exit 1
"""


class StreamCut:
    """Takes one command's bytes out of a shared stream: after its begin marker, up to its end marker.

    Output is passed on as soon as it cannot be the start of the end marker, so streaming works
    for short lines too.
    """

    def __init__(self, name: str, token: str, with_status: bool, on_output: Optional[OutputCallback]) -> None:
        self.name = name
        self.begin = b"KVMH_B_" + token.encode() + b"\n"
        self.end_literal = b"KVMH_E_" + token.encode()
        tail = rb" (\d+)\n" if with_status else rb"\n"
        self.end = re.compile(re.escape(self.end_literal) + tail)
        self.on_output = on_output
        self.started = False
        self.done = False
        self.status: Optional[int] = None
        self._buf = b""
        self._chunks: list[bytes] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        if self.done:
            if data.strip():
                log.debug("dropping %d bytes of %s after the command's end", len(data), self.name)
            return
        self._buf += data
        if not self.started:
            at = self._buf.find(self.begin)
            if at < 0:
                self._buf = self._buf[-len(self.begin):]
                return
            if at:
                log.debug("dropping %d bytes of %s before the command's start", at, self.name)
            self._buf = self._buf[at + len(self.begin):]
            self.started = True
        match = self.end.search(self._buf)
        if match:
            self._emit(self._buf[:match.start()])
            if match.groups():
                self.status = int(match.group(1))
            self.done = True
            self._buf = b""
            return
        hold = self._marker_start()
        self._emit(self._buf[:hold])
        self._buf = self._buf[hold:]

    def _marker_start(self) -> int:
        """Where a (possibly incomplete) end marker may begin at the end of the buffer."""
        buf = self._buf
        at = buf.rfind(self.end_literal)
        if at >= 0:
            return at
        for size in range(min(len(self.end_literal) - 1, len(buf)), 0, -1):
            if buf.endswith(self.end_literal[:size]):
                return len(buf) - size
        return len(buf)

    def flush(self) -> None:
        """Emit what is held back (the command will not finish normally)."""
        if self.started and not self.done and self._buf:
            self._emit(self._buf)
        self._buf = b""

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        if self.on_output is not None:
            text = self._decoder.decode(data)
            if text:
                self.on_output(self.name, text)

    def data(self) -> bytes:
        return b"".join(self._chunks)


class ShellGone(Exception):
    """The persistent shell's channel closed; the command's fate is unknown."""


class CommandShell:
    """``sh`` on an SSH exec channel, running one marked command at a time."""

    def __init__(self, transport: paramiko.Transport, timeout: float = 30.0, prelude: str = "") -> None:
        """Start the shell; ``prelude`` (shell lines) runs first, e.g. to set its directory and environment."""
        self.channel = transport.open_session(timeout=timeout)
        self.channel.exec_command(f"{prelude}echo KVMH_SHELL $$; exec sh")
        self.broken = False
        self.pid = self._read_pid(time.monotonic() + timeout)

    def _read_pid(self, deadline: float) -> int:
        """Read the shell's ``KVMH_SHELL <pid>`` line."""
        head = b""
        while b"\n" not in head:
            if time.monotonic() >= deadline or self.channel.closed or self.channel.eof_received:
                self.close()
                raise ShellGone(f"the persistent shell did not start (got {head[:80]!r})")
            select.select([self.channel], [], [], 0.2)
            while self.channel.recv_ready():
                head += self.channel.recv(4096)
        line = head.split(b"\n", 1)[0]
        if not line.startswith(b"KVMH_SHELL "):
            self.close()
            raise ShellGone(f"unexpected first line from the persistent shell: {line[:80]!r}")
        return int(line.split()[1])

    @property
    def usable(self) -> bool:
        return not self.broken and not self.channel.closed and not self.channel.exit_status_ready()

    def close(self) -> None:
        self.broken = True
        try:
            self.channel.close()
        except Exception:  # closing a dead channel may raise on a dead transport
            pass

    def run(
        self,
        token: str,
        command: str,
        deadline: float,
        on_output: Optional[OutputCallback],
        check: Callable[[], None],
    ) -> tuple[Optional[int], bytes, bytes, bool]:
        """Run ``command``; return (status, stdout, stderr, timed_out).

        ``check`` is called about once a second and may raise (connection or target gone).  On a
        timeout the command is left running: the caller kills it and then calls :meth:`finish`.
        """
        self.out = StreamCut("stdout", token, True, on_output)
        self.err = StreamCut("stderr", token, False, on_output)
        try:
            self.channel.sendall(command_wrapper(token, command).encode())
        except (OSError, EOFError, paramiko.SSHException) as err:
            self.broken = True
            raise ShellGone(str(err)) from None
        timed_out = not self._pump(deadline, check)
        if timed_out:
            return None, self.out.data(), self.err.data(), True
        return self.out.status, self.out.data(), self.err.data(), False

    def finish(self, grace: float, check: Callable[[], None]) -> None:
        """After killing a timed-out command, read up to its end markers (or give the shell up)."""
        if not self._pump(time.monotonic() + grace, check):
            log.warning("persistent shell did not come back after a killed command; dropping it")
            self.close()
        self.out.flush()
        self.err.flush()

    def _pump(self, deadline: float, check: Callable[[], None]) -> bool:
        """Read until both end markers; False when the deadline passed first."""
        next_check = time.monotonic() + 1.0
        while not (self.out.done and self.err.done):
            now = time.monotonic()
            if now >= deadline:
                return False
            select.select([self.channel], [], [], min(0.5, deadline - now))
            got = False
            while self.channel.recv_ready():
                data = self.channel.recv(65536)
                if not data:
                    break
                got = True
                self.out.feed(data)
            while self.channel.recv_stderr_ready():
                data = self.channel.recv_stderr(65536)
                if not data:
                    break
                got = True
                self.err.feed(data)
            if not got and (self.channel.closed or self.channel.eof_received):
                self.broken = True
                raise ShellGone("the persistent shell's channel closed")
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                check()
        return True
