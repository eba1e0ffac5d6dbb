"""The Target interface shared by every kind of machine under test."""

from __future__ import annotations

import abc
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..command import CommandResult, OutputCallback

log = logging.getLogger(__name__)

__all__ = ["CommandResult", "OutputCallback", "Target", "TargetFacts"]

@dataclass
class TargetFacts:
    """Facts about a target recorded with every result (JUnit properties)."""

    target: str
    kind: str
    arch: str
    kernel_release: str = ""
    accelerator: str = ""
    qemu_version: str = ""
    image_hash: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def as_properties(self) -> dict[str, str]:
        props = {
            "target": self.target,
            "target_kind": self.kind,
            "arch": self.arch,
            "kernel_release": self.kernel_release,
            "accelerator": self.accelerator,
            "qemu_version": self.qemu_version,
            "image_hash": self.image_hash,
        }
        props.update(self.extra)
        return {k: v for k, v in props.items() if v}


# Reads /dev/kmsg without blocking and prints "seq<TAB>message" per record after a cursor.
_KMSG_READER = r"""
import os, sys
after = int(sys.argv[1])
fd = os.open('/dev/kmsg', os.O_RDONLY | os.O_NONBLOCK)
out = []
last = after
while True:
    try:
        rec = os.read(fd, 8192)
    except BlockingIOError:
        break
    except OSError:
        continue
    head, _, msg = rec.decode('utf-8', 'replace').partition(';')
    parts = head.split(',')
    seq = int(parts[1])
    last = max(last, seq)
    if seq > after:
        out.append('%d\t%s' % (seq, msg.split('\n', 1)[0]))
sys.stdout.write('\n'.join(out) + ('\n' if out else ''))
sys.stdout.write('#cursor %d\n' % last)
"""


class Target(abc.ABC):
    """A machine under test: run commands, move files, read the kernel log, describe itself.

    Lifecycle: ``start()`` (boot or connect), any number of ``run``/``put``/``get``, ``close()``.
    Targets are context managers; ``close()`` is idempotent and must leave no process behind.

    Commands run in the target's private working directory (0700, made at start, removed at close), and a
    relative path given to ``put``/``get`` means a file in it: nothing goes to a shared path such as /tmp.
    """

    spec: str
    kind: str
    arch: str

    @abc.abstractmethod
    def start(self) -> None:
        """Boot or connect; raise an InfrastructureError with a one-line reason on failure."""

    @abc.abstractmethod
    def run(
        self,
        command: str,
        timeout: float = 60.0,
        *,
        stdin: Optional[bytes] = None,
        on_output: Optional[OutputCallback] = None,
    ) -> CommandResult:
        """Run a shell command; a command past ``timeout`` is killed and reported with ``timed_out``."""

    @abc.abstractmethod
    def put(self, local: Path, remote: str, mode: Optional[int] = None) -> None:
        """Copy a local file to the target, byte-exact."""

    @abc.abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the target, byte-exact."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release everything (connections, processes); safe to call twice."""

    def facts(self) -> TargetFacts:
        """Describe the target; subclasses add accelerator, QEMU version, image hash."""
        release = self.run("uname -r", timeout=30).stdout.strip()
        return TargetFacts(target=self.spec, kind=self.kind, arch=self.arch, kernel_release=release)

    def has_command(self, name: str) -> bool:
        return self.run(f"command -v {shlex.quote(name)} >/dev/null 2>&1", timeout=30).exit_status == 0

    def dmesg_cursor(self) -> int:
        """Return the sequence number of the newest kernel log record."""
        return self._read_kmsg(-1)[1]

    def dmesg_since(self, cursor: int) -> str:
        """Return kernel log lines newer than ``cursor`` (from ``dmesg_cursor``)."""
        return self._read_kmsg(cursor)[0]

    def dmesg_read(self, after: int) -> tuple[str, int]:
        """Return the kernel log lines newer than ``after`` and the new cursor, in one round trip."""
        if type(self).dmesg_since is Target.dmesg_since:
            return self._read_kmsg(after)
        return self.dmesg_since(after), self.dmesg_cursor()

    def _read_kmsg(self, after: int) -> tuple[str, int]:
        cmd = f"python3 -c {shlex.quote(_KMSG_READER)} {after}"
        result = self.run(cmd, timeout=60)
        if result.exit_status != 0:
            log.warning("cannot read /dev/kmsg on %s: %s", self.spec, result.stderr.strip())
            return "", max(after, 0)
        lines = result.stdout.splitlines()
        cursor = after
        text = []
        for line in lines:
            if line.startswith("#cursor "):
                cursor = int(line.split()[1])
            else:
                text.append(line.split("\t", 1)[-1])
        return "\n".join(text), cursor

    def __enter__(self) -> "Target":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
