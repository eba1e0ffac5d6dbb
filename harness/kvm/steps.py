"""The agent's step schema: every op with its required and optional keys, and the normaliser of step lists.

Standard library only and free of side effects: the host (scenarios, runner) imports it to validate a step
list before it ships one, and the agent's zipapp carries it next to ``agent.py`` and ``uapi.py``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

try:  # inside the harness package
    from . import uapi
except ImportError:  # in the agent's zipapp, or next to agent.py run as a script
    import uapi  # type: ignore[no-redef]

SENTINEL_RC, SENTINEL_RRC = 0xDEAD, 0xBEEF
"""What the agent puts in rc/rrc before a PV command, to see whether KVM wrote them."""

# op -> (required keys, optional keys with defaults)
OPS: Dict[str, Tuple[Tuple[str, ...], Dict[str, Any]]] = {
    "open_kvm": ((), {"as": "kvm", "path": "/dev/kvm"}),
    "api_version": ((), {"kvm": "kvm"}),
    "vcpu_mmap_size": ((), {"kvm": "kvm"}),
    "check_extension": (("cap",), {"on": "kvm"}),
    "create_vm": ((), {"kvm": "kvm", "as": "vm", "type": 0}),
    "set_mem_limit": (("bytes",), {"vm": "vm"}),
    "get_mem_limit": ((), {"vm": "vm"}),
    "has_device_attr": (("group", "attr"), {"on": "vm"}),
    "add_memslot": (("size_mb",), {"vm": "vm", "slot": 0, "gpa": 0, "touch_mb": 0, "flags": 0}),
    "create_vcpu": ((), {"vm": "vm", "id": 0, "as": None}),
    "run_vcpu": ((), {"vcpu": "vcpu0"}),
    "pv": (("cmd",), {"vm": "vm", "flags": 0, "data": 0, "rc": SENTINEL_RC, "rrc": SENTINEL_RRC}),
    "pv_cpu": (("cmd",), {"vcpu": "vcpu0", "flags": 0, "data": 0, "rc": SENTINEL_RC, "rrc": SENTINEL_RRC}),
    "pv_protected": ((), {"vm": "vm", "rc": SENTINEL_RC, "rrc": SENTINEL_RRC}),
    "kernel_log": ((), {"since": None, "match": []}),
    "close": (("handle",), {}),
    "read_file": (("path",), {}),
    "meminfo": ((), {}),
    "cgroup_memory": ((), {}),
    "mem_settle": (("baseline",), {"tolerance_mb": 64, "settle_s": 10.0, "field": "MemAvailable"}),
    "mem_watch": (("baseline",), {"gain_mb": None, "cgroup_baseline": None, "tolerance_mb": 128, "settle_s": 30.0,
                                  "interval_ms": 50}),
    "sleep": (("ms",), {}),
    "set_event": (("event",), {}),
    "wait_event": (("event",), {}),
    "thread": (("steps",), {"as": None}),
    "join": (("thread",), {}),
    "wait_step": (("step",), {}),
    "fork": (("steps",), {"as": None, "kill_at": None, "kill_after_ms": 0}),
    "loop": (("steps",), {"count": 1}),
}
COMMON_KEYS = ("op", "name", "timeout_s")


class InputError(Exception):
    """The scenario is malformed: names the step and the problem."""

    def __init__(self, step: str, op: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.op = op


def normalise_steps(steps: List[Any], names: set, prefix: str) -> None:
    """Fill in defaults and names in place; check ops, keys and name uniqueness recursively."""
    for index, step in enumerate(steps):
        where = f"{prefix}step {index}"
        if not isinstance(step, dict):
            raise InputError(where, "?", f"{where} is not an object: {step!r}")
        op = step.get("op")
        name = step.get("name") or f"{prefix}{op}-{index}"
        if op not in OPS:
            known = ", ".join(sorted(OPS))
            raise InputError(str(name), str(op), f"unknown step op {op!r} in step {name!r} (known: {known})")
        required, optional = OPS[op]
        missing = [k for k in required if k not in step]
        if missing:
            raise InputError(name, op, f"step {name!r} ({op}) lacks {', '.join(missing)}")
        unknown = sorted(set(step) - set(required) - set(optional) - set(COMMON_KEYS))
        if unknown:
            raise InputError(name, op, f"step {name!r} ({op}) has unknown keys {', '.join(unknown)}")
        if name in names:
            raise InputError(name, op, f"step name {name!r} is used twice")
        names.add(name)
        step["name"] = name
        for key, value in optional.items():
            step.setdefault(key, value)
        if op in ("thread", "fork", "loop"):
            if not isinstance(step["steps"], list):
                raise InputError(name, op, f"step {name!r} ({op}): 'steps' must be a list")
            normalise_steps(step["steps"], names, f"{name}/")
            if step.get("as") is None:
                step["as"] = name
        if op == "pv" or op == "pv_cpu":
            try:
                step["cmd"] = int(uapi.pv_cmd(step["cmd"])) if not isinstance(step["cmd"], int) else step["cmd"]
            except ValueError as err:
                raise InputError(name, op, f"step {name!r}: {err}") from None
