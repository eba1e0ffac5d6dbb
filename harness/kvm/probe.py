"""Find out in one agent call what a target offers for KVM scenarios, and why PV scenarios would skip."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from ..targets.base import Target
from . import uapi
from .caps import PV_CAPS, Capabilities, destroy_fast_from_facilities

log = logging.getLogger(__name__)

PROT_VIRT_HOST = "/sys/firmware/uv/prot_virt_host"
ASYNC_DESTROY_PARAM = "/sys/module/kvm/parameters/async_destroy"
UV_FACILITIES = "/sys/firmware/uv/query/facilities"

# Requirement levels of scenarios, weakest first.
NEEDS = ("kvm", "s390_kvm", "pv_host", "async")


def probe_steps() -> List[Dict[str, Any]]:
    """The agent steps of a probe: /dev/kvm, PV capabilities, PV sysfs files, CPU features."""
    steps: List[Dict[str, Any]] = [{"op": "open_kvm", "name": "open"}]
    steps += [{"op": "check_extension", "cap": cap, "name": f"cap{cap}"} for cap in PV_CAPS]
    steps += [
        {"op": "read_file", "path": PROT_VIRT_HOST, "name": "prot_virt_host"},
        {"op": "read_file", "path": ASYNC_DESTROY_PARAM, "name": "async_destroy"},
        {"op": "read_file", "path": UV_FACILITIES, "name": "facilities"},
        {"op": "read_file", "path": "/proc/cpuinfo", "name": "cpuinfo"},
    ]
    return steps


def _int_or_none(record: Optional[Dict[str, Any]]) -> Optional[int]:
    if not record or record.get("errno") or record.get("error"):
        return None
    try:
        return int(str(record.get("data")).strip())
    except ValueError:
        return None


def caps_from_records(records: List[Dict[str, Any]]) -> Capabilities:
    """Build Capabilities from the records of ``probe_steps()``."""
    by_name = {r.get("name"): r for r in records}
    agent = (by_name.get("agent") or {}).get("data") or {}
    arch = uapi.normalise_arch(str(agent.get("machine", "")))
    opened = by_name.get("open") or {}
    has_kvm = opened.get("errno") is None and opened.get("error") is None and opened.get("ret") is not None
    caps: Dict[int, Optional[int]] = {}
    for cap in PV_CAPS:
        record = by_name.get(f"cap{cap}") or {}
        ok = has_kvm and record.get("errno") is None and record.get("error") is None
        caps[cap] = record.get("ret") if ok else None
    cpuinfo = str((by_name.get("cpuinfo") or {}).get("data") or "")
    has_sie: Optional[bool] = None
    if arch == "s390x":
        features = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines()
                         if ln.startswith("features")), None)
        has_sie = None if features is None else "sie" in features
    facilities = by_name.get("facilities") or {}
    return Capabilities(
        arch=arch,
        kernel_release=str(agent.get("release", "")),
        has_kvm=has_kvm,
        caps=caps,
        prot_virt_host=_int_or_none(by_name.get("prot_virt_host")),
        async_destroy=_int_or_none(by_name.get("async_destroy")),
        destroy_fast=destroy_fast_from_facilities(facilities.get("data") if not facilities.get("errno") else None),
        has_sie=has_sie,
        python=str(agent.get("python", "")),
    )


def probe(target: Target) -> Capabilities:
    """One agent call (or the model target's presented host) -> Capabilities."""
    presented = getattr(target, "caps", None)
    if getattr(target, "kind", "") == "model" and isinstance(presented, Capabilities):
        return presented
    from .runner import run_agent

    run = run_agent(target, {"steps": probe_steps(), "default_timeout_s": 30}, timeout=120)
    caps = caps_from_records(run.records)
    log.info("probed %s: %s", target.spec, caps.summary())
    return caps


def pv_skip_reason(caps: Capabilities, need: str = "async") -> Optional[str]:
    """Why a scenario needing ``need`` (kvm, s390_kvm, pv_host, async) cannot run here; None if it can."""
    if need not in NEEDS:
        raise ValueError(f"unknown requirement {need!r}: use one of {', '.join(NEEDS)}")
    if need == "kvm":
        return None if caps.has_kvm else _no_kvm_reason(caps)
    if caps.arch != "s390x":
        return f"not an s390x host: protected virtualization needs IBM Z (this is {caps.arch or 'unknown'})"
    if not caps.has_kvm:
        return _no_kvm_reason(caps)
    if need == "s390_kvm":
        return None
    if caps.prot_virt_host is None:
        return f"host is not PV-capable: {PROT_VIRT_HOST} is missing (no Ultravisor)"
    if caps.prot_virt_host != 1:
        return f"host is not PV-capable: {PROT_VIRT_HOST} is {caps.prot_virt_host} (boot with prot_virt=1 on z15+)"
    if need == "pv_host":
        return None
    version = caps.version
    if caps.predates_async_teardown:
        assert version is not None
        return (f"kernel {version[0]}.{version[1]} predates async teardown "
                f"(capability {uapi.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE} unknown)")
    if caps.async_destroy == 0:
        return "kvm.async_destroy=0: asynchronous teardown is disabled on this host"
    cap = caps.cap(uapi.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE)
    if cap == 0:
        return (f"capability {uapi.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE} "
                "(KVM_CAP_S390_PROTECTED_ASYNC_DISABLE) reads 0")
    return None


def _no_kvm_reason(caps: Capabilities) -> str:
    if caps.arch == "s390x":
        if caps.has_sie is False:
            return "no /dev/kvm on this target (QEMU TCG has no SIE: the CPU lacks the 'sie' feature)"
        if caps.has_sie:
            return "no /dev/kvm on this target although the CPU has SIE: load the kvm module"
        return "no /dev/kvm on this target (QEMU TCG has no SIE)"
    return f"no /dev/kvm on this target ({caps.arch} {caps.kernel_release}): load kvm or enable virtualization"
