"""The KVM scenarios: each states its steps once; the model supplies every expected result.

``SCENARIOS`` maps a name to a ``Scenario``.  ``needs`` says what the target must offer (see
``harness.kvm.probe.pv_skip_reason``): ``kvm`` (any KVM host), ``s390_kvm``, ``pv_host`` or ``async``.
Run one with ``harness.kvm.runner.run_scenario(target, SCENARIOS[name], caps)``.

Why one module of this size: it is the catalogue of scenarios, each a short list of steps; splitting it
would only scatter them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import uapi
from .steps import SENTINEL_RC, SENTINEL_RRC, normalise_steps
from .warns import PROTVIRT_WARNS

GIB = 1 << 30
Step = Dict[str, Any]

# --- step builders ------------------------------------------------------------------------------------


def open_kvm(name: str = "open_kvm", **kw: Any) -> Step:
    return {"op": "open_kvm", "name": name, **kw}


def create_vm(name: str = "create_vm", **kw: Any) -> Step:
    return {"op": "create_vm", "name": name, **kw}


def mem_limit(nbytes: int, name: str = "mem_limit", **kw: Any) -> Step:
    return {"op": "set_mem_limit", "bytes": nbytes, "name": name, **kw}


def memslot(size_mb: int, name: str = "memslot", **kw: Any) -> Step:
    return {"op": "add_memslot", "size_mb": size_mb, "name": name, **kw}


def vcpu(vcpu_id: int, name: Optional[str] = None, **kw: Any) -> Step:
    return {"op": "create_vcpu", "id": vcpu_id, "name": name or f"vcpu{vcpu_id}", **kw}


def pv(cmd: str, name: str, **kw: Any) -> Step:
    """A KVM_S390_PV_COMMAND with sentinel rc/rrc (0xdead/0xbeef) unless given."""
    return {"op": "pv", "cmd": int(uapi.pv_cmd(cmd)), "name": name, **kw}


def is_protected(name: str, vm: str = "vm") -> Step:
    """Probe without side effects: SET_SEC_PARMS with data 0 (EFAULT: protected, EINVAL: not)."""
    return {"op": "pv_protected", "name": name, "vm": vm}


def kernel_log_mark(name: str = "kernel_log_start") -> Step:
    return {"op": "kernel_log", "name": name}


def no_protvirt_warns(name: str = "no_protvirt_warns", since: str = "kernel_log_start") -> Step:
    """The ``protvirt destroy … failed`` WARNs printed since a mark: the model states which may fire."""
    return {"op": "kernel_log", "name": name, "since": since, "match": list(PROTVIRT_WARNS)}


def close(handle: str, name: Optional[str] = None) -> Step:
    return {"op": "close", "handle": handle, "name": name or f"close_{handle}"}


def meminfo(name: str) -> Step:
    return {"op": "meminfo", "name": name}


def mem_settle(baseline: str, name: str, tolerance_mb: int = 512, settle_s: float = 20.0) -> Step:
    """Wait until MemAvailable is back within ``tolerance_mb`` of an earlier ``meminfo`` step.

    MemAvailable is host-wide: the tolerance must exceed what other processes do meanwhile (a busy build
    host drifts by a few hundred MiB), and the scenario must touch clearly more memory than that.
    """
    return {"op": "mem_settle", "baseline": baseline, "name": name, "tolerance_mb": tolerance_mb,
            "settle_s": settle_s, "timeout_s": settle_s + 30}


def check_ext(cap: int, name: str, on: str = "kvm") -> Step:
    return {"op": "check_extension", "cap": cap, "name": name, "on": on}


def read_file(path: str, name: str) -> Step:
    return {"op": "read_file", "path": path, "name": name}


def thread(name: str, steps: List[Step]) -> Step:
    return {"op": "thread", "name": name, "as": name, "steps": steps}


def join(thread_name: str) -> Step:
    return {"op": "join", "thread": thread_name, "name": f"join_{thread_name}"}


def fork(name: str, steps: List[Step], kill_at: Optional[str] = None, kill_after_ms: int = 0,
         timeout_s: float = 120.0) -> Step:
    step: Step = {"op": "fork", "name": name, "as": name, "steps": steps, "timeout_s": timeout_s}
    if kill_at is not None:
        step.update(kill_at=kill_at, kill_after_ms=kill_after_ms)
    return step


def prefixed(prefix: str, steps: List[Step]) -> List[Step]:
    """Copies of ``steps`` with ``prefix`` on every step name (for repeated blocks)."""
    out = []
    for step in copy.deepcopy(steps):
        step["name"] = f"{prefix}{step['name']}"
        if "steps" in step:
            step["steps"] = prefixed(prefix, step["steps"])
        out.append(step)
    return out


def pv_guest(limit: Optional[int] = None, size_mb: int = 256, vcpus: int = 2, touch_mb: int = 0) -> List[Step]:
    """Open /dev/kvm, create a VM (memory limit first if given), one memslot, vCPUs."""
    steps = [open_kvm(), create_vm()]
    if limit is not None:
        steps.append(mem_limit(limit))
    steps.append(memslot(size_mb, touch_mb=touch_mb))
    steps += [vcpu(i) for i in range(vcpus)]
    return steps


def vcpu_closes(vcpus: int = 2) -> List[Step]:
    return [close(f"vcpu{i}") for i in range(vcpus)]


# --- scenario type ---------------------------------------------------------------------------------------

NoteFn = Callable[[List[Dict[str, Any]]], List[str]]


def _no_notes(records: List[Dict[str, Any]]) -> List[str]:
    return []


@dataclass(frozen=True)
class Scenario:
    """A named step list; expected results come from the model, never from the scenario."""

    name: str
    title: str
    needs: str
    steps: Tuple[Step, ...]
    timeout_s: float = 300.0
    step_timeout_s: float = 60.0
    notes: NoteFn = field(default=_no_notes, compare=False)
    fix: str = ""  # the upstream fix the scenario pins, if any

    def normalised_steps(self) -> List[Step]:
        steps = copy.deepcopy(list(self.steps))
        normalise_steps(steps, set(), "")
        return steps

    def document(self) -> Dict[str, Any]:
        """The agent's input."""
        return {"steps": copy.deepcopy(list(self.steps)), "default_timeout_s": self.step_timeout_s,
                "total_timeout_s": self.timeout_s}


