"""The catalogue of pinned upstream fixes: which releases have them, and what a failure says."""

from __future__ import annotations

import pytest

from harness.kvm.fixes import FIXES, fix, lacks_fix_message, release_version
from harness.kvm.scenarios import SCENARIOS


@pytest.mark.parametrize("release, version", [
    ("6.3.2-200.fc38.s390x", (6, 3, 2)), ("6.12.57+deb13-s390x", (6, 12, 57)), ("6.4-rc1", (6, 4, 0)),
    ("6.1.0-27-s390x", (6, 1, 0)), ("model", None), ("", None),
])
def test_release_version(release: str, version: object) -> None:
    assert release_version(release) == version


@pytest.mark.parametrize("release, present", [
    ("6.2.16", False), ("6.3.0", False), ("6.3.2", False), ("6.3.3", True), ("6.4.0", True), ("6.12.1", True),
    ("5.19.0", False),
])
def test_small_vm_fix_by_release(release: str, present: bool) -> None:
    assert fix("292a7d6fca33").present_in(release_version(release)) is present


def test_shutdown_race_fix_by_release() -> None:
    entry = fix("5ff92181577a89ed")
    assert entry.present_in((6, 4, 7)) is False and entry.present_in((6, 4, 8)) is True
    assert entry.present_in((6, 3, 13)) is False and entry.present_in((6, 5, 0)) is True


def test_every_pinned_scenario_names_a_catalogued_fix() -> None:
    pinned = {s.fix for s in SCENARIOS.values() if s.fix}
    assert pinned and pinned <= set(FIXES)


def test_the_message_a_maintainer_can_quote() -> None:
    assert lacks_fix_message("292a7d6fca33", "6.2.0-39-s390x", "PREPARE accepted a VM of ≤ 2 GiB") == (
        'this kernel lacks fix 292a7d6fca33 ("KVM: s390: pv: fix asynchronous teardown for small VMs"; '
        "first in v6.4, backported to 6.3.3): PREPARE accepted a VM of ≤ 2 GiB; kernel 6.2.0-39-s390x predates it")
    with pytest.raises(KeyError, match="not catalogued"):
        fix("deadbeef")
