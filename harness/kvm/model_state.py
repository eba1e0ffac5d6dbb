"""The reference model's state and results: VMs, vCPUs, processes, step results and WARN sites.

Shared by the kernel-independent machinery (``model.py``) and the PV state machine (``model_pv.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .matchers import ANY

TWO_GIB = 1 << 31
MIB = 1 << 20
ASSUMED_DEFAULT_LIMIT_OK = 1 << 40  # limits up to 1 TiB are below any s390 host's default (hamax / TASK_SIZE)
PV_INFO_SINCE = (6, 0)
# Without fix 292a7d6fca33 PREPARE replaces a segment-table ASCE and succeeds (rc=1 rrc=42).
SMALL_VM_PIN = {"fix": "292a7d6fca33", "symptom": "PREPARE accepted a VM of ≤ 2 GiB"}

@dataclass
class Vcpu:
    vcpu_id: int
    protected: bool = False
    fd_open: bool = True


@dataclass
class Vm:
    """One KVM VM and its protected configurations."""

    label: str
    protected: bool = False
    generation: int = 0  # counts ENABLEs, to name configurations in the event log
    set_aside: Optional[str] = None
    need_cleanup: List[str] = field(default_factory=list)
    mem_limit: Optional[int] = None  # None: the host's default (large)
    memslots: Dict[int, Tuple[int, int]] = field(default_factory=dict)
    vcpus: Dict[int, Vcpu] = field(default_factory=dict)
    created_vcpus: int = 0
    fd_open: bool = True
    destroyed: bool = False

    def config(self) -> str:
        return f"{self.label}#pv{self.generation}"


@dataclass
class Proc:
    """One process: its handles and VMs."""

    label: str
    handles: Dict[str, Tuple[str, Any]] = field(default_factory=dict)  # name -> (kind, object)
    vms: List[Vm] = field(default_factory=list)


@dataclass
class Result:
    """One step's expected outcome."""

    ret: Any = 0
    errno: Any = None
    rc: Any = None
    rrc: Any = None
    data: Any = None
    error: Any = None
    sim: Any = None  # concrete data the model target reports where ``data`` is ANY
    pin: Any = None  # {"fix", "symptom"}: the upstream fix this expectation comes from


@dataclass(frozen=True)
class WarnSite:
    """A step reaches a ``protvirt destroy … failed`` WARN_ONCE: the model says it may or must not fire."""

    step: str
    function: str
    message: str
    verdict: str  # MUST_NOT or MAY

    def describe(self) -> str:
        return f"{self.step}: {self.function} {self.verdict} WARN ({self.message!r})"


def ok(ret: Any = 0, data: Any = None, sim: Any = None) -> Result:
    return Result(ret=ret, data=data, sim=sim)


def fail(errno: Any, **kw: Any) -> Result:
    return Result(ret=None, errno=errno, **kw)


UNKNOWN = Result(ret=ANY, errno=ANY, rc=ANY, rrc=ANY, data=ANY)


class _Thread:
    def __init__(self, label: Optional[str], steps: List[Dict[str, Any]], proc: Proc) -> None:
        self.label = label
        self.steps = steps
        self.pc = 0
        self.proc = proc

    @property
    def done(self) -> bool:
        return self.pc >= len(self.steps)


def clone_proc(proc: Proc) -> Proc:
    """A deep copy of a process's state, for 'what if this step had completed'."""
    import copy

    return copy.deepcopy(proc)
