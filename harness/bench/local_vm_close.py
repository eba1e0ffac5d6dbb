"""Closing a VM on a local /dev/kvm against the size of its touched memslot.

For each size a fresh agent process opens ``/dev/kvm``, creates a VM, adds one memslot of N GiB whose
memory it has written (so it is really allocated), and closes the VM: the close step releases the VM
and unmaps its memslot memory.  Then it samples host MemAvailable and its memory cgroup's charge until
both are back near their values before the VM (the ``mem_watch`` agent step).  Every step is compared
with the reference model, so a failing ioctl makes the sample an error instead of a figure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..kvm.probe import pv_skip_reason
from ..kvm.scenarios import Scenario, close, create_vm, memslot, meminfo, open_kvm
from ..targets.base import Target
from .hostmem import cap_sizes, mem_available_kb
from .machine import machine_facts
from .output import BenchReport, Metric, Progress

log = logging.getLogger(__name__)

METRICS = [
    Metric("touch_s", "add memslot + write it", "ms", plot=False),
    Metric("close_s", "close VM (+ unmap)", "ms"),
    Metric("mem_back_s", "close -> host free memory back", "ms", panel="memory"),
    Metric("cgroup_back_s", "close -> cgroup charge back", "ms", panel="memory"),
]


@dataclass
class LocalCloseConfig:
    sizes_gib: Sequence[float] = (1, 2, 4)
    repeats: int = 3
    settle_s: float = 30.0


def close_scenario(size_gib: float, settle_s: float = 30.0) -> Scenario:
    """The agent steps of one measurement."""
    size_mb = int(size_gib * 1024)
    tolerance = max(128, size_mb // 10)
    steps = (
        meminfo("mem_before"),
        {"op": "cgroup_memory", "name": "cgroup_before"},
        open_kvm(), create_vm(),
        memslot(size_mb, touch_mb=size_mb, timeout_s=300),
        meminfo("mem_filled"),
        {"op": "cgroup_memory", "name": "cgroup_filled"},
        close("vm"),
        {"op": "mem_watch", "name": "mem_back", "baseline": "mem_filled", "gain_mb": size_mb,
         "cgroup_baseline": "cgroup_before",
         "tolerance_mb": tolerance, "settle_s": settle_s, "interval_ms": 20, "timeout_s": settle_s + 30},
        close("kvm"),
    )
    return Scenario(f"bench_close_{size_gib:g}g", f"close a VM with a touched {size_gib:g} GiB memslot", "kvm",
                    steps, timeout_s=600, step_timeout_s=120)


def sample_from_records(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Durations (s) and memory figures of one run, from the agent's records."""
    by_name = {r.get("name"): r for r in records}

    def seconds(name: str) -> Optional[float]:
        ns = (by_name.get(name) or {}).get("duration_ns")
        return None if ns is None else ns / 1e9

    watch = (by_name.get("mem_back") or {}).get("data") or {}
    before = ((by_name.get("mem_before") or {}).get("data") or {}).get("MemAvailable")
    filled = ((by_name.get("mem_filled") or {}).get("data") or {}).get("MemAvailable")
    cg_before = ((by_name.get("cgroup_before") or {}).get("data") or {}).get("current")
    cg_filled = ((by_name.get("cgroup_filled") or {}).get("data") or {}).get("current")
    return {
        "touch_s": seconds("memslot"),
        "close_s": seconds("close_vm"),
        "mem_back_s": None if watch.get("mem_back_ms") is None else watch["mem_back_ms"] / 1000,
        "cgroup_back_s": None if watch.get("cgroup_back_ms") is None else watch["cgroup_back_ms"] / 1000,
        "mem_used_mib": None if before is None or filled is None else round((before - filled) / 1024),
        "cgroup_charged_mib": None if cg_before is None or cg_filled is None
        else round((cg_filled - cg_before) / (1 << 20)),
        "mem_samples": watch.get("samples", [])[:100],
    }


def run_local_close(target: Target, config: LocalCloseConfig, progress: Optional[Progress] = None) -> BenchReport:
    """Measure every (size, repetition) on ``target`` (the local machine, or any KVM target)."""
    from ..kvm.probe import probe
    from ..kvm.runner import run_scenario

    caps = probe(target)
    report = BenchReport(bench="local-vm-close", title=f"closing a KVM VM with a touched memslot ({target.spec})",
                         metrics=METRICS, machine=machine_facts(), x_label="memslot size, all of it written (GiB)",
                         meta={"target": target.spec, "kernel_release": caps.kernel_release, "arch": caps.arch})
    reason = pv_skip_reason(caps, "kvm")
    if reason:
        return report.skip(reason)
    sizes, dropped = cap_sizes(config.sizes_gib, mem_available_kb(), factor=1.1)
    if dropped:
        report.notes.append(f"sizes {dropped} GiB left out: not enough free host memory")
    progress = progress or Progress(len(sizes) * config.repeats)
    for rep in range(config.repeats):
        for size in sizes:
            result = run_scenario(target, close_scenario(size, config.settle_s), caps)
            sample: Dict[str, Any] = {"size_gib": size, "rep": rep, **sample_from_records(result.run.records)}
            if not result.ok:
                sample["error"] = result.report()[-2000:]
                log.warning("%g GiB #%d deviated from the model:\n%s", size, rep, result.report())
            report.add(sample)
            progress.step(f"{size:g} GiB #{rep + 1}: close {_ms(sample['close_s'])}, "
                          f"memory back {_ms(sample['mem_back_s'])} after it")
    return report


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"
