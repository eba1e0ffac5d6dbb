"""The lifecycle scenarios for real on this machine's /dev/kvm (LocalTarget), checked against the model."""

from __future__ import annotations

import os
import time

import pytest

from harness.kvm.caps import Capabilities
from harness.kvm.probe import probe, pv_skip_reason
from harness.kvm.runner import run_agent, run_scenario
from harness.kvm.scenarios import LIFECYCLE_SCENARIOS, SCENARIOS
from harness.targets.local import LocalTarget

pytestmark = pytest.mark.integration


def _kvm_unusable() -> str:
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this machine"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as err:
        return f"/dev/kvm cannot be opened: {err.strerror}"
    return ""


@pytest.fixture(scope="module")
def local() -> LocalTarget:
    reason = _kvm_unusable()
    if reason:
        pytest.skip(reason)
    target = LocalTarget()
    target.start()
    return target


@pytest.fixture(scope="module")
def local_caps(local: LocalTarget) -> Capabilities:
    return probe(local)


def test_probe_of_this_machine(local: LocalTarget, local_caps: Capabilities) -> None:
    assert local_caps.has_kvm is True
    assert local_caps.arch == local.arch
    assert local_caps.kernel_release == os.uname().release
    if local_caps.arch != "s390x":
        assert local_caps.caps == {180: 0, 217: 0, 224: 0}
        assert pv_skip_reason(local_caps).startswith("not an s390x host")
        assert local_caps.prot_virt_host is None


@pytest.mark.parametrize("scenario", LIFECYCLE_SCENARIOS, ids=[s.name for s in LIFECYCLE_SCENARIOS])
def test_lifecycle_scenario_on_local_kvm(scenario, local: LocalTarget, local_caps: Capabilities) -> None:
    start = time.monotonic()
    result = run_scenario(local, scenario, local_caps)
    assert not result.model_result
    assert result.ok, result.report()
    settle = result.run.by_name("mem_returned")
    assert settle is not None and settle["data"]["settled"] is True
    assert time.monotonic() - start < scenario.timeout_s


def test_pv_ioctls_match_the_model_on_a_non_s390_host(local: LocalTarget, local_caps: Capabilities) -> None:
    """The model also predicts a non-s390 host: KVM_S390_PV_COMMAND is ENOTTY, rc/rrc untouched."""
    if local_caps.arch == "s390x":
        pytest.skip("this check is for non-s390 hosts")
    result = run_scenario(local, SCENARIOS["pv_unknown_command"], local_caps)
    assert result.ok, result.report()
    enable = result.run.by_name("enable")
    assert (enable["errno"], enable["rc"], enable["rrc"]) == ("ENOTTY", 0xDEAD, 0xBEEF)


def test_memory_check_notices_memory_that_is_not_given_back(local: LocalTarget) -> None:
    """mem_settle must fail while 2 GiB of guest memory is still mapped and touched, and pass once freed.

    MemAvailable is host-wide; the 1 GiB tolerance absorbs what other processes do meanwhile.
    """
    run = run_agent(local, {"steps": [
        {"op": "meminfo", "name": "before"},
        {"op": "open_kvm"}, {"op": "create_vm"},
        {"op": "add_memslot", "size_mb": 2048, "touch_mb": 2048, "name": "held"},
        {"op": "mem_settle", "baseline": "before", "tolerance_mb": 1024, "settle_s": 1.0, "name": "settle_held"},
        {"op": "close", "handle": "vm", "name": "release"},
        {"op": "mem_settle", "baseline": "before", "tolerance_mb": 1024, "settle_s": 10.0, "name": "settle_freed"},
    ]}, timeout=120)
    assert run.by_name("held")["ret"] == 0
    assert run.by_name("settle_held")["data"]["settled"] is False
    assert run.by_name("settle_freed")["data"]["settled"] is True
