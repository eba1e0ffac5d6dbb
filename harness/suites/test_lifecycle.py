"""Generic KVM VM lifecycle on any KVM host: repeated create/teardown by close, by exit and by SIGKILL.

Afterwards host memory must be back near its baseline and the kernel log free of splats (the shape of
fix 5ff92181577a, "simplify shutdown and fix race").
"""

from __future__ import annotations

import pytest

from harness.kvm.scenarios import LIFECYCLE_SCENARIOS


@pytest.mark.parametrize("scenario", LIFECYCLE_SCENARIOS, ids=[s.name for s in LIFECYCLE_SCENARIOS])
def test_lifecycle(scenario, run_kvm_scenario) -> None:
    run_kvm_scenario(scenario)
