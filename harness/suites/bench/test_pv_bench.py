"""PV teardown and reboot measurements as tests (``kvmh test -m pv_bench`` / ``-m pv_qemu``).

Sizes and repetitions come from ``KVMH_BENCH_SIZES`` (GiB, comma-separated) and ``KVMH_BENCH_REPEATS``;
the host-key document for Secure Execution images from ``KVMH_HOST_KEY_DOC``.  Each test writes its
report (JSON, and PNG for measured results) under ``KVMH_BENCH_OUT`` (default ``kvmh-artifacts/bench``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import pytest

from harness.bench.output import MEASURED
from harness.bench.pv_qemu import KillConfig, run_kill_during_perform
from harness.bench.reboot import RebootConfig, reboot_skip_reason, run_reboot
from harness.bench.teardown import DEFAULT_SIZES, PvTeardownConfig, run_pv_teardown
from harness.kvm.probe import pv_skip_reason
from harness.kvm.runner import is_model

NEEDS_SSH_HOST = ("needs an ssh:// PV host: QEMU runs the Secure Execution guest there with KVM "
                  "(target {spec} is a {kind} target)")


def _sizes(default: List[float]) -> List[float]:
    text = os.environ.get("KVMH_BENCH_SIZES", "")
    return [float(s) for s in text.split(",") if s.strip()] or list(default)


def _repeats(default: int = 3) -> int:
    return int(os.environ.get("KVMH_BENCH_REPEATS", default))


def _out() -> Path:
    return Path(os.environ.get("KVMH_BENCH_OUT", "kvmh-artifacts/bench"))


def _host_key_doc() -> Optional[Path]:
    value = os.environ.get("KVMH_HOST_KEY_DOC")
    return Path(value) if value else None


@pytest.mark.pv_bench
def test_pv_teardown_bench(request, kvm_target, kvm_caps) -> None:
    reason = pv_skip_reason(kvm_caps, "async")
    if reason:
        pytest.skip(reason)
    report = run_pv_teardown(kvm_target, PvTeardownConfig(sizes_gib=_sizes(list(DEFAULT_SIZES)),
                                                          repeats=_repeats()), kvm_caps)
    request.node.add_report_section("call", "bench", report.table())
    report.write(_out(), plot=report.result_source == MEASURED)
    assert report.samples, "no size fitted in the target's free memory"
    deviating = [s for s in report.samples if not s.get("agrees_with_model") or s.get("splats")]
    assert not deviating, "\n".join(str(s.get("error") or s.get("splats")) for s in deviating)


def _pv_qemu_skip(kvm_target, kvm_caps) -> None:
    if getattr(kvm_target, "kind", "") != "ssh":
        pytest.skip(NEEDS_SSH_HOST.format(spec=kvm_target.spec, kind=getattr(kvm_target, "kind", "?")))
    reason = reboot_skip_reason(kvm_caps, _host_key_doc())
    if reason:
        pytest.skip(reason)


@pytest.mark.pv_qemu
def test_pv_qemu_reboot(request, kvm_target, kvm_caps) -> None:
    _pv_qemu_skip(kvm_target, kvm_caps)
    config = RebootConfig(sizes_gib=_sizes([4, 8]), repeats=_repeats(1), host_key_doc=_host_key_doc(),
                          async_destroy_values=[kvm_caps.async_destroy or 1])
    report = run_reboot(kvm_target, config, kvm_caps)
    request.node.add_report_section("call", "bench", report.table())
    report.write(_out())
    failed = [s for s in report.samples if s.get("error")]
    assert report.samples and not failed, "\n".join(s["error"] for s in failed) or "no sample"


@pytest.mark.pv_qemu
def test_pv_qemu_sigkill_during_perform(request, kvm_target, kvm_caps) -> None:
    _pv_qemu_skip(kvm_target, kvm_caps)
    if is_model(kvm_target):  # pragma: no cover - excluded by the skip above
        pytest.skip("model target")
    outcome = run_kill_during_perform(kvm_target, KillConfig(size_gib=_sizes([16])[0],
                                                             host_key_doc=_host_key_doc()))
    for note in outcome.notes():
        request.node.user_properties.append(("scenario_note", note))
    assert not outcome.errors, outcome.errors
    assert not outcome.splats, outcome.splats
    assert outcome.memory_back_s is not None, "host memory did not come back"
    assert outcome.next_guest_ok, "the next SE guest did not boot"
