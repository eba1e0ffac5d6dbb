"""Under pytest-xdist, what each worker learnt about its target reaches the controller.

The controller writes the JUnit file and prints the summary, but only workers start targets. At its end a
worker puts into its ``workeroutput``: the testsuite properties (target facts, model label, stages), the
probed capabilities the "0 of N ran" headline needs, an infrastructure failure, kernel splats printed
outside any test, and its stage timeline. The controller merges them as the workers go down, before its own
session finishes.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, Optional

import pytest

from ..parallel import worker_id
from ..session import find_holder
from ..stages import StageRecord
from .. import stages
from .junit_hook import WORKER_PROPERTIES, junit_writer

OUTPUT_KEY = "kvm_harness"
CAPS_FIELDS = ("arch", "kernel_release", "has_kvm", "has_sie", "source")


@dataclasses.dataclass
class WorkersSeen:
    """What the controller learnt from its workers."""

    errors: list[str] = dataclasses.field(default_factory=list)
    session_splats: list[Any] = dataclasses.field(default_factory=list)
    caps: Optional[Any] = None
    stages: dict[str, list[StageRecord]] = dataclasses.field(default_factory=dict)  # by worker id


WORKERS_KEY = pytest.StashKey[WorkersSeen]()


def in_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker process."""
    return worker_id(config) is not None


def export(config: pytest.Config, caps: Optional[Any]) -> None:
    """In a worker: put the target's facts for the controller into ``workeroutput``."""
    if not in_worker(config):
        return
    holder = find_holder(config)
    if holder is None or (holder.target is None and holder.error is None):
        return  # this worker never used a target (a plain pytest run with the plugin loaded)
    error = holder.error
    splats = getattr(config, "_kvm_session_splats", [])
    config.workeroutput[OUTPUT_KEY] = {  # type: ignore[attr-defined]
        "stages": [dataclasses.astuple(r) for r in stages.records(getattr(config, "_kvm_stage_mark", 0))],
        "caps": {name: getattr(caps, name, None) for name in CAPS_FIELDS} if caps is not None else None,
        "error": str(error) if error is not None else None,
        "session_splats": [[s.kind, s.fingerprint] for s in splats],
    }


def seen(config: pytest.Config) -> Optional[WorkersSeen]:
    """In the controller: what its workers reported, or None when no worker reported (not an xdist run)."""
    return config.stash.get(WORKERS_KEY, None)


class ControllerRelay:
    """Registered in the xdist controller: merges each worker's output as the worker goes down."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", None) or {}
        xml = junit_writer(self.config)
        if xml is not None:
            present = {(name, value) for name, value in getattr(xml, "global_properties", [])}
            for name, value in output.get(WORKER_PROPERTIES, []):
                if (name, value) not in present:
                    xml.add_global_property(name, value)
                    present.add((name, value))
        ours = output.get(OUTPUT_KEY)
        if ours is None and not error:
            return
        ours = ours or {}
        state = self.config.stash.setdefault(WORKERS_KEY, WorkersSeen())
        worker = str((getattr(node, "workerinput", None) or {}).get("workerid", f"gw{len(state.stages)}"))
        state.stages[worker] = [StageRecord(*r) for r in ours.get("stages", [])]
        if ours.get("error"):
            state.errors.append(ours["error"])
        state.session_splats += [SimpleNamespace(kind=k, fingerprint=f) for k, f in ours.get("session_splats", [])]
        caps = ours.get("caps")
        if caps is not None and (state.caps is None or (state.caps.has_kvm and not caps.get("has_kvm"))):
            state.caps = SimpleNamespace(**caps)  # the headline explains the target that could not run
        if error:
            state.errors.append(f"xdist worker {worker} crashed: {str(error)[:300]}")
