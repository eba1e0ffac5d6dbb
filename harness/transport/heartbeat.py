"""Liveness of an SSH connection: keepalives that wait for their reply, and remote commands held by heartbeats.

paramiko's own ``set_keepalive`` sends its requests without waiting for an answer, so a dead peer
only shows at the TCP retransmission timeout (about 15 minutes).  :class:`Heartbeat` sends a
``keepalive@openssh.com`` global request every ``interval`` seconds and waits for the reply (any
reply, a refusal included); when none comes within ``dead_after`` seconds the link is declared
dead and the transport closed, which ends every blocked channel operation at once.

The same thread writes a line to each :class:`HeldCommand` (the remote session keeper, a remote
QEMU's watchdog, see :mod:`harness.transport.keeper`), which end their work when the lines stop.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Callable, Optional

import paramiko

from ..errors import InfrastructureError

log = logging.getLogger(__name__)

KEEPALIVE_S = 5.0
"""Seconds between two keepalives (and heartbeat lines)."""
DEAD_AFTER_S = 20.0
"""A keepalive unanswered this long means the link is dead."""
DETECT_BOUND_S = KEEPALIVE_S + DEAD_AFTER_S + 5.0
"""A dead link becomes an error within this many seconds (the README states 30 s)."""
REMOTE_SILENCE_S = 30.0
"""A held remote command ends its work after this long without a heartbeat line."""


class Heartbeat:
    """The keepalive thread of one connection; see the module docstring."""

    def __init__(self, transport: paramiko.Transport, address: str, on_dead: Callable[[str], None],
                 held: Callable[[], list["HeldCommand"]], interval: float = KEEPALIVE_S,
                 dead_after: float = DEAD_AFTER_S) -> None:
        self.transport = transport
        self.address = address
        self.on_dead = on_dead
        self.held = held
        self.interval = interval
        self.dead_after = dead_after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"ssh-heartbeat-{address}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.transport.is_active():
                return
            for command in self.held():
                command.beat()
            if not self._answered():
                if self._stop.is_set() or not self.transport.is_active():
                    return
                reason = f"no answer to SSH keepalives for {self.dead_after:.0f} s"
                log.warning("SSH link to %s is dead: %s", self.address, reason)
                self.on_dead(reason)
                return

    def _answered(self) -> bool:
        """Send one keepalive and wait up to ``dead_after`` for its reply."""
        asker = threading.Thread(target=self._ask, name=f"ssh-keepalive-{self.address}", daemon=True)
        asker.start()
        asker.join(self.dead_after)
        return not asker.is_alive()

    def _ask(self) -> None:
        try:
            self.transport.global_request("keepalive@openssh.com", wait=True)
        except (paramiko.SSHException, EOFError, OSError):
            pass


class HeldCommand:
    """A remote command on its own exec channel that runs until its stdin ends (see the module docstring)."""

    def __init__(self, channel: paramiko.Channel, what: str, address: str) -> None:
        self.channel = channel
        self.what = what
        self.address = address
        self._buffer = b""
        self.output = ""
        self._lock = threading.Lock()
        self.stopped = False

    @property
    def alive(self) -> bool:
        return not self.channel.closed and not self.channel.exit_status_ready()

    def beat(self) -> None:
        """Send one heartbeat line (errors are ignored: the keepalive decides about the link)."""
        if self.stopped or self.channel.closed:
            return
        with self._lock:
            try:
                if self.channel.send_ready():
                    self.channel.send(b"\n")
            except (OSError, EOFError, paramiko.SSHException, socket.timeout):
                pass

    def _drain(self) -> None:
        while self.channel.recv_ready():
            data = self.channel.recv(65536)
            if not data:
                break
            self._buffer += data
        while self.channel.recv_stderr_ready():
            data = self.channel.recv_stderr(65536)
            if not data:
                break
            self.output += data.decode("utf-8", "replace")

    def read_line(self, deadline: float, check: Optional[Callable[[], None]] = None) -> str:
        """The next line the command prints; raise InfrastructureError when it ends first or at ``deadline``."""
        while b"\n" not in self._buffer:
            if check is not None:
                check()
            self._drain()
            if b"\n" in self._buffer:
                break
            if self.channel.closed or self.channel.eof_received:
                self._drain()
                if b"\n" in self._buffer:
                    break
                raise InfrastructureError(f"{self.what} on {self.address} ended before it was ready: "
                                          f"{(self._buffer.decode('utf-8', 'replace') + self.output).strip()[-300:]}")
            now = time.monotonic()
            if now >= deadline:
                raise InfrastructureError(f"{self.what} on {self.address} did not answer in time")
            select.select([self.channel], [], [], min(0.2, deadline - now))
        line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.decode("utf-8", "replace")
        self.output += text + "\n"
        return text

    def stop(self, timeout: float) -> Optional[int]:
        """End the command (EOF on its stdin) and wait up to ``timeout`` s for its exit status."""
        self.stopped = True
        with self._lock:
            try:
                self.channel.shutdown_write()
            except (OSError, EOFError, paramiko.SSHException):
                pass
        end = time.monotonic() + timeout
        transport = self.channel.get_transport()
        while not self.channel.exit_status_ready():
            if time.monotonic() >= end or self.channel.closed or transport is None or not transport.is_active():
                break
            self.channel.status_event.wait(0.2)
            self._drain()
        self._drain()
        if self._buffer:
            self.output += self._buffer.decode("utf-8", "replace")
            self._buffer = b""
        status = self.channel.recv_exit_status() if self.channel.exit_status_ready() else None
        try:
            self.channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        return status
