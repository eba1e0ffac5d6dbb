"""The reference model as a target: scenarios are evaluated by ``harness.kvm.model``, no kernel runs.

It presents a PV-capable s390x host with Linux 6.12 (``harness.kvm.caps.model_host_caps``).  Results on it
check the scenarios and the model against each other; they say nothing about a kernel, and the suites
label them as model results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import InfrastructureError
from ..kvm.caps import Capabilities, model_host_caps
from .base import CommandResult, OutputCallback, Target, TargetFacts

NO_COMMANDS = ("the model target runs no commands: it evaluates KVM scenarios with the reference model "
               "(use --kvm-target local, qemu:ARCH or ssh://... for anything else)")


class ModelTarget(Target):
    """A Target whose KVM scenarios are answered by the reference model."""

    kind = "model"

    def __init__(self, spec: str = "model", caps: Optional[Capabilities] = None) -> None:
        self.spec = spec
        self.caps = caps or model_host_caps()
        self.arch = self.caps.arch
        self._started = False

    def start(self) -> None:
        self._started = True

    def close(self) -> None:
        self._started = False

    def run(self, command: str, timeout: float = 60.0, *, stdin: Optional[bytes] = None,
            on_output: Optional[OutputCallback] = None) -> CommandResult:
        raise InfrastructureError(f"{NO_COMMANDS}; asked to run {command!r}")

    def put(self, local: Path, remote: str, mode: Optional[int] = None) -> None:
        raise InfrastructureError(f"{NO_COMMANDS}; asked to copy {local} to {remote}")

    def get(self, remote: str, local: Path) -> None:
        raise InfrastructureError(f"{NO_COMMANDS}; asked to fetch {remote}")

    def has_command(self, name: str) -> bool:
        return False

    def dmesg_cursor(self) -> int:
        return 0

    def dmesg_since(self, cursor: int) -> str:
        return ""

    def facts(self) -> TargetFacts:
        return TargetFacts(
            target=self.spec,
            kind=self.kind,
            arch=self.arch,
            kernel_release="model",
            extra={"results": "reference model, not a kernel",
                   "model_host": self.caps.summary()},
        )