def _kill_notes(fork_names: List[str], intended: str) -> NoteFn:
    def notes(records: List[Dict[str, Any]]) -> List[str]:
        out = []
        for record in records:
            if record.get("name") in fork_names and isinstance(record.get("data"), dict):
                where = record["data"].get("killed_in")
                if where is not None and not str(where).endswith(intended):
                    out.append(f"{record['name']}: SIGKILL landed in {where!r}, not in {intended!r}: "
                               "the interrupted path was not exercised this time")
                out.extend(_interrupted_note(record["name"], record["data"].get("kill_pv")))
        return out
    return notes


def _interrupted_note(fork_name: str, kill_pv: Any) -> List[str]:
    """Say whether the kernel took PERFORM's fatal-signal path (0, rc=1 rrc=42 copied back)."""
    if not isinstance(kill_pv, dict) or not kill_pv.get("entered"):
        return []
    if kill_pv.get("rc") == uapi.UVC_RC_EXECUTED and kill_pv.get("rrc") == uapi.SET_ASIDE_RRC \
            and not kill_pv.get("returned"):
        return [f"{fork_name}: {kill_pv['step']} was cut short by SIGKILL and reported rc=1 rrc=42 "
                "(the interrupted path; the VM went to need_cleanup)"]
    return [f"{fork_name}: {kill_pv['step']} was not interrupted inside the kernel "
            f"(rc={kill_pv.get('rc')} rrc={kill_pv.get('rrc')}): the interrupted path was not exercised this time"]


# --- PV scenarios (s390x, protected virtualization) ------------------------------------------------------

