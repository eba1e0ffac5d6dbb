"""Parse target spec strings (``qemu:s390x``, ``qemu:x86_64``, ``local``, ``model``, ``ssh://user@host[:port]``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from ..arch import canonical
from ..errors import UsageError

DEFAULT_TARGET = "qemu:s390x"
QEMU_ARCHES = ("s390x", "x86_64")


@dataclass
class TargetOptions:
    """Everything a user can say about how to bring a target up."""

    kernel: Optional[Path] = None
    modules_dir: Optional[Path] = None
    artifacts_dir: Optional[Path] = None
    accel: str = "auto"
    memory_mb: Optional[int] = None
    smp: Optional[int] = None
    boot_timeout: float = 300.0
    extra_cmdline: str = ""
    ssh_key: Optional[Path] = None
    known_hosts: Optional[Path] = None
    accept_new_host_key: bool = False
    guests_sharing_host: int = 1  # parallel workers, each booting its own guest on the same host

    def guest_cpus_of(self, host_cpus: int) -> int:
        """The host CPUs one guest may use: all of them, or its fair share when workers boot several guests."""
        return max(1, host_cpus // max(1, self.guests_sharing_host))


@dataclass(frozen=True)
class TargetSpec:
    """A parsed target spec."""

    kind: str  # qemu | local | model | ssh | nested (a QEMU guest run on an ssh host)
    arch: str = ""
    user: str = "root"
    host: str = ""
    port: int = 22

    @property
    def text(self) -> str:
        if self.kind == "qemu":
            return f"qemu:{self.arch}"
        if self.kind == "ssh":
            return f"ssh://{self.user}@{self.host}:{self.port}"
        if self.kind == "nested":
            return f"ssh://{self.user}@{self.host}:{self.port}/qemu:{self.arch}"
        return self.kind


def parse_target_spec(spec: str) -> TargetSpec:
    """Parse a spec string, raising a UsageError that lists the accepted forms."""
    spec = (spec or DEFAULT_TARGET).strip()
    accepted = "use qemu:s390x, qemu:x86_64, local, model, ssh://user@host[:port] or ssh://user@host[:port]/qemu"
    if spec in ("local", "model"):
        return TargetSpec(kind=spec)
    if spec.startswith("qemu"):
        arch = canonical(spec.partition(":")[2] or "s390x")
        if arch not in QEMU_ARCHES:
            raise UsageError(f"unknown QEMU architecture {arch!r} in target {spec!r}: {accepted}")
        return TargetSpec(kind="qemu", arch=arch)
    if spec.startswith("ssh://"):
        url = urlsplit(spec)
        if not url.hostname:
            raise UsageError(f"target {spec!r} names no host: {accepted}")
        try:
            port = url.port or 22
        except ValueError:
            raise UsageError(f"target {spec!r} has a bad port: {accepted}") from None
        path = url.path.strip("/")
        if path:
            kind, _, arch = path.partition(":")
            if kind != "qemu" or (arch or "s390x") not in QEMU_ARCHES:
                raise UsageError(f"target {spec!r}: after the host only /qemu or /qemu:ARCH may follow: {accepted}")
            return TargetSpec(kind="nested", arch=arch or "s390x", user=url.username or "root", host=url.hostname,
                              port=port)
        return TargetSpec(kind="ssh", user=url.username or "root", host=url.hostname, port=port)
    raise UsageError(f"unknown target {spec!r}: {accepted}")
