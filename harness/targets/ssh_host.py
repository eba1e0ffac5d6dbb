"""A real machine reached over SSH (``ssh://user@host[:port]``): commands, files, facts, reconnects.

Authentication uses ``options.ssh_key`` when given, else the SSH agent and the default keys
(~/.ssh/id_*). The host key is checked against ``options.known_hosts`` (default ~/.ssh/known_hosts):
an unknown key is refused unless ``options.accept_new_host_key`` (then it is appended to the file);
a key that differs from the known one is always refused. Keepalives detect a dead connection, and
``reconnect(deadline)`` waits for the host to answer again after a reboot.
"""

from __future__ import annotations

import logging
import select
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Optional

import paramiko

from ..errors import InfrastructureError, UsageError
from ..hostops.known_hosts import (
    HostKeyError,
    VerifyPolicy,
    default_known_hosts,
    host_entry_name,
    load_known_hosts,
    mismatch_error,
)
from .base import CommandResult, OutputCallback, Target, TargetFacts
from .spec import TargetOptions, TargetSpec

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0
KEEPALIVE_S = 15
_PID_MARK = b"KVMH-PID "
_CHUNK = 1 << 16


class HostUnreachable(InfrastructureError):
    """No SSH session could be opened to the host (network, refused, handshake)."""


class AuthFailed(InfrastructureError):
    """The host refused every key offered."""