_PREPARE, _PERFORM = "ASYNC_CLEANUP_PREPARE", "ASYNC_CLEANUP_PERFORM"

PV_SCENARIOS = [
    Scenario(
        "pv_prepare_perform", "PREPARE then PERFORM: rc=1 rrc=42, VM non-protected afterwards, ENABLE works again",
        "async",
        tuple(pv_guest() + [
            pv("ENABLE", "enable"),
            is_protected("protected_after_enable"),
            pv(_PREPARE, "prepare"),
            is_protected("unprotected_after_prepare"),
            pv(_PERFORM, "perform"),
            is_protected("unprotected_after_perform"),
            pv("ENABLE", "enable_again"),
            is_protected("protected_again"),
            pv("DISABLE", "disable"),
            *vcpu_closes(), close("vm"),
        ])),
    Scenario(
        "pv_double_prepare", "a second PREPARE while a VM is set aside is refused (EINVAL, rc/rrc unchanged)",
        "async",
        tuple(pv_guest() + [
            pv("ENABLE", "enable"),
            pv(_PREPARE, "prepare"),
            is_protected("unprotected_after_prepare"),
            pv(_PREPARE, "prepare_unprotected"),
            pv("ENABLE", "enable_again"),
            pv(_PREPARE, "prepare_second"),
            is_protected("still_protected"),
            pv("DISABLE", "disable_all"),
            is_protected("unprotected_after_disable"),
            pv(_PERFORM, "perform_after_disable"),
            *vcpu_closes(), close("vm"),
        ])),
    Scenario(
        "pv_perform_nothing_set_aside", "PERFORM with nothing set aside: EINVAL, rc/rrc unchanged",
        "async",
        tuple(pv_guest() + [
            pv(_PERFORM, "perform_fresh_vm"),
            pv("ENABLE", "enable"),
            pv(_PERFORM, "perform_protected"),
            pv("DISABLE", "disable"),
            *vcpu_closes(), close("vm"),
        ])),
    Scenario(
        "pv_prepare_not_protected", "PREPARE on a VM that was never protected: EINVAL, rc/rrc unchanged",
        "async",
        tuple(pv_guest() + [pv(_PREPARE, "prepare"), *vcpu_closes(), close("vm")])),
    Scenario(
        "pv_disable_after_prepare", "DISABLE right after PREPARE: EINVAL (the VM is no longer protected)",
        "async",
        tuple(pv_guest() + [
            pv("ENABLE", "enable"),
            pv(_PREPARE, "prepare"),
            is_protected("unprotected_after_prepare"),
            pv("DISABLE", "disable"),
            pv(_PERFORM, "perform"),
            *vcpu_closes(), close("vm"),
        ])),
    Scenario(
        "pv_small_vm", "memory limit <= 2 GiB: PREPARE EINVAL, VM still protected, DISABLE -> 0",
        "async",
        tuple(pv_guest(limit=2 * GIB) + [
            pv("ENABLE", "enable"),
            pv(_PREPARE, "prepare"),
            is_protected("still_protected"),
            pv("DISABLE", "disable"),
            is_protected("unprotected_after_disable"),
            pv("ENABLE", "enable_again"),
            pv("DISABLE", "disable_again"),
            *vcpu_closes(), close("vm"),
        ]),
        fix="292a7d6fca33"),
    Scenario(
        "pv_limit_just_above_2g", "memory limit 2 GiB + 1 MiB (region-third ASCE): PREPARE and PERFORM succeed",
        "async",
        tuple(pv_guest(limit=2 * GIB + (1 << 20)) + [
            pv("ENABLE", "enable"),
            pv(_PREPARE, "prepare"),
            is_protected("unprotected_after_prepare"),
            pv(_PERFORM, "perform"),
            *vcpu_closes(), close("vm"),
        ]),
        fix="292a7d6fca33"),
    Scenario(
        "pv_prepare_during_perform", "PREPARE is allowed again as soon as a PERFORM has started in another thread",
        "async",
        tuple(pv_guest() + [
            pv("ENABLE", "enable"),
            pv(_PREPARE, "prepare_1"),
            pv("ENABLE", "enable_2"),
            thread("t_perform", [pv(_PERFORM, "perform_1")]),
            {"op": "wait_step", "step": "perform_1", "name": "perform_1_started"},
            {"op": "sleep", "ms": 50, "name": "let_perform_take_it"},
            pv(_PREPARE, "prepare_2"),
            join("t_perform"),
            pv(_PERFORM, "perform_2"),
            *vcpu_closes(), close("vm"),
        ])),
    Scenario(
        "pv_concurrent_performs", "two concurrent PERFORMs: exactly one gets the VM, the other EINVAL",
        "async",
        tuple(pv_guest() + [
            pv("ENABLE", "enable"),
            pv(_PREPARE, "prepare"),
            thread("t_a", [{"op": "wait_event", "event": "go", "name": "a_ready"}, pv(_PERFORM, "perform_a")]),
            thread("t_b", [{"op": "wait_event", "event": "go", "name": "b_ready"}, pv(_PERFORM, "perform_b")]),
            {"op": "set_event", "event": "go", "name": "go"},
            join("t_a"), join("t_b"),
            *vcpu_closes(), close("vm"),
        ])),
    Scenario(
        "pv_fatal_signal_in_perform",
        "SIGKILL during PERFORM of a large guest: host recovers (no WARN, memory back, next VM works)",
        "async",
        tuple([kernel_log_mark(), meminfo("mem_before")] + [
            fork("victim", prefixed("v_", pv_guest(size_mb=4096, touch_mb=1024) + [
                pv("ENABLE", "enable"),
                pv(_PREPARE, "prepare"),
                pv(_PERFORM, "perform"),
                {"op": "sleep", "ms": 10000, "name": "linger"},
            ]), kill_at="v_perform", kill_after_ms=1),
            mem_settle("mem_before", "mem_returned"),
        ] + prefixed("next_", pv_guest() + [
            pv("ENABLE", "enable"), pv(_PREPARE, "prepare"), pv(_PERFORM, "perform"),
            *vcpu_closes(), close("vm"),
        ]) + [no_protvirt_warns()]),
        notes=_kill_notes(["victim"], "perform")),
    Scenario(
        "pv_destroy_vm_with_set_aside",
        "final teardown (kvm_arch_destroy_vm) with a set-aside VM never performed: by close and by process exit",
        "async",
        tuple([kernel_log_mark(), meminfo("mem_before")] + pv_guest(size_mb=1024, touch_mb=1024) + [
            pv("ENABLE", "enable"),
            pv(_PREPARE, "prepare"),
            *vcpu_closes(), close("vm"),
            fork("exiter", prefixed("x_", pv_guest(size_mb=1024, touch_mb=1024) + [
                pv("ENABLE", "enable"), pv(_PREPARE, "prepare"), pv("ENABLE", "enable_2"),
            ])),
            mem_settle("mem_before", "mem_returned"),
            no_protvirt_warns(),
        ])),
    Scenario(
        "pv_flags_nonzero", "flags != 0: EINVAL before any command runs, rc/rrc unchanged",
        "pv_host",
        tuple(pv_guest() + [
            pv("ENABLE", "enable_flags", flags=1),
            pv("DISABLE", "disable_not_enabled"),
            pv("ENABLE", "enable"),
            pv(_PREPARE, "prepare_flags", flags=1),
            pv(_PERFORM, "perform_flags", flags=0x80000000),
            pv("DISABLE", "disable"),
            *vcpu_closes(), close("vm"),
        ])),
    Scenario(
        "pv_unknown_command", "unknown PV commands: ENOTTY, rc/rrc unchanged (PREPARE/PERFORM too before 6.2)",
        "pv_host",
        tuple(pv_guest() + [
            pv("ENABLE", "enable"),
            {"op": "pv", "cmd": 11, "name": "cmd_11"},
            {"op": "pv", "cmd": 99, "name": "cmd_99"},
            {"op": "pv", "cmd": 0xFFFFFFFF, "name": "cmd_max"},
            pv("DISABLE", "disable"),
            pv(_PERFORM, "perform_unprotected"),
            *vcpu_closes(), close("vm"),
        ])),
    Scenario(
        "pv_cap_async_agrees", "capability 224 equals async_destroy && prot_virt_host, on /dev/kvm and on a VM",
        "s390_kvm",
        (open_kvm(),
         check_ext(uapi.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE, "cap224_kvm"),
         check_ext(uapi.KVM_CAP_S390_PROTECTED, "cap180_kvm"),
         read_file("/sys/module/kvm/parameters/async_destroy", "async_destroy"),
         read_file("/sys/firmware/uv/prot_virt_host", "prot_virt_host"),
         create_vm(),
         check_ext(uapi.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE, "cap224_vm", on="vm"),
         close("vm"))),
]

