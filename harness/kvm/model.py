"""Reference model of s390 KVM protected-VM teardown: the expected record of every agent step.

The model executes the same normalised step list the agent runs (see ``harness.kvm.agent``) against an
abstract host described by ``Capabilities``, and returns the records the agent should print.  Values the
model cannot know (fd numbers, Ultravisor reason codes, memory figures) are the matchers ``ANY``/``FD``.

Sources: docs/async-destroy-spec.md, checked against Debian linux-source-6.12 ``arch/s390/kvm/pv.c`` and
``kvm-s390.c``.  Notable kernel details encoded here:

* ``KVM_S390_PV_COMMAND`` fails early (no copy-back) when the host is not PV-capable or ``flags != 0``;
  after ``kvm_s390_handle_pv`` the struct is always copied back, so rc/rrc keep the caller's values
  whenever KVM made no Ultravisor call (every ``-EINVAL`` path of PREPARE/PERFORM/DISABLE/ENABLE, ``-ENOTTY``).
* PREPARE converts the vCPUs first and only then refuses a second set-aside or a segment-table ASCE
  (memory limit <= 2 GiB): after that failure the vCPUs are non-protected, the VM still protected.
* PERFORM with destroy-fast leaves rc/rrc untouched (the fast destroy already happened in PREPARE);
  without it rc/rrc come from Destroy Secure Configuration.
* A fatal signal during PERFORM queues the VM on ``need_cleanup`` and returns 0 with rc=1 rrc=42;
  ``kvm_arch_destroy_vm`` and DISABLE destroy the current, the set-aside and every ``need_cleanup``
  configuration.  The killed process never sees that result, but the agent keeps the command's struct in
  memory shared with the fork's parent, so the model states it (``kill_pv`` of the fork step).
* ``KVM_PV_SET_SEC_PARMS`` with ``data = 0`` probes protection without side effects: ``-EINVAL`` when the
  VM is not protected (checked first), ``-EFAULT`` when it is (copy from the NULL pointer).
* Expectations that come from an upstream fix carry it (``pin``): PREPARE refusing a VM of at most 2 GiB
  is fix 292a7d6fca33 (kernels 6.2 and 6.3 before 6.3.3 accept it).  The model demands the fixed
  behaviour; a deviation there names the fix (``harness.kvm.fixes``).
* Every Ultravisor destroy call a step makes is a ``protvirt destroy … failed`` WARN_ONCE site
  (``harness.kvm.warns``); the model says which may and which must not fire, and a ``kernel_log`` check
  step expects exactly that.

Layout: this module is the kernel-independent machinery (step evaluation, the scheduler, generic KVM ops);
``model_pv.py`` is the PV state machine; ``model_state.py`` the state both act on.

Threads are run cooperatively: each runs until it blocks (``wait_event``, ``wait_step``, ``join``); the
model repeats the evaluation for every scheduling order of the threads, so a race yields several allowed
outcomes (``expect`` returns one alternative per distinct outcome).

Why one module of this size: the evaluator, its cooperative scheduler and the generic KVM ops share one
run state; the PV state machine, the part to check against the spec, is ``model_pv.py``.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Dict, List, Optional, Tuple

from . import uapi
from .caps import ASYNC_TEARDOWN_SINCE, Capabilities
from .matchers import ANY, FD, OneOf, matches
from .model_pv import PvSemantics
from .model_state import (ASSUMED_DEFAULT_LIMIT_OK, MIB, PV_INFO_SINCE, TWO_GIB, UNKNOWN, Proc,  # noqa: F401
                          Result, Vcpu, Vm, WarnSite, _Thread, clone_proc, fail, ok)

log = logging.getLogger(__name__)

__all__ = ["ANY", "FD", "OneOf", "matches", "Model", "concretize", "WarnSite"]




# --- the model --------------------------------------------------------------------------------------------


class Model:
    """Evaluate step lists against the capabilities of one host."""

    def __init__(self, caps: Capabilities) -> None:
        self.caps = caps

    # public API
    def expect(self, steps: List[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
        """Expected record lists, one per distinct outcome over all thread scheduling orders."""
        alternatives: List[List[Dict[str, Any]]] = []
        seen = set()
        for order in self._orders(steps):
            records = _Run(self.caps, order).evaluate(steps)
            key = repr([(r["name"], r.get("ret"), r.get("errno"), r.get("rc"), r.get("rrc")) for r in records])
            if key not in seen:
                seen.add(key)
                alternatives.append(records)
        return alternatives

    def simulate(self, steps: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Concrete records, as the agent would print them on a host that behaves like the model.

        A step the SIGKILL lands in prints nothing: the simulated kill interrupts it (see ``kill_pv``).
        """
        records = [r for r in _Run(self.caps, None).evaluate(steps) if not r.get("optional")]
        return [concretize(r, i) for i, r in enumerate(records)]

    def events(self, steps: List[Dict[str, Any]]) -> List[str]:
        """The teardown event log of one evaluation (what got destroyed where), for reports."""
        run = _Run(self.caps, None)
        run.evaluate(steps)
        return run.events

    def warn_sites(self, steps: List[Dict[str, Any]]) -> List[WarnSite]:
        """Every WARN_ONCE site the steps reach, in order, with whether it may or must not fire."""
        run = _Run(self.caps, None)
        run.evaluate(steps)
        return list(run.warn_log)

    @staticmethod
    def _orders(steps: List[Dict[str, Any]]) -> List[Optional[Tuple[str, ...]]]:
        labels = _thread_labels(steps)
        if len(labels) < 2:
            return [None]
        if len(labels) > 4:
            log.warning("%d threads: exploring only their start order", len(labels))
            return [None]
        return [tuple(p) for p in itertools.permutations(labels)]


