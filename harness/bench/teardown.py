"""Protected-VM teardown against guest size on a PV host: DISABLE against PREPARE + PERFORM, and memory return.

For each size (GiB) and repetition, two agent runs, each with a fresh protected VM whose memory the agent
has written: ``disable`` times DISABLE (the synchronous path), then unmaps the memory and samples host
MemAvailable and the cgroup charge until they are back; ``async`` times PREPARE (what a reboot waits for),
starts PERFORM in a thread, unmaps the memory and samples while PERFORM runs, then joins it.  Every step
is compared with the reference model.  On the ``model`` target the same steps are evaluated by the model:
the report is labelled a model result and carries no timings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..kvm.caps import Capabilities
from ..kvm.probe import pv_skip_reason
from ..kvm.runner import is_model
from ..kvm.scenarios import (Scenario, close, create_vm, is_protected, memslot, meminfo, open_kvm, pv, thread,
                             vcpu, vcpu_closes)
from ..targets.base import Target
from .machine import machine_facts
from .output import MEASURED, MODEL, BenchReport, Metric, Progress

log = logging.getLogger(__name__)

DEFAULT_SIZES = (4, 8, 16, 32)
VARIANTS = ("disable", "async")
ASYNC_PARAM = "/sys/module/kvm/parameters/async_destroy"
METRICS = [
    Metric("disable_s", "DISABLE (sync)", "ms"),
    Metric("prepare_s", "PREPARE (reboot waits)", "ms"),
    Metric("perform_s", "PERFORM (background)", "ms"),
    Metric("mem_back_s", "teardown -> host free memory back", "ms", panel="memory"),
    Metric("cgroup_back_s", "teardown -> cgroup charge back", "ms", panel="memory"),
]


@dataclass
class PvTeardownConfig:
    sizes_gib: Sequence[float] = DEFAULT_SIZES
    repeats: int = 3
    vcpus: int = 2
    settle_s: float = 120.0
    series: str = ""


def _head(size_mb: int, vcpus: int) -> List[Dict[str, Any]]:
    return [meminfo("mem_before"), {"op": "cgroup_memory", "name": "cgroup_before"},
            open_kvm(), create_vm(), memslot(size_mb, touch_mb=size_mb, timeout_s=900),
            *[vcpu(i) for i in range(vcpus)],
            pv("ENABLE", "enable"), is_protected("protected"),
            meminfo("mem_filled"), {"op": "cgroup_memory", "name": "cgroup_filled"}]


def _watch(name: str, settle_s: float, size_mb: int) -> Dict[str, Any]:
    return {"op": "mem_watch", "name": name, "baseline": "mem_filled", "gain_mb": size_mb,
            "cgroup_baseline": "cgroup_before",
            "tolerance_mb": max(256, size_mb // 20), "settle_s": settle_s, "interval_ms": 50,
            "timeout_s": settle_s + 60}


def teardown_scenario(variant: str, size_gib: float, vcpus: int = 2, settle_s: float = 120.0) -> Scenario:
    """The agent steps of one measurement of ``variant`` (``disable`` or ``async``)."""
    size_mb = int(size_gib * 1024)
    head = _head(size_mb, vcpus)
    if variant == "disable":
        tail = [pv("DISABLE", "disable", timeout_s=900), *vcpu_closes(vcpus), close("vm"),
                _watch("mem_back", settle_s, size_mb)]
    elif variant == "async":
        tail = [pv("ASYNC_CLEANUP_PREPARE", "prepare", timeout_s=900),
                thread("performer", [pv("ASYNC_CLEANUP_PERFORM", "perform", timeout_s=900)]),
                {"op": "wait_step", "step": "perform", "name": "perform_started"},
                *vcpu_closes(vcpus), close("vm"),
                _watch("mem_back", settle_s, size_mb),
                {"op": "join", "thread": "performer", "name": "join_performer", "timeout_s": 900}]
    else:
        raise ValueError(f"unknown teardown variant {variant!r}: use {' or '.join(VARIANTS)}")
    return Scenario(f"bench_pv_{variant}_{size_gib:g}g", f"PV teardown ({variant}) of a {size_gib:g} GiB guest",
                    "async", tuple(head + tail), timeout_s=3600, step_timeout_s=300)


def sample_from_records(records: List[Dict[str, Any]], timings: bool) -> Dict[str, Any]:
    """One sample from the records: step outcomes always; durations and memory figures only when measured."""
    by_name = {r.get("name"): r for r in records}
    out: Dict[str, Any] = {"outcomes": {}}
    for name in ("enable", "disable", "prepare", "perform"):
        record = by_name.get(name)
        if record is not None:
            out["outcomes"][name] = {k: record.get(k) for k in ("ret", "errno", "rc", "rrc")}
    if not timings:
        return out
    for name in ("disable", "prepare", "perform"):
        ns = (by_name.get(name) or {}).get("duration_ns")
        out[f"{name}_s"] = None if ns is None else ns / 1e9
    watch = (by_name.get("mem_back") or {}).get("data") or {}
    out["mem_back_s"] = None if watch.get("mem_back_ms") is None else watch["mem_back_ms"] / 1000
    out["cgroup_back_s"] = None if watch.get("cgroup_back_ms") is None else watch["cgroup_back_ms"] / 1000
    out["mem_samples"] = watch.get("samples", [])[:200]
    return out


def target_meta(target: Target, caps: Capabilities, series: str) -> Dict[str, Any]:
    return {"target": target.spec, "kernel_release": caps.kernel_release, "series": series or None,
            "async_destroy": caps.async_destroy, "prot_virt_host": caps.prot_virt_host,
            "destroy_fast": caps.destroy_fast, "capabilities": caps.summary()}


def host_available_gib(target: Target) -> Optional[float]:
    """The target's MemAvailable in GiB (None on the model target)."""
    if is_model(target):
        return None
    from ..kvm.runner import run_agent

    run = run_agent(target, {"steps": [meminfo("mem")]}, timeout=60)
    data = (run.by_name("mem") or {}).get("data") or {}
    return data.get("MemAvailable", 0) / (1 << 20) if data else None