# --- generic lifecycle scenarios (any KVM host) ----------------------------------------------------------

LIFECYCLE_ROUNDS = 30
CLOSE_LOOPS = 50


def _plain_vm(touch_mb: int = 64) -> List[Step]:
    return [open_kvm(), create_vm(), memslot(64, touch_mb=touch_mb), vcpu(0), vcpu(1)]


LIFECYCLE_SCENARIOS = [
    Scenario(
        "lifecycle_close", f"{CLOSE_LOOPS} create/teardown cycles by closing fds (VM, 2 vCPUs, 64 MiB memslot)",
        "kvm",
        (meminfo("mem_before"), open_kvm(),
         {"op": "loop", "count": CLOSE_LOOPS, "name": "cycles", "timeout_s": 240, "steps": [
             create_vm("c_vm"), memslot(64, "c_slot", touch_mb=64), vcpu(0, "c_vcpu0"), vcpu(1, "c_vcpu1"),
             close("vcpu0", "c_close0"), close("vcpu1", "c_close1"), close("vm", "c_close_vm")]},
         mem_settle("mem_before", "mem_returned"))),
    Scenario(
        "lifecycle_exit", f"{LIFECYCLE_ROUNDS} processes exit with a VM, vCPUs and memory still open",
        "kvm",
        tuple([meminfo("mem_before")]
              + [fork(f"exit{i}", prefixed(f"e{i}_", _plain_vm())) for i in range(LIFECYCLE_ROUNDS)]
              + [mem_settle("mem_before", "mem_returned")]),
        fix="5ff92181577a"),
    Scenario(
        "lifecycle_sigkill", f"{LIFECYCLE_ROUNDS} processes SIGKILLed during an ioctl loop (KVM_RUN, CHECK_EXTENSION)",
        "kvm",
        tuple([meminfo("mem_before")]
              + [fork(f"kill{i}", prefixed(f"k{i}_", _plain_vm() + [
                  {"op": "loop", "count": None, "name": "spin", "steps": [
                      check_ext(uapi.KVM_CAP_NR_MEMSLOTS, "spin_check", on="vm"),
                      {"op": "run_vcpu", "vcpu": "vcpu0", "name": "spin_run"}]}]),
                  kill_at=f"k{i}_spin", kill_after_ms=20) for i in range(LIFECYCLE_ROUNDS)]
              + [mem_settle("mem_before", "mem_returned")]
              + prefixed("after_", _plain_vm() + [*vcpu_closes(), close("vm")])),
        fix="5ff92181577a",
        notes=_kill_notes([f"kill{i}" for i in range(LIFECYCLE_ROUNDS)], "spin")),
]

SCENARIOS: Dict[str, Scenario] = {s.name: s for s in PV_SCENARIOS + LIFECYCLE_SCENARIOS}


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}: known {', '.join(sorted(SCENARIOS))}") from None


__all__ = ["SCENARIOS", "PV_SCENARIOS", "LIFECYCLE_SCENARIOS", "Scenario", "scenario",
           "SENTINEL_RC", "SENTINEL_RRC"]