def _thread_labels(steps: List[Dict[str, Any]]) -> List[str]:
    labels = []
    for step in steps:
        if step["op"] == "thread":
            labels.append(step["as"])
        labels.extend(_thread_labels(step.get("steps") or []) if step["op"] != "fork" else [])
    return labels


def concretize(record: Dict[str, Any], index: int) -> Dict[str, Any]:
    """Replace matchers by plausible concrete values (the model target's observations)."""
    out = {k: v for k, v in record.items() if k not in ("optional", "sim", "pin")}
    sim = record.get("sim")
    defaults = {"ret": 0, "errno": None, "rc": uapi.UVC_RC_EXECUTED, "rrc": 0}
    for key, default in defaults.items():
        value = out.get(key)
        if value is FD:
            out[key] = 3 + index
        elif value is ANY:
            out[key] = default
    if "data" in out:
        out["data"] = _concrete_data(out["data"], sim)
    out["duration_ns"] = 0
    return {k: v for k, v in out.items() if v is not None or k in ("ret", "errno")}


def _concrete_data(data: Any, sim: Any) -> Any:
    if data is ANY:
        return sim
    if isinstance(data, dict):
        base = dict(sim) if isinstance(sim, dict) else {}
        for k, v in data.items():
            if v is ANY or v is FD or isinstance(v, OneOf):
                base.setdefault(k, None)
            else:
                base[k] = _concrete_data(v, None)
        return base
    return data


SIM_MEMINFO = {"MemTotal": 8 << 20, "MemFree": 6 << 20, "MemAvailable": 7 << 20, "Cached": 1 << 20,
               "AnonPages": 1 << 18}


