"""s390 KVM asynchronous teardown of protected guests (KVM_PV_ASYNC_CLEANUP_PREPARE/PERFORM).

Every expected value comes from the reference model for the target's probed capabilities;
on targets without protected virtualization each scenario is skipped with the precise reason.
"""

from __future__ import annotations

import pytest

from harness.kvm.scenarios import PV_SCENARIOS

pytestmark = pytest.mark.kvm_pv


@pytest.mark.parametrize("scenario", PV_SCENARIOS, ids=[s.name for s in PV_SCENARIOS])
def test_pv_scenario(scenario, run_kvm_scenario) -> None:
    run_kvm_scenario(scenario)
