"""A real machine reached over SSH (``ssh://user@host[:port]``): commands, files, facts, reconnects.

Authentication uses ``options.ssh_key`` when given, else the SSH agent and the default keys
(~/.ssh/id_*). The host key is checked against ``options.known_hosts`` (default ~/.ssh/known_hosts):
an unknown key is refused unless ``options.accept_new_host_key`` (then one line is appended to the
file); a key that differs from the known one is always refused. ``reconnect(deadline)`` waits for the
host to answer again after a reboot. Commands, files and process-group kills on timeout come from
``harness.transport.ssh.SshClient``: keepalives that wait for their reply turn a dead link into an
infrastructure error naming the host within ``heartbeat.DETECT_BOUND_S``, and a keeper on the host
(``harness.transport.keeper``) holds the connection's private working directory and ends the
session's processes and that directory when the connection closes, dies or goes silent.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import paramiko

from ..errors import BootError, InfrastructureError, UsageError
from ..transport.known_hosts import (
    VerifyPolicy,
    default_known_hosts,
    host_entry_name,
    load_known_hosts,
    mismatch_error,
)
from ..transport.heartbeat import DEAD_AFTER_S, KEEPALIVE_S, HeldCommand
from ..transport.ssh import SshClient, SshError
from .base import CommandResult, OutputCallback, Target, TargetFacts
from .spec import TargetOptions, TargetSpec

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0


class HostUnreachable(InfrastructureError):
    """No SSH session could be opened to the host (network, refused, handshake)."""


class AuthFailed(SshError):
    """The host refused every key offered."""


class _CheckedSSHClient(paramiko.SSHClient):
    """A paramiko client whose key and authentication failures carry the host target's messages.

    ``owner.last_error`` keeps the reason of the latest failed attempt, for the unreachable message.
    """

    def __init__(self, owner: "HostSshClient") -> None:
        super().__init__()
        self._owner = owner

    def connect(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        owner = self._owner
        if kwargs.get("key_filename"):
            # Loaded here: given a key file, paramiko reports a refused key as the last key-parsing error.
            kwargs["pkey"] = _load_private_key(Path(kwargs.pop("key_filename")))
        try:
            super().connect(*args, **kwargs)
        except paramiko.BadHostKeyException as err:
            raise mismatch_error(host_entry_name(owner.host, owner.port), err.key, err.expected_key,
                                 owner.known_hosts_path) from None
        except paramiko.AuthenticationException as err:
            offered = f"key {owner.key_file}" if owner.key_file else "ssh-agent and ~/.ssh/id_* keys"
            raise AuthFailed(f"authentication as {owner.user} to {owner.host}:{owner.port} failed with {offered} "
                             f"({err}): pass --ssh-key with a key in {owner.user}'s authorized_keys") from None
        except (OSError, EOFError, paramiko.SSHException) as err:
            owner.last_error = _reason(err)
            raise


def _load_private_key(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(str(path))
    except paramiko.PasswordRequiredException:
        raise AuthFailed(f"SSH key {path} is encrypted: load it into ssh-agent (ssh-add) and omit --ssh-key") from None
    except (paramiko.SSHException, OSError, ValueError) as err:
        raise AuthFailed(f"cannot use SSH key {path}: {err}") from None


class HostSshClient(SshClient):
    """SshClient with the host target's known_hosts handling and error messages.

    What it changes: a new host key is appended to known_hosts as one line (the base class rewrites
    the whole file through paramiko); unknown, mismatched keys and refused authentication get
    one-line messages naming the fix; ``connect_once`` fails with "cannot reach host:port: reason";
    ``open_channel`` opens direct-tcpip channels through the connection.
    """

    def __init__(self, host: str, port: int, user: str, *, key_file: Optional[Path], known_hosts: Path,
                 accept_new_host_key: bool, keepalive_s: float = KEEPALIVE_S,
                 dead_after_s: float = DEAD_AFTER_S) -> None:
        super().__init__(host, port, user, key_file=key_file, known_hosts=None,
                         accept_new_host_key=accept_new_host_key, use_agent=key_file is None,
                         look_for_keys=key_file is None, keepalive_s=keepalive_s, dead_after_s=dead_after_s,
                         keeper=True)
        self.known_hosts_path = known_hosts
        self.last_error = ""

    def _new_client(self) -> paramiko.SSHClient:
        client = _CheckedSSHClient(self)
        # Loaded leniently and never saved back over the user's file.
        load_known_hosts(client.get_host_keys(), self.known_hosts_path)
        client.set_missing_host_key_policy(VerifyPolicy(self.known_hosts_path, self.accept_new_host_key))
        return client

    def connect_until(self, deadline: float, *, retry: bool = True) -> None:
        """Connect, retrying reachability failures until ``deadline`` (only once with ``retry=False``)."""
        self.last_error = ""
        attempts = [0]

        def check() -> None:
            attempts[0] += 1
            if not retry and attempts[0] > 1:
                raise HostUnreachable(f"cannot reach {self.host}:{self.port}: {self.last_error or 'no SSH answer'}")

        try:
            with _quiet_paramiko():
                self.connect(deadline, check=check)
        except BootError:
            reason = self.last_error or "no SSH answer"
            raise HostUnreachable(f"cannot reach {self.host}:{self.port}: {reason}") from None

    def open_channel(self, host: str, port: int, timeout: float = 30.0) -> paramiko.Channel:
        """A ``direct-tcpip`` channel to ``host:port`` as the remote machine sees it."""
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            raise HostUnreachable(f"cannot reach {self.host}:{self.port}: the SSH connection was lost")
        try:
            return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except (paramiko.ChannelException, paramiko.SSHException) as err:
            raise InfrastructureError(f"{self.host}:{self.port} could not forward to {host}:{port}: {err}") from None


@contextlib.contextmanager
def _quiet_paramiko() -> Iterator[None]:
    """Silence paramiko's transport thread while connecting: it logs every refused handshake of a
    rebooting host as an ERROR with a traceback, although the caller handles (and retries) it."""
    logger = logging.getLogger("paramiko.transport")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class SshHostTarget(Target):
    """A host reached over SSH. ``start()`` connects; nothing is booted."""

    kind = "ssh"

    def __init__(self, spec: TargetSpec, options: Optional[TargetOptions] = None, *,
                 connect_timeout: float = CONNECT_TIMEOUT_S, keepalive_s: float = KEEPALIVE_S,
                 dead_after_s: float = DEAD_AFTER_S) -> None:
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
        key = Path(self.options.ssh_key).expanduser() if self.options.ssh_key else None
        if key is not None and not key.is_file():
            raise UsageError(f"SSH key {key} does not exist: pass an existing private key with --ssh-key, "
                             f"or omit it to use ssh-agent and ~/.ssh/id_*")
        self.known_hosts = Path(self.options.known_hosts).expanduser() if self.options.known_hosts \
            else default_known_hosts()
        self.client = HostSshClient(self.host, self.port, self.user, key_file=key, known_hosts=self.known_hosts,
                                    accept_new_host_key=self.options.accept_new_host_key, keepalive_s=keepalive_s,
                                    dead_after_s=dead_after_s)

    # ------------------------------------------------------------ connection

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        if not self.client.connected:
            self.client.connect_until(time.monotonic() + self.connect_timeout, retry=False)
        if not self.arch:
            self.arch = self.run("uname -m", timeout=60).stdout.strip()

    def reconnect(self, deadline: float) -> None:
        """Drop the connection and connect again, retrying until ``deadline`` (``time.monotonic()``).

        Only reachability failures are retried; a host key or authentication problem is raised at once.
        """
        self.client.close()
        self.client.connect_until(deadline)

    def connected(self) -> bool:
        return self.client.connected

    def open_channel(self, host: str, port: int, timeout: float = 30.0) -> paramiko.Channel:
        """A ``direct-tcpip`` channel to ``host:port`` as seen from the remote machine."""
        return self.client.open_channel(host, port, timeout)

    def close(self) -> None:
        self.client.close()

    def workdir(self) -> str:
        """This connection's private working directory on the host (removed when the connection ends)."""
        return self.client.workdir

    def start_held(self, command: str, what: str) -> HeldCommand:
        """Run ``command`` on its own channel until :meth:`HeldCommand.stop` (see ``SshClient.start_held``)."""
        if not self.client.connected:
            raise HostUnreachable(f"cannot reach {self.address}: not connected (start() or reconnect() first)")
        return self.client.start_held(command, what)

    # ------------------------------------------------------------ commands and files

    def run(
        self,
        command: str,
        timeout: float = 60.0,
        *,
        stdin: Optional[bytes] = None,
        on_output: Optional[OutputCallback] = None,
    ) -> CommandResult:
        if not self.client.connected:
            raise HostUnreachable(f"cannot reach {self.address}: not connected (start() or reconnect() first)")
        return self.client.run(command, timeout, stdin=stdin, on_output=on_output)

    def put(self, local: Path, remote: str, mode: Optional[int] = None) -> None:
        """Copy a file to the host; a relative ``remote`` lands in the private working directory."""
        self.client.put(local, remote, mode)

    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the host; a relative ``remote`` is read from the private working directory."""
        self.client.get(remote, local)

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
    """A short reason for a failed connection attempt."""
    if isinstance(err, socket.timeout):
        return "connection timed out"
    if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return f"unknown host ({err.strerror or err})"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