class _Run(PvSemantics):
    """One evaluation of a step list under one thread scheduling order."""

    def __init__(self, caps: Capabilities, order: Optional[Tuple[str, ...]]) -> None:
        self.caps = caps
        self.order = order
        self.records: List[Dict[str, Any]] = []
        self.events: List[str] = []
        self.started: set = set()
        self.event_flags: set = set()
        self.vm_count = 0
        self.quiet = 0  # inside a loop: inner steps (and their forks' children) print no records
        self.warn_log: List[WarnSite] = []
        self.marks: Dict[str, int] = {}  # kernel_log mark step -> position in warn_log
        self.current = "<start>"  # the step whose effects are being evaluated
        self.kill_pv: Optional[Tuple[Any, Any]] = None  # (expected, simulated) struct of a killed pv step

    # scheduling
    def evaluate(self, steps: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        proc = Proc("main")
        try:
            self._run_process(proc, steps, {}, kill_at=None)
        finally:
            self.current = "<exit>"
            self._exit_process(proc)
        return self.records

    def _run_process(self, proc: Proc, steps: List[Dict[str, Any]], labels: Dict[str, Any],
                     kill_at: Optional[str]) -> Optional[str]:
        """Run a process's threads to completion; return the step it was killed in, if any."""
        threads: List[_Thread] = [_Thread(None, steps, proc)]
        while True:
            progressed = False
            for thread in self._schedule(threads):
                while not thread.done:
                    step = thread.steps[thread.pc]
                    if self._blocked(step, threads):
                        break
                    thread.pc += 1
                    progressed = True
                    thread_labels = dict(labels)
                    if thread.label is not None:
                        thread_labels["thread"] = thread.label
                    if kill_at is not None and step["name"] == kill_at:
                        self._killed_step(proc, step, thread_labels)
                        return kill_at
                    if step["op"] == "thread":
                        threads.append(_Thread(step["as"], step["steps"], proc))
                    killed = self._step(proc, step, thread_labels, kill_at)
                    if killed:
                        return killed
            if all(t.done for t in threads) or not progressed:
                if not all(t.done for t in threads):
                    stuck = [t.steps[t.pc]["name"] for t in threads if not t.done]
                    self.events.append(f"deadlock: steps {', '.join(stuck)} never unblock (agent would time out)")
                    for name in stuck:
                        self.records.append({"name": name, "op": "?", "ret": None, "errno": None,
                                             "error": "timed out", "timed_out": True})
                return None

    def _schedule(self, threads: List[_Thread]) -> List[_Thread]:
        main, others = threads[0], threads[1:]
        if self.order is None:
            return [main] + others
        rank = {label: i for i, label in enumerate(self.order)}
        return [main] + sorted(others, key=lambda t: rank.get(t.label or "", len(rank)))

    def _blocked(self, step: Dict[str, Any], threads: List[_Thread]) -> bool:
        op = step["op"]
        if op == "wait_event":
            return step["event"] not in self.event_flags
        if op == "wait_step":
            return step["step"] not in self.started
        if op == "join":
            return not any(t.label == step["thread"] and t.done for t in threads)
        return False

    # step dispatch
    def _step(self, proc: Proc, step: Dict[str, Any], labels: Dict[str, Any],
              kill_at: Optional[str]) -> Optional[str]:
        result, killed = self._exec(proc, step, labels, kill_at)
        self._record(step, result, labels)
        return killed

    def _exec(self, proc: Proc, step: Dict[str, Any], labels: Dict[str, Any],
              kill_at: Optional[str]) -> Tuple[Result, Optional[str]]:
        self.started.add(step["name"])
        outer, self.current = self.current, step["name"]
        try:
            if step["op"] == "fork":
                return self._fork(proc, step, labels), None
            if step["op"] == "loop":
                return self._loop(proc, step, labels, kill_at)
            return getattr(self, "op_" + step["op"])(proc, step), None
        finally:
            self.current = outer

    def _record(self, step: Dict[str, Any], result: Result, labels: Dict[str, Any],
                optional: bool = False) -> Dict[str, Any]:
        record: Dict[str, Any] = {"name": step["name"], "op": step["op"], "ret": result.ret, "errno": result.errno}
        for key in ("rc", "rrc", "data", "error", "sim", "pin"):
            value = getattr(result, key)
            if value is not None:
                record[key] = value
        if optional:
            record["optional"] = True
        record.update(labels)
        if not self.quiet:
            self.records.append(record)
        return record

    def _killed_step(self, proc: Proc, step: Dict[str, Any], labels: Dict[str, Any]) -> None:
        """SIGKILL lands in ``step``: its record may or may not appear; effects as the kernel defines them."""
        self.started.add(step["name"])
        outer, self.current = self.current, step["name"]
        try:
            if step["op"] == "pv":
                self._killed_pv(proc, step, labels)
            elif step["op"] == "loop":
                self._record(step, Result(ret=ANY, errno=ANY, data=ANY), labels, optional=True)
            else:
                result = getattr(self, "op_" + step["op"], lambda p, s: UNKNOWN)(proc, step)
                self._record(step, result, labels, optional=True)
        finally:
            self.current = outer

    @property
    def s390(self) -> bool:
        return self.caps.arch == "s390x"

    def _version_at_least(self, version: Tuple[int, int]) -> Optional[bool]:
        current = self.caps.version
        return None if current is None else current >= version

    def _async_enabled(self) -> Optional[bool]:
        if self._version_at_least(ASYNC_TEARDOWN_SINCE) is False:
            return False
        if self.caps.async_destroy is None:
            return None
        return bool(self.caps.async_destroy)

    def _handle(self, proc: Proc, name: str, kind: Optional[str] = None) -> Optional[Any]:
        entry = proc.handles.get(name)
        if entry is None or (kind is not None and entry[0] != kind):
            return None
        return entry[1]

    def _vm(self, proc: Proc, name: str) -> Optional[Vm]:
        return self._handle(proc, name, "vm")

    @staticmethod
    def _no_handle(name: str) -> Result:
        return Result(ret=None, errno=None, error=ANY)

    # --- process teardown (kvm_arch_destroy_vm) ---
    def _exit_process(self, proc: Proc) -> None:
        for name in list(proc.handles):
            kind, obj = proc.handles.pop(name)
            if kind == "vcpu":
                obj[1].fd_open = False
            elif kind == "vm":
                obj.fd_open = False
        for vm in proc.vms:
            self._maybe_destroy(vm, by_exit=True)

    def _fork(self, proc: Proc, step: Dict[str, Any], labels: Dict[str, Any]) -> Result:
        child = Proc(step["as"])
        child_labels = dict(labels, proc=step["as"])
        outer_kill, self.kill_pv = self.kill_pv, None
        killed = self._run_process(child, step["steps"], child_labels, step.get("kill_at"))
        self._exit_process(child)
        kill_pv, self.kill_pv = self.kill_pv, outer_kill
        if step.get("kill_at") is not None:
            if killed is None:
                return ok(data={"killed": ANY, "kill_missed": ANY}, sim={"killed": False, "exit_status": 0})
            data: Dict[str, Any] = {"killed": True, "signal": 9, "killed_in": ANY}
            sim: Dict[str, Any] = {"killed": True, "signal": 9, "killed_in": killed}
            if kill_pv is not None:
                data["kill_pv"], sim["kill_pv"] = kill_pv
            return ok(data=data, sim=sim)
        return ok(data={"killed": False, "exit_status": 0}, sim={"killed": False, "exit_status": 0})

    def _loop(self, proc: Proc, step: Dict[str, Any], labels: Dict[str, Any],
              kill_at: Optional[str]) -> Tuple[Result, Optional[str]]:
        count = step.get("count")
        iterations = 1 if count is None else int(count)
        failed = 0
        unknown = False
        self.quiet += 1
        try:
            for _ in range(iterations):
                for inner in step["steps"]:
                    result, _ = self._exec(proc, inner, labels, None)
                    if result.errno is ANY or result.error is ANY:
                        unknown = True
                    elif result.errno is not None or result.error is not None:
                        failed += 1
        finally:
            self.quiet -= 1
        data = {"iterations": ANY if count is None else iterations, "failed": ANY if unknown else failed}
        return ok(data=data, sim={"iterations": iterations, "failed": failed, "failures": []}), None

    # --- ops ---
    def op_open_kvm(self, proc: Proc, step: Dict[str, Any]) -> Result:
        if not self.caps.has_kvm:
            return fail("ENOENT")
        proc.handles[step["as"]] = ("kvm", None)
        return ok(FD)

    def op_api_version(self, proc: Proc, step: Dict[str, Any]) -> Result:
        if step["kvm"] not in proc.handles:
            return self._no_handle(step["kvm"])
        return ok(uapi.KVM_API_VERSION)

    def op_vcpu_mmap_size(self, proc: Proc, step: Dict[str, Any]) -> Result:
        if step["kvm"] not in proc.handles:
            return self._no_handle(step["kvm"])
        return ok(ANY)

    def op_check_extension(self, proc: Proc, step: Dict[str, Any]) -> Result:
        if step["on"] not in proc.handles:
            return self._no_handle(step["on"])
        return ok(self.expected_cap(int(step["cap"])))

    def expected_cap(self, cap: int) -> Any:
        """What KVM_CHECK_EXTENSION(cap) must return on this host, derived from its facts."""
        if cap == uapi.KVM_CAP_USER_MEMORY:
            return 1
        pv_caps = (uapi.KVM_CAP_S390_PROTECTED, uapi.KVM_CAP_S390_PROTECTED_DUMP,
                   uapi.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE)
        if cap not in pv_caps:
            return ANY
        if not self.s390:
            return 0
        pvh = self.caps.prot_virt_host
        if cap == uapi.KVM_CAP_S390_PROTECTED:
            return ANY if pvh is None else int(bool(pvh))
        if cap == uapi.KVM_CAP_S390_PROTECTED_DUMP:
            if self._version_at_least(PV_INFO_SINCE) is False or pvh == 0:
                return 0
            return ANY  # also needs the Ultravisor's dump calls
        enabled = self._async_enabled()
        if enabled is False:
            return 0
        if enabled is None or pvh is None:
            return ANY
        return int(bool(pvh))

    def op_create_vm(self, proc: Proc, step: Dict[str, Any]) -> Result:
        if step["kvm"] not in proc.handles:
            return self._no_handle(step["kvm"])
        if int(step["type"]) != 0:
            return UNKNOWN
        self.vm_count += 1
        vm = Vm(label=f"{proc.label}:{step['as']}")
        self._close_name(proc, step["as"])
        proc.handles[step["as"]] = ("vm", vm)
        proc.vms.append(vm)
        return ok(FD)

    def op_set_mem_limit(self, proc: Proc, step: Dict[str, Any]) -> Result:
        vm = self._vm(proc, step["vm"])
        if vm is None:
            return self._no_handle(step["vm"])
        if not self.s390:
            return UNKNOWN
        new = int(step["bytes"])
        if vm.mem_limit is not None and new > vm.mem_limit:
            return fail("E2BIG")
        if new == 0:
            return fail("EINVAL")
        if vm.mem_limit is None and new > ASSUMED_DEFAULT_LIMIT_OK:
            return UNKNOWN
        if vm.created_vcpus:
            return fail("EBUSY")
        vm.mem_limit = new
        return ok(0)

    def op_get_mem_limit(self, proc: Proc, step: Dict[str, Any]) -> Result:
        vm = self._vm(proc, step["vm"])
        if vm is None:
            return self._no_handle(step["vm"])
        if not self.s390:
            return UNKNOWN
        return ok(0, data=ANY if vm.mem_limit is None else vm.mem_limit,
                  sim=vm.mem_limit if vm.mem_limit is not None else (1 << 42))

    def op_has_device_attr(self, proc: Proc, step: Dict[str, Any]) -> Result:
        if step["on"] not in proc.handles:
            return self._no_handle(step["on"])
        if self.s390 and int(step["group"]) == uapi.KVM_S390_VM_MEM_CTRL \
                and int(step["attr"]) == uapi.KVM_S390_VM_MEM_LIMIT_SIZE:
            return ok(0)
        return UNKNOWN

    def op_add_memslot(self, proc: Proc, step: Dict[str, Any]) -> Result:
        vm = self._vm(proc, step["vm"])
        if vm is None:
            return self._no_handle(step["vm"])
        size = int(step["size_mb"]) * MIB
        gpa = int(step["gpa"])
        data = {"size": size, "touched": min(int(step["touch_mb"]) * MIB, size)}
        if self.s390:
            if vm.protected:
                return fail("EINVAL", data=data)
            if gpa % MIB:
                return fail("EINVAL", data=data)
            limit = vm.mem_limit
            if limit is not None and gpa + size > limit:
                return fail("EINVAL", data=data)
        slot = int(step["slot"])
        if slot in vm.memslots:
            return Result(ret=ANY, errno=ANY, data=data)
        for other_gpa, other_size in vm.memslots.values():
            if gpa < other_gpa + other_size and other_gpa < gpa + size:
                return fail("EEXIST", data=data)
        vm.memslots[slot] = (gpa, size)
        return ok(0, data=data)

    def op_create_vcpu(self, proc: Proc, step: Dict[str, Any]) -> Result:
        vm = self._vm(proc, step["vm"])
        if vm is None:
            return self._no_handle(step["vm"])
        vcpu_id = int(step["id"])
        if vcpu_id in vm.vcpus:
            return fail("EEXIST")
        vcpu = Vcpu(vcpu_id, protected=vm.protected)
        vm.vcpus[vcpu_id] = vcpu
        vm.created_vcpus += 1
        name = step["as"] or f"vcpu{vcpu_id}"
        self._close_name(proc, name)
        proc.handles[name] = ("vcpu", (vm, vcpu))
        return ok(FD)

    def op_run_vcpu(self, proc: Proc, step: Dict[str, Any]) -> Result:
        if self._handle(proc, step["vcpu"], "vcpu") is None:
            return self._no_handle(step["vcpu"])
        return Result(ret=ANY, errno=ANY, data=ANY, sim={"exit_reason": 0})

    def op_close(self, proc: Proc, step: Dict[str, Any]) -> Result:
        if step["handle"] not in proc.handles:
            return self._no_handle(step["handle"])
        self._close_name(proc, step["handle"])
        return ok(0)

    def _close_name(self, proc: Proc, name: str) -> None:
        entry = proc.handles.pop(name, None)
        if entry is None:
            return
        kind, obj = entry
        if kind == "vm":
            obj.fd_open = False
            self._maybe_destroy(obj)
        elif kind == "vcpu":
            vm, vcpu = obj
            vcpu.fd_open = False
            self._maybe_destroy(vm)

    def op_read_file(self, proc: Proc, step: Dict[str, Any]) -> Result:
        path = step["path"]
        if path == "/sys/firmware/uv/prot_virt_host" and self.s390:
            value = self.caps.prot_virt_host
            return fail("ENOENT") if value is None else ok(0, data=str(value))
        if path == "/sys/module/kvm/parameters/async_destroy" and self.s390:
            if self._version_at_least(ASYNC_TEARDOWN_SINCE) is False:
                return fail("ENOENT")
            value = self.caps.async_destroy
            return Result(ret=ANY, errno=ANY, data=ANY) if value is None else ok(0, data=str(value))
        return Result(ret=ANY, errno=ANY, data=ANY, sim="")

    def op_meminfo(self, proc: Proc, step: Dict[str, Any]) -> Result:
        return ok(0, data=ANY, sim=dict(SIM_MEMINFO))

    def op_cgroup_memory(self, proc: Proc, step: Dict[str, Any]) -> Result:
        return Result(ret=ANY, errno=ANY, data=ANY, sim={"cgroup": "/model", "current": 1 << 24})

    def op_mem_settle(self, proc: Proc, step: Dict[str, Any]) -> Result:
        sim = {"field": step["field"], "baseline_kb": SIM_MEMINFO[step["field"]],
               "final_kb": SIM_MEMINFO[step["field"]], "settled": True, "waited_ms": 0}
        return ok(0, data={"settled": True}, sim=sim)

    def op_mem_watch(self, proc: Proc, step: Dict[str, Any]) -> Result:
        """Memory figures are the host's: any values; the simulation says memory came back at once."""
        sim = {"target_kb": SIM_MEMINFO["MemAvailable"], "cgroup_baseline": None, "tolerance_kb":
               int(step["tolerance_mb"]) * 1024, "mem_back_ms": 0, "cgroup_back_ms": None, "samples": []}
        return ok(0, data=ANY, sim=sim)

    def op_sleep(self, proc: Proc, step: Dict[str, Any]) -> Result:
        return ok(0)

    def op_set_event(self, proc: Proc, step: Dict[str, Any]) -> Result:
        self.event_flags.add(step["event"])
        return ok(0)

    def op_wait_event(self, proc: Proc, step: Dict[str, Any]) -> Result:
        return ok(0)

    def op_wait_step(self, proc: Proc, step: Dict[str, Any]) -> Result:
        return ok(0)

    def op_thread(self, proc: Proc, step: Dict[str, Any]) -> Result:
        return ok(0)

    def op_join(self, proc: Proc, step: Dict[str, Any]) -> Result:
        return ok(0)

    # --- KVM_S390_PV_COMMAND ---
