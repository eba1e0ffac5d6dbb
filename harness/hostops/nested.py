"""A QEMU guest run ON a remote s390x host (accel=kvm there), reached through the host's SSH connection.

For fast non-PV selftests inside a guest while PV scenarios run on the host itself. The guest
image's kernel and initrd are copied to a directory on the host, QEMU is started there detached
(its console goes to a file), SSH is forwarded from the host's 127.0.0.1:<port>, and the harness
reaches that port through a ``direct-tcpip`` channel of the existing connection. The QEMU command
line is the one ``QemuTarget.qemu_argv`` builds, with the console moved from stdio to a file.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import paramiko

from ..errors import BootError, InfrastructureError
from ..targets.base import CommandResult, OutputCallback, Target, TargetFacts
from ..targets.spec import TargetOptions
from ..transport.ssh import SshClient

log = logging.getLogger(__name__)

REMOTE_BASE = "/var/tmp/kvmh-nested"
READY_MARK = "KVMH-READY"
ERROR_MARK = "KVMH-ERROR"

# One command telling what the host offers for a nested guest.
_NESTED_PROBE = ("echo arch=$(uname -m); [ -c /dev/kvm ] && echo kvm=yes || echo kvm=no; "
                 "echo qemu=$(command -v {binary} 2>/dev/null); echo cpus=$(nproc 2>/dev/null || echo 1)")


@dataclass(frozen=True)
class RemoteImage:
    """Guest image files as they lie on the remote host (what ``QemuTarget.qemu_argv`` reads)."""

    kernel: str
    initrd: str


@dataclass(frozen=True)
class NestedHostInfo:
    arch: str
    kvm: bool
    qemu: str
    cpus: int


def probe_nested(host: Target, binary: str = "qemu-system-s390x") -> NestedHostInfo:
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
        return "host has no qemu-system-s390x (install qemu-system-s390x there)"
    return None


def nested_qemu_argv(arch: str, options: TargetOptions, remote_dir: str, port: int, host_cpus: int,
                     binary: str = "qemu-system-s390x") -> list[str]:
    """QemuTarget's command line for a guest on the host: accel kvm, console in ``remote_dir/console.log``."""
    from ..targets.qemu import QemuTarget

    image = RemoteImage(kernel=f"{remote_dir}/vmlinuz", initrd=f"{remote_dir}/initrd.img")
    shaped = QemuTarget(arch, options, image=image)
    argv = shaped.qemu_argv(binary, "kvm", port)
    out: list[str] = []
    for i, word in enumerate(argv):
        previous = argv[i - 1] if i else ""
        if previous == "-chardev" and word.startswith("stdio,"):
            word = f"file,id=con0,path={remote_dir}/console.log"
        elif previous == "-smp":
            word = str(shaped.arch_spec.smp("kvm", options.smp, host_cpus))
        out.append(word)
    return out


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

    def skip_reason(self) -> Optional[str]:
        return nested_skip_reason(probe_nested(self.host), self.arch)

    def start(self) -> None:
        if self.owns_host and not self.host.connected():
            self.host.start()
        if self.image is None:
            from guest_images import build_image

            self.image = build_image(self.arch, kernel=self.options.kernel, modules_dir=self.options.modules_dir)
        info = probe_nested(self.host)
        reason = nested_skip_reason(info, self.arch)
        if reason:
            raise InfrastructureError(f"cannot run a nested guest on {self.host.spec}: {reason}")
        deadline = time.monotonic() + self.options.boot_timeout
        self.remote_dir = self.host.run(f"mkdir -p {REMOTE_BASE} && mktemp -d {REMOTE_BASE}/g.XXXXXX",
                                        timeout=60).stdout.strip()
        if not self.remote_dir:
            raise InfrastructureError(f"cannot create a directory for the nested guest under {REMOTE_BASE}")
        try:
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

    def _launch(self) -> None:
        line = shlex.join(self.argv)
        command = (f"cd {shlex.quote(self.remote_dir)} && echo {shlex.quote(line)} > qemu-cmdline.txt && "
                   f"(setsid {line} </dev/null >qemu.log 2>&1 & echo $! > qemu.pid)")
        result = self.host.run(command, timeout=60)
        if not result.ok:
            raise InfrastructureError(f"starting QEMU on {self.host.spec} failed: {result.stderr.strip()}")

    def _wait_ready(self, deadline: float) -> None:
        console = f"{self.remote_dir}/console.log"
        while time.monotonic() < deadline:
            state = self.host.run(
                f"grep -Eo '{READY_MARK}|{ERROR_MARK}.*' {shlex.quote(console)} 2>/dev/null | head -n1; "
                f"kill -0 $(cat {shlex.quote(self.remote_dir)}/qemu.pid) 2>/dev/null || echo QEMU-GONE", timeout=60)
            text = state.stdout
            if READY_MARK in text:
                return
            if ERROR_MARK in text or "QEMU-GONE" in text:
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

    def close(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None
        if self.remote_dir:
            quoted = shlex.quote(self.remote_dir)
            try:
                self.host.run(f"p=$(cat {quoted}/qemu.pid 2>/dev/null) && {{ kill -TERM -- -$p 2>/dev/null; "
                              f"sleep 2; kill -KILL -- -$p 2>/dev/null; }}; rm -rf -- {quoted}", timeout=60)
            except InfrastructureError as err:
                log.warning("could not stop the nested guest on %s: %s", self.host.spec, err)
            self.remote_dir = ""
        if self.owns_host:
            self.host.close()