class SshHostTarget(Target):
    """A host reached over SSH. ``start()`` connects; nothing is booted."""

    kind = "ssh"

    def __init__(self, spec: TargetSpec, options: Optional[TargetOptions] = None, *,
                 connect_timeout: float = CONNECT_TIMEOUT_S, keepalive_s: int = KEEPALIVE_S) -> None:
        if spec.kind != "ssh":
            raise UsageError(f"target {spec.text!r} is not an ssh:// target")
        self.target_spec = spec
        self.spec = spec.text
        self.host = spec.host
        self.port = spec.port
        self.user = spec.user
        self.options = options or TargetOptions()
        self.arch = ""
        self.connect_timeout = connect_timeout
        self.keepalive_s = keepalive_s
        self.known_hosts = Path(self.options.known_hosts).expanduser() if self.options.known_hosts \
            else default_known_hosts()
        self._client: Optional[paramiko.SSHClient] = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self._sftp_broken = False
        if self.options.ssh_key is not None and not Path(self.options.ssh_key).expanduser().is_file():
            raise UsageError(f"SSH key {self.options.ssh_key} does not exist: pass an existing private key "
                             f"with --ssh-key, or omit it to use ssh-agent and ~/.ssh/id_*")

    # ------------------------------------------------------------ connection

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        if self._client is None:
            self._client = self._connect_once(self.connect_timeout)
        if not self.arch:
            self.arch = self.run("uname -m", timeout=60).stdout.strip()

    def _connect_once(self, timeout: float) -> paramiko.SSHClient:
        """One connection attempt; every failure is a one-line InfrastructureError subclass."""
        client = paramiko.SSHClient()
        load_known_hosts(client, self.known_hosts)
        client.set_missing_host_key_policy(VerifyPolicy(self.known_hosts, self.options.accept_new_host_key))
        key = str(Path(self.options.ssh_key).expanduser()) if self.options.ssh_key else None
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=key,
                           allow_agent=key is None, look_for_keys=key is None, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout)
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as err:
            client.close()
            raise mismatch_error(host_entry_name(self.host, self.port), err.key, err.expected_key,
                                 self.known_hosts) from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise AuthFailed(f"SSH key {key} is encrypted: load it into ssh-agent (ssh-add) and omit "
                             f"--ssh-key") from None
        except paramiko.AuthenticationException as err:
            client.close()
            offered = f"key {key}" if key else "ssh-agent and ~/.ssh/id_* keys"
            raise AuthFailed(f"authentication as {self.user} to {self.address} failed with {offered} "
                             f"({err}): pass --ssh-key with a key in {self.user}'s authorized_keys") from None
        except socket.gaierror as err:
            client.close()
            raise HostUnreachable(f"cannot reach {self.address}: unknown host ({err.strerror or err})") from None
        except (OSError, EOFError, paramiko.SSHException) as err:
            client.close()
            raise HostUnreachable(f"cannot reach {self.address}: {_reason(err)}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(self.keepalive_s)
        return client

    def reconnect(self, deadline: float) -> None:
        """Drop the connection and connect again, retrying until ``deadline`` (``time.monotonic()``).

        Only reachability failures are retried; a host key or authentication problem is raised at once.
        """
        self._drop()
        last = "no attempt made"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HostUnreachable(f"cannot reach {self.address}: no SSH answer before the deadline "
                                      f"(last error: {last})")
            try:
                self._client = self._connect_once(max(1.0, min(self.connect_timeout, remaining)))
                return
            except HostUnreachable as err:
                last = str(err).split(": ", 1)[-1]
                log.debug("%s not reachable yet: %s", self.address, last)
            time.sleep(max(0.0, min(2.0, deadline - time.monotonic())))

    def connected(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def _transport(self) -> paramiko.Transport:
        if self._client is None:
            self.start()
        assert self._client is not None
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise HostUnreachable(f"cannot reach {self.address}: the SSH connection was lost")
        return transport

    def open_channel(self, host: str, port: int, timeout: float = 30.0) -> paramiko.Channel:
        """A ``direct-tcpip`` channel to ``host:port`` as seen from the remote machine."""
        try:
            return self._transport().open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as err:
            raise InfrastructureError(f"{self.address} could not forward to {host}:{port}: {err}") from None

    def _drop(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # noqa: BLE001 - the connection may be gone already
                pass
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        self._drop()

    # ------------------------------------------------------------ commands

    def run(
        self,
        command: str,
        timeout: float = 60.0,
        *,
        stdin: Optional[bytes] = None,
        on_output: Optional[OutputCallback] = None,
    ) -> CommandResult:
        start = time.monotonic()
        transport = self._transport()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            # The login shell prints its PID first, so a command past its timeout can be killed.
            chan.exec_command(f"echo KVMH-PID $$ >&2; {command}")
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise HostUnreachable(f"cannot reach {self.address}: {_reason(err)}") from None
        writer = None
        if stdin is not None:
            writer = threading.Thread(target=_feed, args=(chan, stdin), daemon=True)
            writer.start()
        else:
            chan.shutdown_write()
        out, err, timed_out, pid = _collect(chan, start + timeout, on_output)
        if timed_out:
            self._kill(pid)
        status = -9 if timed_out else (chan.recv_exit_status() if chan.exit_status_ready() else -1)
        lost = not timed_out and not chan.exit_status_ready()
        chan.close()
        if writer is not None:
            writer.join(timeout=5)
        if lost:
            raise HostUnreachable(f"cannot reach {self.address}: connection lost while running "
                                  f"{command.splitlines()[0][:60]!r}")
        return CommandResult(command=command, exit_status=status, stdout=out.decode("utf-8", "replace"),
                             stderr=err.decode("utf-8", "replace"), duration_s=time.monotonic() - start,
                             timed_out=timed_out)

    def _kill(self, pid: Optional[int]) -> None:
        if not pid:
            return
        self.run(f"kill -9 -- -{pid} 2>/dev/null || {{ pkill -9 -P {pid}; kill -9 {pid}; }} 2>/dev/null; true",
                 timeout=30)

    # ------------------------------------------------------------ files

    def _sftp_client(self) -> Optional[paramiko.SFTPClient]:
        if self._sftp is None and not self._sftp_broken:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(self._transport())
            except (paramiko.SSHException, OSError, EOFError) as err:
                log.debug("no SFTP on %s (%s); copying through cat", self.address, err)
                self._sftp_broken = True
        return self._sftp

    def put(self, local: Path, remote: str, mode: Optional[int] = None) -> None:
        sftp = self._sftp_client()
        if sftp is not None:
            try:
                with open(local, "rb") as handle:
                    sftp.putfo(handle, remote, confirm=True)
                if mode is not None:
                    sftp.chmod(remote, mode)
                return
            except OSError as err:
                raise InfrastructureError(f"copying {local} to {self.address}:{remote} failed: "
                                          f"{_reason(err)}") from None
        quoted = shlex.quote(remote)
        chmod = f" && chmod {mode:o} {quoted}" if mode is not None else ""
        result = self.run(f"cat > {quoted}{chmod}", timeout=3600, stdin=Path(local).read_bytes())
        if not result.ok:
            raise InfrastructureError(f"copying {local} to {self.address}:{remote} failed: "
                                      f"{result.stderr.strip() or result.exit_status}")

    def get(self, remote: str, local: Path) -> None:
        sftp = self._sftp_client()
        if sftp is not None:
            try:
                sftp.get(remote, str(local))
                return
            except OSError as err:
                raise InfrastructureError(f"copying {self.address}:{remote} failed: {_reason(err)}") from None
        transport = self._transport()
        chan = transport.open_session(timeout=self.connect_timeout)
        chan.exec_command(f"cat {shlex.quote(remote)}")
        chan.shutdown_write()
        out, err, _timed_out, _pid = _collect(chan, time.monotonic() + 3600, None, expect_pid=False)
        status = chan.recv_exit_status()
        chan.close()
        if status != 0:
            raise InfrastructureError(f"copying {self.address}:{remote} failed: {err.decode().strip() or status}")
        Path(local).write_bytes(out)

    # ------------------------------------------------------------ facts

    def facts(self) -> TargetFacts:
        script = ("uname -m; uname -r; "
                  "echo \"sysinfo=$(grep -E '^(VM00 Control Program|LPAR Name)' /proc/sysinfo 2>/dev/null "
                  "| tr '\\n' ' ')\"; "
                  "echo \"pv=$(cat /sys/firmware/uv/prot_virt_host 2>/dev/null || echo absent)\"; "
                  "[ -e /dev/kvm ] && echo kvm=yes || echo kvm=no")
        lines = self.run(script, timeout=60).stdout.splitlines() + ["", ""]
        values = dict(line.split("=", 1) for line in lines[2:] if "=" in line)
        self.arch = lines[0].strip() or self.arch
        return TargetFacts(
            target=self.spec, kind=self.kind, arch=self.arch, kernel_release=lines[1].strip(),
            accelerator=accelerator_label(values.get("sysinfo", "")),
            extra={"prot_virt_host": values.get("pv", ""), "host_kvm": values.get("kvm", "")},
        )


def accelerator_label(sysinfo: str) -> str:
    """How the host itself runs, from its ``LPAR Name``/``VM00 Control Program`` lines of /proc/sysinfo."""
    text = sysinfo.strip()
    if "z/VM" in text:
        return "n/a (z/VM guest)"
    if "KVM" in text:
        return "n/a (KVM guest)"
    if "LPAR" in text:
        return "n/a (LPAR)"
    return "n/a (bare host)"


def _reason(err: BaseException) -> str:
    if isinstance(err, socket.timeout):
        return "connection timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    try:
        view = memoryview(data)
        for offset in range(0, len(view), _CHUNK):
            chan.sendall(view[offset:offset + _CHUNK])
        chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException) as err:
        log.debug("stdin to the remote command stopped early: %s", err)


def _collect(chan: paramiko.Channel, end: float, on_output: Optional[OutputCallback],
             expect_pid: bool = True) -> tuple[bytes, bytes, bool, Optional[int]]:
    """Read stdout/stderr until the command ends or ``end``; strip the PID line from stderr."""
    out: list[bytes] = []
    err = bytearray()
    pid: Optional[int] = None
    pid_pending = expect_pid
    while True:
        got = False
        while chan.recv_ready():
            chunk = chan.recv(_CHUNK)
            if not chunk:
                break
            got = True
            out.append(chunk)
            if on_output is not None:
                on_output("stdout", chunk.decode("utf-8", "replace"))
        while chan.recv_stderr_ready():
            chunk = chan.recv_stderr(_CHUNK)
            if not chunk:
                break
            got = True
            if pid_pending:
                err.extend(chunk)
                if b"\n" in err:
                    line, _, rest = bytes(err).partition(b"\n")
                    if line.startswith(_PID_MARK):
                        digits = line[len(_PID_MARK):].strip()
                        pid = int(digits) if digits.isdigit() else None
                    else:
                        rest = bytes(err)
                    err = bytearray(rest)
                    pid_pending = False
                    chunk = rest
                else:
                    continue
            else:
                err.extend(chunk)
            if on_output is not None and chunk:
                on_output("stderr", chunk.decode("utf-8", "replace"))
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
        if chan.closed or not chan.get_transport().is_active():
            break
        if time.monotonic() >= end:
            return b"".join(out), bytes(err), True, pid
        if not got:
            select.select([chan], [], [], min(0.2, max(0.0, end - time.monotonic())))
    return b"".join(out), bytes(err), False, pid
