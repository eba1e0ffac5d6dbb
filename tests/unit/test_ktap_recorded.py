"""The KTAP parser on outputs recorded from real selftest runs in the QEMU s390x TCG guest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.selftests.ktap import Outcome
from harness.selftests.verdict import program_result

RECORDED = Path(__file__).resolve().parent.parent / "data" / "ktap" / "recorded"
LOGS = sorted(RECORDED.glob("recorded-s390x-tcg-*.log"))


def load(path: Path) -> tuple[str, int]:
    header, _, output = path.read_text().partition("\n")
    status = re.search(r"exit status (\d+)", header)
    assert status, f"{path.name}: header names no exit status"
    return output, int(status.group(1))


def test_recordings_are_present() -> None:
    assert len(LOGS) >= 5


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.stem.removeprefix("recorded-s390x-tcg-"))
def test_every_recorded_tcg_program_is_a_skip_with_its_own_reason(path: Path) -> None:
    output, status = load(path)
    result = program_result(path.stem, output, status)
    assert result.outcome == Outcome.SKIP, (result.outcome, result.reason)
    assert "/dev/kvm" in result.reason or "KVM" in result.reason, result.reason
    assert not result.reason.startswith("1..0"), "the raw plan must not leak into the reason"


def test_ucontrol_test_exits_0_but_is_skipped_by_its_totals() -> None:
    output, status = load(RECORDED / "recorded-s390x-tcg-ucontrol_test.log")
    assert status == 0
    result = program_result("s390x/ucontrol_test", output, status)
    assert result.outcome == Outcome.SKIP
    assert len(result.subtests) == 5
    assert all(sub.outcome == Outcome.SKIP for sub in result.subtests)
    assert {sub.name for sub in result.subtests} >= {"global.uc_cap_hpage", "uc_kvm.uc_gprs"}


def test_tprot_plan_of_five_then_skip() -> None:
    output, status = load(RECORDED / "recorded-s390x-tcg-tprot.log")
    result = program_result("s390x/tprot", output, status)
    assert status == 4 and result.outcome == Outcome.SKIP
    assert "Cannot open /dev/kvm" in result.reason


def test_a_recorded_skip_turned_into_a_crash_is_not_a_skip() -> None:
    output, _ = load(RECORDED / "recorded-s390x-tcg-ucontrol_test.log")
    truncated = "\n".join(output.splitlines()[:8])  # cut after the second test started
    result = program_result("s390x/ucontrol_test", truncated, None, timed_out=True)
    assert result.outcome in (Outcome.TIMEOUT, Outcome.CRASHED)


def test_assertion_mark_in_the_middle_of_a_line_keeps_the_message() -> None:
    output = (
        "Random seed: 0x6b8b4567\n"
        "Testing guest mode: PA-bits:ANY, VA-bits:48,  4K pages\n"
        "All vCPUs rendezvoused....==== Test Assertion Failure ====\n"
        "  max_guest_memory_test.c:98: !ret\n"
        "  pid=4242 tid=4244 errno=12 - Cannot allocate memory\n"
        "     1\t0x0000000000402a3c: vcpu_worker at max_guest_memory_test.c:98\n"
        "  KVM_RUN failed, rc: -1\n"
    )
    result = program_result("max_guest_memory_test", output, 254)
    assert result.outcome == Outcome.FAIL
    assert "KVM_RUN failed, rc: -1" in result.reason and "max_guest_memory_test.c:98" in result.reason
    assert "vcpu_worker at" not in result.reason


def test_the_kselftest_harness_own_timeout_is_a_timeout() -> None:
    output = (
        "TAP version 13\n1..2\n# Starting 2 tests from 1 test cases.\n"
        "#  RUN           fix_hypercall.disable_quirk ...\n#            OK  fix_hypercall.disable_quirk\n"
        "ok 1 fix_hypercall.disable_quirk\n#  RUN           fix_hypercall.enable_quirk ...\n"
        "# enable_quirk: Test terminated by timeout\n#          FAIL  fix_hypercall.enable_quirk\n"
        "not ok 2 fix_hypercall.enable_quirk\n# FAILED: 1 / 2 tests passed.\n"
        "# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0\n"
    )
    result = program_result("x86_64/fix_hypercall_test", output, 1)
    assert result.outcome == Outcome.TIMEOUT and "enable_quirk" in result.reason
    assert [s.outcome for s in result.subtests] == [Outcome.PASS, Outcome.TIMEOUT]
    failing = output.replace("# enable_quirk: Test terminated by timeout\n", "# enable_quirk: assertion\n")
    assert program_result("x86_64/fix_hypercall_test", failing, 1).outcome == Outcome.FAIL
