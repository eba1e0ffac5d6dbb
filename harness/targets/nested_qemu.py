"""A QEMU guest run ON a remote s390x host (accel=kvm there), reached through the host's SSH connection.

For fast non-PV selftests inside a guest while PV scenarios run on the host itself. The guest
image's kernel and initrd are copied to a new directory (``mktemp -d``, mode 0700) inside the host
connection's private working directory, SSH is forwarded from the host's 127.0.0.1:<port>, and the
harness reaches that port through a ``direct-tcpip`` channel of the existing connection. The QEMU
command line is the one ``QemuTarget.qemu_argv`` builds, with the console moved from stdio to a file.

QEMU runs under a watchdog (``harness.transport.keeper`` ``watch``) in the foreground of its own SSH
channel: the watchdog is QEMU's parent, so it signals QEMU only while QEMU cannot have been reaped
(no pid file is ever read back to pick a process to signal), and it ends QEMU (SIGTERM, SIGKILL after
``STOP_GRACE_S``) when the channel closes, i.e. at ``close()``, when the harness dies or loses the
connection, or when the harness's heartbeats stop for ``REMOTE_SILENCE_S`` (a dead link).  The host
session's keeper reaps the directories of earlier sessions whose keeper is gone, with any QEMU still
running from them.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import paramiko

from ..arch import get_arch
from ..errors import BootError, InfrastructureError
from .base import CommandResult, OutputCallback, Target, TargetFacts
from .qemu_argv import qemu_argv
from .spec import TargetOptions
from ..transport.heartbeat import REMOTE_SILENCE_S, HeldCommand
from ..transport.session import keeper_command
from ..transport.ssh import SshClient

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
"""How long the nested QEMU gets to end after SIGTERM before SIGKILL."""
STOP_BOUND_S = REMOTE_SILENCE_S + STOP_GRACE_S + 5.0
"""After the harness dies or its link does, the nested QEMU is gone within this many seconds."""
READY_MARK = "KVMH-READY"
ERROR_MARK = "KVMH-ERROR"

# One command telling what the host offers for a nested guest.
_NESTED_PROBE = ("echo arch=$(uname -m); [ -c /dev/kvm ] && echo kvm=yes || echo kvm=no; "
                 "echo qemu=$(command -v {binary} 2>/dev/null); echo cpus=$(nproc 2>/dev/null || echo 1)")


@dataclass(frozen=True)
class NestedHostInfo:
    arch: str
    kvm: bool
    qemu: str
    cpus: int


def probe_nested(host: Target, binary: Optional[str] = None) -> NestedHostInfo:
    """What the host offers a nested guest; ``binary`` is its QEMU (default: the s390x guest's)."""
    binary = binary or get_arch("s390x").qemu_binary
    values = dict(line.split("=", 1) for line in host.run(_NESTED_PROBE.format(binary=binary), timeout=60)
                  .stdout.splitlines() if "=" in line)
    cpus = values.get("cpus", "1")
    return NestedHostInfo(arch=values.get("arch", ""), kvm=values.get("kvm") == "yes", qemu=values.get("qemu", ""),
                          cpus=int(cpus) if cpus.isdigit() else 1)


def nested_skip_reason(info: NestedHostInfo, guest_arch: str = "s390x") -> Optional[str]:
    """Why a nested guest cannot run on this host, or None when it can."""
    if info.arch != guest_arch:
        return f"host is {info.arch or 'of unknown architecture'}, a nested {guest_arch} guest needs {guest_arch}"
    if not info.kvm:
        return "host has no /dev/kvm"
    if not info.qemu:
        spec = get_arch(guest_arch)
        return f"host has no {spec.qemu_binary} (install {spec.qemu_package} there)"
    return None


def nested_qemu_argv(arch: str, options: TargetOptions, remote_dir: str, port: int, host_cpus: int,
                     binary: Optional[str] = None) -> list[str]:
    """The guest's command line on the host: accel kvm, console in ``remote_dir/console.log``."""
    spec = get_arch(arch)
    return qemu_argv(spec, binary=binary or spec.qemu_binary, accelerator="kvm",
                     kernel=f"{remote_dir}/vmlinuz",
                     initrd=f"{remote_dir}/initrd.img", port=port, host_cpus=options.guest_cpus_of(host_cpus),
                     memory_mb=options.memory_mb, smp=options.smp, console_file=f"{remote_dir}/console.log",
                     extra_cmdline=options.extra_cmdline)


class _ChannelSSHClient(paramiko.SSHClient):
    """A paramiko client whose TCP connection is a direct-tcpip channel of another SSH connection."""

    def __init__(self, opener: Any) -> None:
        super().__init__()
        self._opener = opener

    def connect(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs["sock"] = self._opener()
        super().connect(*args, **kwargs)


class ForwardedSshClient(SshClient):
    """SshClient that reaches ``127.0.0.1:port`` of the remote host through ``host.open_channel``."""

    def __init__(self, host: Any, port: int, key_file: Path, host_key_pub: str) -> None:
        super().__init__("127.0.0.1", port, "root", key_file=key_file, host_keys=[host_key_pub])
        self._host = host

    def _new_client(self) -> paramiko.SSHClient:
        plain = super()._new_client()
        client = _ChannelSSHClient(lambda: self._host.open_channel("127.0.0.1", self.port))
        for name, keys in plain.get_host_keys().items():
            for key_type, key in keys.items():
                client.get_host_keys().add(name, key_type, key)
        client.set_missing_host_key_policy(getattr(plain, "_policy", paramiko.RejectPolicy()))
        return client


class NestedQemuTarget(Target):
    """A guest of the harness's image, run by QEMU with KVM on the host behind ``host`` (an SshHostTarget)."""

    kind = "nested-qemu"

    def __init__(self, host: Any, image: Any, options: Optional[TargetOptions] = None, *,
                 arch: str = "s390x", owns_host: bool = False) -> None:
        self.host = host
        self.owns_host = owns_host
        self.image = image
        self.options = options or TargetOptions()
        self.arch = arch
        self.spec = f"{host.spec}+qemu:{arch}"
        self.remote_dir = ""
        self.port = 0
        self.argv: list[str] = []
        self.ssh: Optional[ForwardedSshClient] = None
        self.watchdog: Optional[HeldCommand] = None
        self.qemu_pid = 0

    def skip_reason(self) -> Optional[str]:
        return nested_skip_reason(probe_nested(self.host, get_arch(self.arch).qemu_binary), self.arch)

    def start(self) -> None:
        if self.owns_host and not self.host.connected():
            self.host.start()
        info = probe_nested(self.host, get_arch(self.arch).qemu_binary)
        reason = nested_skip_reason(info, self.arch)
        if reason:
            raise InfrastructureError(f"cannot run a nested guest on {self.host.spec}: {reason}")
        if self.image is None:
            from guest_images import build_image

            self.image = build_image(self.arch, kernel=self.options.kernel, modules_dir=self.options.modules_dir)
        deadline = time.monotonic() + self.options.boot_timeout
        try:
            self.remote_dir = self._make_dir()
            self.host.put(Path(self.image.kernel), f"{self.remote_dir}/vmlinuz")
            self.host.put(Path(self.image.initrd), f"{self.remote_dir}/initrd.img")
            self.port = self._free_remote_port()
            self.argv = nested_qemu_argv(self.arch, self.options, self.remote_dir, self.port, info.cpus,
                                         info.qemu)
            self._launch()
            self._wait_ready(deadline)
            self.ssh = ForwardedSshClient(self.host, self.port, Path(self.image.ssh_key), self.image.host_key_pub)
            self.ssh.connect(deadline)
        except BaseException:
            self.close()
            raise

    def _free_remote_port(self) -> int:
        script = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
        out = self.host.run(f"python3 -c {shlex.quote(script)}", timeout=60).stdout.strip()
        if not out.isdigit():
            raise InfrastructureError(f"cannot pick a free port on {self.host.spec} (python3 missing?)")
        return int(out)

    def _make_dir(self) -> str:
        """A new private directory for this guest inside the host connection's private working directory."""
        workdir = getattr(self.host, "workdir", None)
        if not callable(workdir) or not callable(getattr(self.host, "start_held", None)):
            raise InfrastructureError(f"a nested guest needs an ssh:// host, not {self.host.spec}")
        result = self.host.run(f"umask 077 && mktemp -d {shlex.quote(workdir())}/nested.XXXXXX", timeout=60)
        path = result.stdout.strip()
        if not result.ok or not path.startswith("/"):
            raise InfrastructureError(f"cannot create a directory for the nested guest on {self.host.spec}: "
                                      f"{result.stderr.strip() or result.exit_status}")
        return path

    def _launch(self) -> None:
        """Start QEMU under its watchdog, on a channel of its own, from the guest's private directory."""
        line = shlex.join(self.argv)
        quoted_dir = shlex.quote(self.remote_dir)
        written = self.host.run(f"echo {shlex.quote(line)} > {quoted_dir}/qemu-cmdline.txt", timeout=60)
        if not written.ok:
            raise InfrastructureError(f"cannot write the QEMU command line on {self.host.spec}: "
                                      f"{written.stderr.strip()}")
        command = f"cd -- {quoted_dir} || exit 125\n" + keeper_command(
            f"watch {REMOTE_SILENCE_S:g} {STOP_GRACE_S:g} -- {line}")
        self.watchdog = self.host.start_held(command, "the nested QEMU's watchdog")
        first = self.watchdog.read_line(time.monotonic() + 60)
        word, _, pid = first.partition(" ")
        if word != "KVMH-CHILD" or not pid.strip().isdigit():
            raise InfrastructureError(f"starting QEMU on {self.host.spec} failed: {first.strip()[:300]}")
        self.qemu_pid = int(pid)
        log.info("nested QEMU on %s: pid %d in %s", self.host.spec, self.qemu_pid, self.remote_dir)

    def _wait_ready(self, deadline: float) -> None:
        console = f"{self.remote_dir}/console.log"
        while time.monotonic() < deadline:
            text = self.host.run(f"grep -Eo '{READY_MARK}|{ERROR_MARK}.*' {shlex.quote(console)} 2>/dev/null "
                                 f"| head -n1", timeout=60).stdout
            if READY_MARK in text:
                return
            if ERROR_MARK in text or self.watchdog is None or not self.watchdog.alive:
                tail = self.host.run(f"tail -n 5 {shlex.quote(self.remote_dir)}/qemu.log {shlex.quote(console)}",
                                     timeout=30).stdout.strip().replace("\n", " | ")
                raise BootError(f"nested guest on {self.host.spec} did not come up: {tail[-300:]}")
            time.sleep(2.0)
        raise BootError(f"nested guest on {self.host.spec} not ready within {self.options.boot_timeout:.0f} s")

    def run(self, command: str, timeout: float = 60.0, *, stdin: Optional[bytes] = None,
            on_output: Optional[OutputCallback] = None) -> CommandResult:
        if self.ssh is None:
            raise InfrastructureError(f"{self.spec} is not started")
        return self.ssh.run(command, timeout, stdin=stdin, on_output=on_output)

    def put(self, local: Path, remote: str, mode: Optional[int] = None) -> None:
        if self.ssh is None:
            raise InfrastructureError(f"{self.spec} is not started")
        self.ssh.put(local, remote, mode)

    def get(self, remote: str, local: Path) -> None:
        if self.ssh is None:
            raise InfrastructureError(f"{self.spec} is not started")
        self.ssh.get(remote, local)

    def facts(self) -> TargetFacts:
        facts = super().facts()
        facts.accelerator = "kvm (nested on the host)"
        facts.extra["host"] = self.host.spec
        return facts

    def workdir(self) -> str:
        """The private working directory of this connection inside the nested guest."""
        if self.ssh is None:
            raise InfrastructureError(f"{self.spec} is not started")
        return self.ssh.workdir

    def close(self) -> None:
        """Disconnect, end QEMU through its watchdog, remove the guest's directory; idempotent."""
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None
        if self.watchdog is not None:
            status = self.watchdog.stop(STOP_GRACE_S + 15.0)
            if status is None:
                log.warning("the nested QEMU's watchdog on %s did not confirm QEMU's end (the host session's "
                            "keeper ends it with the connection)", self.host.spec)
            else:
                log.info("nested QEMU on %s ended: %s", self.host.spec, self.watchdog.output.strip()[-200:])
            self.watchdog = None
        if self.remote_dir:
            if getattr(self.host, "connected", lambda: True)():
                try:
                    self.host.run(f"rm -rf -- {shlex.quote(self.remote_dir)}", timeout=60)
                except InfrastructureError as err:
                    log.warning("could not remove %s on %s: %s", self.remote_dir, self.host.spec, err)
            self.remote_dir = ""
        if self.owns_host:
            self.host.close()