def plan_sizes(sizes: Sequence[float], available_gib: Optional[float],
               reserve_gib: float = 4.0) -> Tuple[List[float], List[float]]:
    """Sizes that fit in the host's free memory less a reserve (all of them when it is unknown)."""
    if available_gib is None:
        return list(sizes), []
    kept = [s for s in sizes if s <= available_gib - reserve_gib]
    return kept, [s for s in sizes if s not in kept]


def run_pv_teardown(target: Target, config: PvTeardownConfig, caps: Optional[Capabilities] = None,
                    progress: Optional[Progress] = None) -> BenchReport:
    """Measure (or, on the model target, evaluate) every (size, variant, repetition)."""
    from ..kvm.probe import probe
    from ..kvm.runner import run_scenario

    caps = caps or probe(target)
    model = is_model(target)
    report = BenchReport(bench="pv-teardown", title="protected VM teardown: DISABLE vs PREPARE + PERFORM",
                         metrics=METRICS, group_key="variant", result_source=MODEL if model else MEASURED,
                         machine={} if model else machine_facts(),
                         meta=target_meta(target, caps, config.series))
    reason = pv_skip_reason(caps, "async")
    if reason:
        return report.skip(reason)
    sizes, dropped = plan_sizes(config.sizes_gib, host_available_gib(target))
    if dropped:
        report.notes.append(f"sizes {dropped} GiB left out: not enough free memory on {target.spec}")
    if model:
        report.notes.append("evaluated by the reference model: step outcomes only, no timings")
    progress = progress or Progress(len(sizes) * len(VARIANTS) * config.repeats)
    for size in sizes:
        for rep in range(config.repeats):
            for variant in VARIANTS:
                scenario = teardown_scenario(variant, size, config.vcpus, config.settle_s)
                result = run_scenario(target, scenario, caps)
                sample = {"size_gib": size, "variant": variant, "rep": rep,
                          "agrees_with_model": result.comparison.ok, "splats": result.splats,
                          **sample_from_records(result.run.records, timings=not model)}
                if not result.ok:
                    sample["error"] = result.report()[-2000:]
                report.add(sample)
                progress.step(f"PV {size:g} GiB {variant} #{rep + 1}: "
                              f"{'agrees with the model' if result.ok else 'DEVIATES (see JSON)'}")
    return report
