"""SSH to a target with paramiko: pinned host keys, connect until a deadline, commands that can be killed.

One connection carries every command, in a private working directory of its own on the remote side
(:mod:`harness.transport.session`: relative remote paths name files there), and every remote
operation has a deadline.  A keepalive that waits for its reply (:mod:`harness.transport.heartbeat`)
notices a dead link within ``heartbeat.DETECT_BOUND_S`` and turns it into an
:class:`SshConnectionLost` naming the host and the step.  Commands go to a persistent ``sh`` on one channel
(:mod:`harness.transport.cmdshell`: no channel setup and no exec per command, which matters
under TCG); commands with stdin, and commands issued while that shell is busy, get their own exec
channel.  Either way the command runs with ``KVMH_CMD=<token>`` in its environment: a command that
outlives its timeout is killed together with everything it started (found by that token in
``/proc/*/environ``) over another channel.  The remote shell must be POSIX ``sh``.  Files move
over SFTP when the server offers it, otherwise over an exec channel (``cat > file`` /
``cat file``); both are byte-exact.

Why one module of this size: one paramiko connection and everything that must hold it (deadlines,
keepalives, held channels, SFTP with stall detection, killing a command's processes).
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import logging
import os
import posixpath
import secrets
import select
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import paramiko

from ..errors import BootError, InfrastructureError, UsageError
from ..command import CommandResult, OutputCallback
from .cmdshell import ENV_MARK, CommandShell, ShellGone, kill_script
from .heartbeat import DEAD_AFTER_S, KEEPALIVE_S, Heartbeat, HeldCommand
from .panic import seconds
from .session import RemoteSession, open_session

log = logging.getLogger(__name__)

_Outcome = tuple[int, bytes, bytes, bool]  # exit status, stdout, stderr, timed out
# Errors that mean "the server is not up yet": retried until the connect deadline.
_RETRYABLE = (paramiko.SSHException, EOFError, OSError, socket.timeout)
SFTP_STALL_S = 30.0
"""An SFTP read or write that makes no progress for this long fails."""
TRANSFER_RATE = 256 * 1024
"""Bytes per second a copy is given at least (on top of a minute) before its deadline."""


def transfer_timeout(size: int) -> float:
    """Seconds allowed to copy ``size`` bytes."""
    return 60.0 + size / TRANSFER_RATE


class SshError(InfrastructureError):
    """SSH failed in a way the user must fix (host key, authentication)."""


class SshConnectionLost(InfrastructureError):
    """The connection dropped (or the target went away) while a command ran."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_public_key(line: str) -> paramiko.PKey:
    """Parse ``"ssh-ed25519 AAAA... [comment]"`` into a paramiko key."""
    parts = line.split()
    if len(parts) < 2:
        raise UsageError(f"not an SSH public key: {line!r}; expected 'TYPE BASE64'")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except Exception as err:
        raise UsageError(f"cannot parse SSH public key {line[:40]!r}...: {err}") from None


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown host key: reject naming its fingerprint, or (``accept_new``) trust it and append it to known_hosts.

    The file is only appended to (paramiko's own writer rewrites it and drops ``@cert-authority`` lines).
    """

    def __init__(self, accept_new: bool, known_hosts: Optional[Path]) -> None:
        self.accept_new = accept_new
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self.accept_new:
            where = f"in {self.known_hosts}" if self.known_hosts else "among the pinned keys"
            raise SshError(
                f"host key of {hostname} ({key.get_name()} {fingerprint(key)}) is not {where}: "
                f"add it to known_hosts or allow trusting new host keys"
            )
        log.warning("trusting new host key of %s: %s %s", hostname, key.get_name(), fingerprint(key))
        client.get_host_keys().add(hostname, key.get_name(), key)
        if self.known_hosts is not None:
            line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)


class SshClient:
    """A paramiko connection to ``user@host:port``.

    Host keys: ``host_keys`` pins public key lines (``"ssh-ed25519 AAAA..."``) for this host,
    ``known_hosts`` is an OpenSSH known_hosts file; a key that matches neither is refused (or,
    with ``accept_new_host_key``, trusted and written to ``known_hosts``).  Client keys:
    ``key_file`` and/or the SSH agent and ``~/.ssh`` keys (``use_agent``, ``look_for_keys``).
    ``liveness``, when given, is polled while a command runs: returning False ends the wait.
    ``persistent_shell=False`` gives every command its own exec channel.  ``keepalive_s`` and
    ``dead_after_s`` set the keepalive (0 turns it off); ``keeper`` runs the remote session keeper,
    which ends the session's processes and directory with the connection (see
    :mod:`harness.transport.session`).
    """

    def __init__(
        self,
        host: str,
        port: int = 22,
        user: str = "root",
        *,
        key_file: Optional[Path] = None,
        host_keys: Sequence[str] = (),
        known_hosts: Optional[Path] = None,
        accept_new_host_key: bool = False,
        use_agent: bool = False,
        look_for_keys: bool = False,
        keepalive_s: float = KEEPALIVE_S,
        dead_after_s: float = DEAD_AFTER_S,
        liveness: Optional[Callable[[], bool]] = None,
        persistent_shell: bool = True,
        keeper: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.key_file = Path(key_file) if key_file else None
        self.host_keys = tuple(host_keys)
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else None
        self.accept_new_host_key = accept_new_host_key
        self.use_agent = use_agent
        self.look_for_keys = look_for_keys
        self.keepalive_s = keepalive_s
        self.dead_after_s = dead_after_s
        self.liveness = liveness
        self.persistent_shell = persistent_shell
        self.keeper = keeper
        self._session: Optional[RemoteSession] = None
        self._session_lock = threading.Lock()
        self._heartbeat: Optional[Heartbeat] = None
        self._held: list[HeldCommand] = []
        self._dead = ""
        self._shell: Optional[CommandShell] = None
        self._shell_lock = threading.Lock()
        self._client: Optional[paramiko.SSHClient] = None
        self._sftp: Union[paramiko.SFTPClient, None, bool] = None  # False: server has no SFTP
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        client = self._client
        transport = client.get_transport() if client is not None else None
        return transport is not None and transport.is_active()

    # -- connecting ----------------------------------------------------------------------------

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.known_hosts is not None and self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        for line in self.host_keys:
            key = parse_public_key(line)
            client.get_host_keys().add(name, key.get_name(), key)
        client.set_missing_host_key_policy(_HostKeyPolicy(self.accept_new_host_key, self.known_hosts))
        return client

    def connect(
        self,
        deadline: float,
        *,
        check: Optional[Callable[[], None]] = None,
        context: Optional[Callable[[], str]] = None,
    ) -> None:
        """Connect, retrying until ``deadline`` (a ``time.monotonic()`` value).

        ``check`` is called between attempts and may raise (e.g. the guest died); ``context``
        supplies text for the error when the deadline passes (e.g. the last console lines).
        """
        started = time.monotonic()
        attempts = 0
        last_error = "no attempt made"
        while True:
            if check is not None:
                check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                extra = f"; {context()}" if context is not None else ""
                raise BootError(
                    f"SSH on {self.address} not up within {seconds(time.monotonic() - started)} "
                    f"({attempts} attempts, last: {last_error}){extra}"
                )
            attempts += 1
            client = self._new_client()
            try:
                client.connect(
                    self.host, self.port, self.user,
                    key_filename=str(self.key_file) if self.key_file else None,
                    allow_agent=self.use_agent, look_for_keys=self.look_for_keys,
                    timeout=min(10.0, max(1.0, remaining)), banner_timeout=min(30.0, max(1.0, remaining)),
                    auth_timeout=min(30.0, max(1.0, remaining)),
                )
            except paramiko.BadHostKeyException as err:
                client.close()
                raise SshError(
                    f"host key of {self.host}:{self.port} is {err.key.get_name()} {fingerprint(err.key)}, "
                    f"expected {fingerprint(err.expected_key)}: the target changed or is not the one meant; "
                    f"fix known_hosts or the pinned key"
                ) from None
            except paramiko.AuthenticationException as err:
                client.close()
                raise SshError(f"SSH authentication as {self.address} failed ({err}): check the key") from None
            except SshError:
                client.close()
                raise
            except _RETRYABLE as err:
                client.close()
                last_error = f"{type(err).__name__}: {err}".strip().rstrip(":")
                log.debug("SSH %s not up yet: %s", self.address, last_error)
                time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
                continue
            transport = client.get_transport()
            self._client = client
            self._dead = ""
            if transport is not None and self.keepalive_s:
                self._heartbeat = Heartbeat(transport, self.address, self._declare_dead, lambda: list(self._held),
                                            self.keepalive_s, self.dead_after_s)
                self._heartbeat.start()
            log.info("SSH %s up after %.1f s (%d attempts)", self.address, time.monotonic() - started, attempts)
            return

    def close(self) -> None:
        """End the remote session (its processes and directory) and close the connection (idempotent)."""
        with self._lock:
            if self._heartbeat is not None:
                self._heartbeat.stop()
                self._heartbeat = None
            if self._shell is not None:
                self._shell.close()
                self._shell = None
            session, self._session = self._session, None
            if session is not None and self.connected:
                session.close(self._run_raw)
            for held in self._held:
                held.stop(0)
            self._held = []
            if isinstance(self._sftp, paramiko.SFTPClient):
                try:
                    self._sftp.close()
                except Exception:
                    pass
            self._sftp = None
            if self._client is not None:
                self._client.close()
                self._client = None

    def _transport(self, command: str) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            if self._dead:
                raise SshConnectionLost(f"SSH link to {self.address} is dead ({self._dead}): cannot run {command!r}")
            raise SshConnectionLost(f"no SSH connection to {self.address} for command {command!r}")
        return transport

    def _declare_dead(self, reason: str) -> None:
        """Called by the heartbeat: remember why and close the transport, which ends every wait on it."""
        self._dead = reason
        client = self._client
        transport = client.get_transport() if client is not None else None
        if transport is not None:
            transport.close()

    # -- the remote session --------------------------------------------------------------------

    @property
    def workdir(self) -> str:
        """The connection's private working directory on the remote side (made on first use)."""
        return self._ensure_session().directory

    def _ensure_session(self) -> RemoteSession:
        with self._session_lock:
            if self._session is None:
                self._transport("setting up the session directory")
                keeper = (lambda command, what: self.start_held(command, what, in_session=False)) \
                    if self.keeper else None
                self._session = open_session(self.address, self._run_raw, keeper)
            return self._session

    def _run_raw(self, command: str, timeout: float) -> tuple[int, str, str]:
        """Run a command outside the session (no working directory, no session token)."""
        status, out, err, timed_out = self._exec(secrets.token_hex(8), command, time.monotonic() + timeout,
                                                 None, None, session=False)
        if timed_out:
            raise SshConnectionLost(f"{command.splitlines()[0][:60]!r} on {self.address} did not finish "
                                    f"within {timeout:.0f} s")
        return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def start_held(self, command: str, what: str, *, in_session: bool = True) -> HeldCommand:
        """Start ``command`` on its own channel, fed heartbeat lines on stdin until :meth:`HeldCommand.stop`.

        It runs in the session (directory, token) unless ``in_session=False``; see
        :mod:`harness.transport.keeper` for programs made to be held.
        """
        prelude = self._ensure_session().prelude() if in_session else ""
        transport = self._transport(what)
        try:
            channel = transport.open_session(timeout=30.0)
            channel.settimeout(SFTP_STALL_S)
            channel.exec_command(prelude + command)
        except (paramiko.SSHException, EOFError, OSError) as err:
            raise SshConnectionLost(f"cannot start {what} on {self.address}: {err}") from None
        held = HeldCommand(channel, what, self.address)
        self._held = [h for h in self._held if h.alive] + [held]
        return held

    # -- commands ------------------------------------------------------------------------------

    def run(
        self,
        command: str,
        timeout: float = 60.0,
        *,
        stdin: Optional[bytes] = None,
        on_output: Optional[OutputCallback] = None,
    ) -> CommandResult:
        """Run ``command`` with ``sh``; a command past ``timeout`` is killed and has ``timed_out``.

        Commands without ``stdin`` go to the persistent shell when it is free; others (and
        concurrent ones) get their own exec channel.
        """
        start = time.monotonic()
        token = secrets.token_hex(8)
        self._ensure_session()
        outcome = None
        if stdin is None and self.persistent_shell and self._shell_lock.acquire(blocking=False):
            try:
                outcome = self._run_in_shell(token, command, start + timeout, on_output)
            finally:
                self._shell_lock.release()
        if outcome is None:
            outcome = self._exec(token, command, start + timeout, stdin, on_output)
        status, out, err, timed_out = outcome
        return CommandResult(
            command=command,
            exit_status=status,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            duration_s=time.monotonic() - start,
            timed_out=timed_out,
        )

    def _check(self, command: str) -> None:
        """Raise SshConnectionLost when the connection or the target is gone."""
        client = self._client
        transport = client.get_transport() if client is not None else None
        if self._dead:
            raise SshConnectionLost(f"SSH link to {self.address} is dead ({self._dead}) during command {command!r}")
        if transport is None or not transport.is_active():
            raise SshConnectionLost(f"SSH connection to {self.address} dropped during command {command!r}")
        if self.liveness is not None and not self.liveness():
            raise SshConnectionLost(f"target {self.address} went away during command {command!r}")

    def _run_in_shell(
        self, token: str, command: str, deadline: float, on_output: Optional[OutputCallback]
    ) -> Optional[_Outcome]:
        """Run in the persistent shell; None when the shell cannot take the command."""
        shell = self._shell
        if shell is None or not shell.usable:
            if shell is not None:
                shell.close()
            try:
                prelude = self._session.prelude() if self._session is not None else ""
                shell = self._shell = CommandShell(self._transport(command), prelude=prelude)
            except (paramiko.SSHException, EOFError, OSError, ShellGone) as err:
                log.info("no persistent shell on %s (%s): using exec channels", self.address, err)
                self._shell = None
                return None
        check = lambda: self._check(command)  # noqa: E731
        try:
            status, out, err, timed_out = shell.run(token, command, deadline, on_output, check)
            if timed_out:
                self._kill(token, command, parent=shell.pid)
                shell.finish(10.0, check)
                return -9, shell.out.data(), shell.err.data(), True
        except ShellGone as gone:
            self._check(command)
            if not shell.out.started:
                log.info("persistent shell on %s closed (%s): using exec channels", self.address, gone)
                return None
            raise SshConnectionLost(
                f"the command shell on {self.address} died during command {command!r}: {gone}"
            ) from None
        return (status if status is not None else -1), out, err, False

    def _exec(
        self,
        token: str,
        command: str,
        deadline: float,
        stdin: Optional[bytes],
        on_output: Optional[OutputCallback],
        *,
        session: bool = True,
    ) -> _Outcome:
        """Run ``command`` on its own exec channel (in the session directory unless ``session=False``)."""
        transport = self._transport(command)
        prelude = self._session.prelude() if session and self._session is not None else ""
        try:
            channel = transport.open_session(timeout=min(30.0, max(5.0, deadline - time.monotonic())))
            channel.exec_command(f"export {ENV_MARK}={token}\n{prelude}{command}")
        except (paramiko.SSHException, EOFError, OSError) as err:
            raise SshConnectionLost(f"cannot start command {command!r} on {self.address}: {err}") from None
        writer = _start_stdin_writer(channel, stdin)
        reader = _ChannelReader(on_output)
        timed_out = False
        try:
            timed_out = self._pump(channel, reader, deadline, command)
        finally:
            if timed_out:
                self._kill(token, command)
            writer.join(timeout=1)
        status = -9 if timed_out else (channel.recv_exit_status() if channel.exit_status_ready() else -1)
        channel.close()
        return status, reader.stdout(), reader.stderr(), timed_out

    def _pump(self, channel: paramiko.Channel, reader: "_ChannelReader", deadline: float, command: str) -> bool:
        """Read until EOF and exit status; return True when the deadline passed first."""
        status_since: Optional[float] = None
        next_check = time.monotonic() + 1.0
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return True
                if not channel.eof_received:
                    select.select([channel], [], [], min(0.2, deadline - now))
                reader.drain(channel)
                if channel.eof_received:
                    # No data follows EOF: only the exit status is still to come.
                    channel.status_event.wait(min(0.2, max(0.0, deadline - time.monotonic())))
                    reader.drain(channel)
                    if channel.exit_status_ready():
                        return False
                elif channel.exit_status_ready():
                    # The command exited but something it started still holds its output open.
                    status_since = status_since or now
                    if now - status_since > 2.0:
                        return False
                if channel.closed and not channel.exit_status_ready() and not channel.recv_ready():
                    self._check(command)
                    raise SshConnectionLost(f"SSH channel to {self.address} closed during command {command!r}")
                if now >= next_check:
                    next_check = now + 1.0
                    self._check(command)
        except BaseException:
            channel.close()
            raise

    def _kill(self, token: str, command: str, parent: Optional[int] = None) -> None:
        """SIGKILL a timed-out command and everything it started (see ``cmdshell.kill_script``)."""
        try:
            status, _, err, _ = self._exec(secrets.token_hex(8), kill_script(token, parent),
                                           time.monotonic() + 60, None, None, session=False)
        except InfrastructureError as error:
            log.warning("could not kill timed-out command %r: %s", command, error)
            return
        if status != 0:
            log.warning("timed-out command %r may still run: kill exited %s: %s", command, status,
                        err.decode("utf-8", "replace").strip())
        else:
            log.info("killed timed-out command %r", command)

    # -- files ---------------------------------------------------------------------------------

    def _sftp_client(self) -> Optional[paramiko.SFTPClient]:
        """The SFTP client (in the session directory), or None when the server has no SFTP."""
        session = self._ensure_session()
        with self._lock:
            if self._sftp is None:
                try:
                    channel = self._transport("opening SFTP").open_session(timeout=SFTP_STALL_S)
                    channel.settimeout(SFTP_STALL_S)
                    channel.invoke_subsystem("sftp")
                    sftp = paramiko.SFTPClient(channel)
                    sftp.chdir(session.directory)
                    self._sftp = sftp
                except (paramiko.SSHException, EOFError, OSError) as err:
                    if self._dead:
                        raise SshConnectionLost(f"SSH link to {self.address} is dead ({self._dead}) "
                                                f"while opening SFTP") from None
                    log.info("no SFTP on %s (%s): copying files over exec channels", self.address, err)
                    self._sftp = False
            return self._sftp or None

    def _progress(self, what: str, deadline: float) -> Callable[[int, int], None]:
        """An SFTP progress callback that ends the copy at its deadline or on a dead link."""

        def check(_done: int, _total: int) -> None:
            if self._dead:
                raise SshConnectionLost(f"SSH link to {self.address} is dead ({self._dead}) while {what}")
            if time.monotonic() > deadline:
                raise SshConnectionLost(f"{what} on {self.address} did not finish in time")

        return check

    def _copy_failed(self, what: str, err: BaseException) -> InfrastructureError:
        if isinstance(err, InfrastructureError):
            return err
        if self._dead:
            return SshConnectionLost(f"SSH link to {self.address} is dead ({self._dead}) while {what}")
        return InfrastructureError(f"{what} failed: {err or type(err).__name__}")

    def put(self, local: Path, remote: str, mode: Optional[int] = None, timeout: Optional[float] = None) -> None:
        """Copy ``local`` to ``remote`` byte-exact, creating the remote directory; a relative ``remote``
        lands in the session directory.  The copy fails after ``timeout`` (default: by size)."""
        local = Path(local)
        if not local.is_file():
            raise UsageError(f"cannot copy {local} to {self.address}: no such file")
        seconds_allowed = timeout if timeout is not None else transfer_timeout(local.stat().st_size)
        deadline = time.monotonic() + seconds_allowed
        what = f"copying {local} to {self.address}:{remote}"
        sftp = self._sftp_client()
        if sftp is not None:
            progress = self._progress(what, deadline)
            try:
                try:
                    sftp.put(str(local), remote, callback=progress)
                except FileNotFoundError:
                    self._checked(f"mkdir -p {shlex.quote(posixpath.dirname(remote) or '.')}", deadline=deadline)
                    sftp.put(str(local), remote, callback=progress)
                if mode is not None:
                    sftp.chmod(remote, mode)
                return
            except (OSError, EOFError, paramiko.SSHException, InfrastructureError) as err:
                raise self._copy_failed(what, err) from None
        quoted = shlex.quote(remote)
        chmod = f" && chmod {mode:o} {quoted}" if mode is not None else ""
        self._checked(f"mkdir -p {shlex.quote(posixpath.dirname(remote) or '.')} && cat > {quoted}{chmod}",
                      stdin=local.read_bytes(), deadline=deadline)

    def get(self, remote: str, local: Path, timeout: float = 600.0) -> None:
        """Copy ``remote`` (relative: in the session directory) to ``local`` byte-exact, within ``timeout``."""
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        what = f"copying {self.address}:{remote} to {local}"
        sftp = self._sftp_client()
        if sftp is not None:
            try:
                sftp.get(remote, str(local), callback=self._progress(what, deadline))
                return
            except (OSError, EOFError, paramiko.SSHException, InfrastructureError) as err:
                raise self._copy_failed(what, err) from None
        status, out, err, timed_out = self._exec(secrets.token_hex(8), f"cat {shlex.quote(remote)}",
                                                 deadline, None, None)
        if status != 0 or timed_out:
            raise InfrastructureError(
                f"copying {self.address}:{remote} failed: "
                f"{'timed out' if timed_out else err.decode('utf-8', 'replace').strip()}"
            )
        local.write_bytes(out)

    def _checked(self, command: str, stdin: Optional[bytes] = None, deadline: Optional[float] = None) -> None:
        deadline = deadline if deadline is not None else time.monotonic() + 600
        status, _, err, timed_out = self._exec(secrets.token_hex(8), command, deadline, stdin, None)
        if status != 0 or timed_out:
            raise InfrastructureError(
                f"{command!r} on {self.address} failed: "
                f"{'timed out' if timed_out else err.decode('utf-8', 'replace').strip() or status}"
            )


class _ChannelReader:
    """Collects an exec channel's output and streams it, decoded, to a callback."""

    def __init__(self, on_output: Optional[OutputCallback]) -> None:
        self.on_output = on_output
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace")
                          for name in ("stdout", "stderr")}

    def drain(self, channel: paramiko.Channel) -> None:
        while channel.recv_ready():
            data = channel.recv(65536)
            if not data:
                break
            self._emit("stdout", data, self._out)
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(65536)
            if not data:
                break
            self._emit("stderr", data, self._err)

    def _emit(self, name: str, data: bytes, sink: list[bytes]) -> None:
        sink.append(data)
        if self.on_output is not None:
            text = self._decoders[name].decode(data)
            if text:
                self.on_output(name, text)

    def stdout(self) -> bytes:
        return b"".join(self._out)

    def stderr(self) -> bytes:
        return b"".join(self._err)


def _start_stdin_writer(channel: paramiko.Channel, data: Optional[bytes]) -> threading.Thread:
    """Send ``data`` then EOF on the channel from a thread, so output is read meanwhile."""

    def write() -> None:
        try:
            if data:
                channel.sendall(data)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    thread = threading.Thread(target=write, name="ssh-stdin", daemon=True)
    thread.start()
    return thread
