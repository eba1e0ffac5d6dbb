"""KTAP/TAP parser and selftest program verdicts, on recorded and synthetic logs in tests/data/ktap."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.selftests.ktap import Outcome, TestResult, parse_ktap
from harness.selftests.verdict import program_result

DATA = Path(__file__).resolve().parent.parent / "data" / "ktap"


def load(name: str) -> str:
    return (DATA / name).read_text()


def outcomes(res: TestResult) -> list[str]:
    return [s.outcome.value for s in res.subtests]


def test_every_data_file_is_named_recorded_or_synthetic() -> None:
    names = sorted(p.name for p in DATA.glob("*.log"))
    assert names, "no KTAP test data"
    assert all(n.startswith(("recorded-", "synthetic-")) for n in names)
    assert (DATA / "SOURCES.md").exists()


# ----------------------------------------------------------------------------- plain parsing


def test_clean_pass() -> None:
    root = parse_ktap(load("synthetic-clean-pass.log"))
    assert root.outcome is Outcome.PASS
    assert [s.name for s in root.subtests] == ["memop_test_read", "memop_test_write", "memop_test_key_protection"]
    assert [s.number for s in root.subtests] == [1, 2, 3]
    assert outcomes(root) == ["pass"] * 3
    assert root.subtests[0].diagnostics == ["Testing guest mode: PA-bits:ANY, VA-bits:48,  4K pages"]
    assert any("Totals" in d for d in root.diagnostics)


def test_recorded_runner_output_without_version_line() -> None:
    root = parse_ktap(load("recorded-loongarch-runner-clean-pass.log"))
    assert root.outcome is Outcome.PASS
    assert len(root.subtests) == 10
    assert root.subtests[0].name == "selftests: kvm: demand_paging_test"
    # kvm_binary_stats_test printed its own TAP, nested under the runner's "# " prefix
    stats = root.subtests[4]
    assert stats.name == "selftests: kvm: kvm_binary_stats_test"
    assert [s.name for s in stats.subtests] == ["vm0", "vm1", "vm2", "vm3"]
    assert outcomes(stats) == ["pass"] * 4
    assert any(d.startswith("Totals: pass:4") for d in stats.diagnostics)
    assert "Overall demand paging rate: 326366.862927 pgs/sec" in root.subtests[0].diagnostics


def test_recorded_s390_runner_failures_carry_the_assertion() -> None:
    root = parse_ktap(load("recorded-s390-runner-assert-excerpt.log"))
    assert [s.number for s in root.subtests] == [4, 5, 6, 7]
    assert outcomes(root) == ["fail", "fail", "pass", "fail"]
    dirty = root.subtests[1]
    assert dirty.name == "selftests: kvm: dirty_log_test"
    assert dirty.reason.startswith("==== Test Assertion Failure ====")
    assert "lib/kvm_util.c:900: ret == 0" in dirty.reason
    assert "KVM_SET_USER_MEMORY_REGION IOCTL failed," in dirty.reason
    assert "exit=254" in dirty.reason
    # the addr2line stack stays in the diagnostics, not in the message
    assert "vm_userspace_mem_region_add" not in dirty.reason
    assert any("vm_userspace_mem_region_add" in d for d in dirty.diagnostics)
    # each assertion belongs to the test it precedes, not to its neighbour
    assert "pid=245454" in root.subtests[3].reason and "pid=245454" not in dirty.reason
    assert root.outcome is Outcome.FAIL


def test_recorded_lkft_assertion() -> None:
    root = parse_ktap(load("recorded-lkft-xapic-state-assert-excerpt.log"))
    (only,) = root.subtests
    assert only.number == 46 and only.outcome is Outcome.FAIL
    assert "APIC_ID not set back to xAPIC format; wanted = 1000000, got = 1" in only.reason


def test_nested_ktap_with_printk_prefixes() -> None:
    root = parse_ktap(load("synthetic-kunit-nested-printk.log"))
    suite, skipped = root.subtests
    assert suite.name == "kvm_s390_pv_example" and suite.outcome is Outcome.FAIL
    assert outcomes(suite) == ["pass", "fail", "skip"]
    assert suite.subtests[2].reason == "requires a protected virtualization host"
    failing = suite.subtests[1]
    assert "EXPECTATION FAILED at arch/s390/kvm/pv_test.c:88" in failing.reason
    assert "pv_vm_destroy" in suite.reason
    # a parent that says "ok" but whose subtests were all skipped is a skip
    assert skipped.outcome is Outcome.SKIP and skipped.reason == "no facility 161"
    assert root.outcome is Outcome.FAIL
    assert all(not line.startswith("[") for line in root.log)


def test_parent_ok_with_failing_child_is_not_a_pass() -> None:
    text = "KTAP version 1\n1..1\n  KTAP version 1\n  1..2\n  ok 1 a\n  not ok 2 b\nok 1 parent\n"
    root = parse_ktap(text)
    assert root.subtests[0].outcome is Outcome.FAIL
    assert "b fail" in root.subtests[0].reason


def test_missing_plan_is_fine() -> None:
    root = parse_ktap(load("synthetic-missing-plan.log"))
    assert outcomes(root) == ["pass", "pass", "fail"]
    assert root.subtests[2].reason == "KVM_RUN returned -1, errno 14"
    assert not any(s.missing for s in root.subtests)


def test_late_plan_counts() -> None:
    root = parse_ktap(load("synthetic-late-plan.log"))
    assert outcomes(root) == ["pass"] * 3 and root.outcome is Outcome.PASS
    short = parse_ktap(load("synthetic-late-plan-short.log"))
    assert [s.number for s in short.subtests] == [1, 2, 3, 4]
    assert [s.missing for s in short.subtests] == [False, False, True, True]
    assert short.outcome is Outcome.CRASHED


def test_directives() -> None:
    root = parse_ktap(load("synthetic-directives.log"))
    assert outcomes(root) == ["pass", "xfail", "xpass", "xfail", "error", "timeout", "skip"]
    by_name = {s.name: s for s in root.subtests}
    assert by_name["known_broken"].reason == "waiting for the ultravisor fix"
    assert by_name["broken_setup"].reason == "could not open /sys/firmware/uv/prot_virt_host"
    assert by_name["slow_destroy"].reason == "30 seconds"
    assert by_name["lower_case_skip"].reason == "no PV host"
    assert root.outcome is Outcome.TIMEOUT


def test_unknown_directive_falls_back_to_ok_not_ok() -> None:
    root = parse_ktap("TAP version 13\n1..2\nok 1 a # rcode=0\nnot ok 2 b # exit=1\n")
    assert outcomes(root) == ["pass", "fail"]
    assert root.subtests[0].reason == "rcode=0" and root.subtests[1].reason == "exit=1"


def test_bail_out_marks_the_rest_not_run() -> None:
    root = parse_ktap(load("synthetic-bail-out.log"))
    assert root.outcome is Outcome.FAIL
    assert root.reason.startswith("Bail out! KVM_S390_PV_COMMAND")
    assert [s.missing for s in root.subtests] == [False, True, True, True]
    assert all("Bail out!" in s.reason for s in root.subtests[1:])


def test_skip_all_plan() -> None:
    root = parse_ktap(load("synthetic-tcg-no-kvm-skip-all.log"))
    assert root.outcome is Outcome.SKIP
    assert root.reason == "Cannot open /dev/kvm: No such file or directory"
    assert root.subtests == []


def test_no_tap_at_all_is_an_error_not_a_pass() -> None:
    root = parse_ktap("hello\nworld\n")
    assert root.outcome is Outcome.ERROR
    assert root.diagnostics == ["hello", "world"]


def test_harness_names_come_from_run_markers() -> None:
    root = parse_ktap(load("synthetic-ucontrol-all-skipped-exit0.log"))
    assert [s.name for s in root.subtests] == [
        "uc_kvm.uc_sie_assertions",
        "uc_kvm.uc_attr_mem_limit",
        "uc_kvm.uc_no_dirty_log",
        "uc_kvm.uc_map_unmap",
        "global.uc_cap_hpage",
    ]
    assert outcomes(root) == ["skip"] * 5
    assert root.outcome is Outcome.SKIP


def test_harness_failure_message_and_diagnostics() -> None:
    root = parse_ktap(load("synthetic-harness-fail.log"))
    failed = root.find("uc_kvm.uc_map_unmap")
    assert failed is not None and failed.outcome is Outcome.FAIL
    assert "ucas map result -1 not expected" in failed.reason
    assert "FAIL  uc_kvm" not in failed.reason
    assert any("Expected 0 (0) == rc (-1)" in d for d in failed.diagnostics)
    assert not any("Expected 0" in d for d in root.find("uc_kvm.uc_gprs").diagnostics)


# ----------------------------------------------------------------------------- truncated output


def test_crash_mid_run_is_flagged_not_dropped() -> None:
    root = parse_ktap(load("synthetic-crash-mid-run-printk.log"))
    assert root.outcome is Outcome.CRASHED
    suite, second = root.subtests
    assert suite.name == "kvm_s390_gmap" and suite.outcome is Outcome.CRASHED and suite.missing
    assert outcomes(suite) == ["pass", "pass", "crashed", "crashed"]
    running = suite.subtests[2]
    # the oops printed while test 3 ran is kept with test 3
    assert any("Unable to handle kernel pointer dereference" in d for d in running.diagnostics)
    assert any("Kernel panic - not syncing" in d for d in running.diagnostics)
    assert second.number == 2 and second.outcome is Outcome.CRASHED


def test_truncated_nested_program_under_runner() -> None:
    root = parse_ktap(load("synthetic-runner-nested-tap-crash.log"))
    stats, uc = root.subtests
    assert stats.outcome is Outcome.FAIL and stats.reason == "exit=139"
    assert outcomes(stats) == ["pass", "pass", "crashed", "crashed"]
    assert uc.outcome is Outcome.SKIP
    assert root.outcome is Outcome.FAIL


def test_negative_complete_log_has_no_missing_tests() -> None:
    """The other side of the crash tests: a complete log must not invent missing tests."""
    root = parse_ktap(load("recorded-loongarch-runner-clean-pass.log"))
    assert not any(r.missing for r in root.walk())
    assert all(not r.outcome.is_failure for r in root.walk())


def test_truncated_plain_output() -> None:
    root = parse_ktap("TAP version 13\n1..3\nok 1 a\n")
    assert outcomes(root) == ["pass", "crashed", "crashed"]
    assert root.outcome is Outcome.CRASHED


def test_syslog_and_caller_prefixes_are_stripped() -> None:
    text = "<6>[   12.345678][    T1] TAP version 13\n<6>[   12.345679][    T1] 1..1\n<6>[   12.3457][  T1] ok 1 x\n"
    root = parse_ktap(text)
    assert outcomes(root) == ["pass"] and root.subtests[0].name == "x"


# ----------------------------------------------------------------------------- program verdicts


def test_program_skip_all_exit_4() -> None:
    res = program_result("kvm_create_max_vcpus", load("synthetic-tcg-no-kvm-skip-all.log"), 4)
    assert res.name == "kvm_create_max_vcpus"
    assert res.outcome is Outcome.SKIP
    assert res.reason == "Cannot open /dev/kvm: No such file or directory"


def test_program_tprot_plan_then_skip() -> None:
    res = program_result("tprot", load("synthetic-tprot-plan5-skip.log"), 4)
    assert res.outcome is Outcome.SKIP
    assert res.reason == "Cannot open /dev/kvm: No such file or directory"
    assert len(res.subtests) == 5
    assert outcomes(res) == ["skip"] * 5
    assert all(s.reason.startswith("not run: program skipped") for s in res.subtests[1:])


def test_program_all_skipped_with_exit_0_is_a_skip() -> None:
    res = program_result("ucontrol_test", load("synthetic-ucontrol-all-skipped-exit0.log"), 0)
    assert res.outcome is Outcome.SKIP
    assert res.reason == "/dev/kvm not available or ucontrol not supported"


def test_program_totals_line_alone_decides_skip() -> None:
    text = "TAP version 13\n# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:5 error:0\n"
    assert program_result("t", text, 0).outcome is Outcome.SKIP


def test_program_assertion_without_tap() -> None:
    res = program_result("async_destroy_test", load("synthetic-assertion-no-tap.log"), 254)
    assert res.outcome is Outcome.FAIL
    assert res.reason.splitlines() == [
        "==== Test Assertion Failure ====",
        "s390/async_destroy_test.c:214: rc == 0",
        "pid=1345 tid=1345 errno=22 - Invalid argument",
        "KVM_PV_ASYNC_CLEANUP_PREPARE failed, rc: 0x1 rrc: 0x2a",
    ]
    assert res.subtests == []


def test_program_timeout_keeps_last_lines_and_marks_the_running_test() -> None:
    res = program_result("async_destroy_test", load("synthetic-timeout-truncated.log"), None, timed_out=True)
    assert res.outcome is Outcome.TIMEOUT
    assert "# waiting for PERFORM to return" in res.reason
    assert outcomes(res) == ["pass", "pass", "timeout", "crashed"]
    assert any("PREPARE done" in d for d in res.subtests[2].diagnostics)


def test_program_killed_by_signal() -> None:
    text = "TAP version 13\n1..3\nok 1 a\n# about to run b\n"
    res = program_result("t", text, -11)
    assert res.outcome is Outcome.CRASHED
    assert res.reason.startswith("killed by SIGSEGV")
    assert outcomes(res) == ["pass", "crashed", "crashed"]
    assert program_result("t", text, 128 + 6).reason.startswith("killed by SIGABRT")


def test_program_bail_out() -> None:
    res = program_result("pv_test", load("synthetic-bail-out.log"), 1)
    assert res.outcome is Outcome.FAIL
    assert res.reason.startswith("Bail out! KVM_S390_PV_COMMAND")
    assert all(s.reason.startswith("not run: Bail out!") for s in res.subtests[1:])


def test_program_exit_1_names_the_failing_subtest() -> None:
    res = program_result("ucontrol_test", load("synthetic-harness-fail.log"), 1)
    assert res.outcome is Outcome.FAIL
    assert res.reason.startswith("uc_kvm.uc_map_unmap: ")


def test_program_exit_0_but_failures_reported_is_a_fail() -> None:
    res = program_result("t", "TAP version 13\n1..2\nok 1 a\nnot ok 2 b\n", 0)
    assert res.outcome is Outcome.FAIL
    assert "b fail" in res.reason


def test_program_exit_0_with_short_plan_is_an_error() -> None:
    res = program_result("t", load("synthetic-late-plan-short.log"), 0)
    assert res.outcome is Outcome.ERROR
    assert outcomes(res) == ["pass", "pass", "error", "error"]


def test_program_exit_1_with_all_tap_passing_is_still_a_fail() -> None:
    res = program_result("t", load("synthetic-clean-pass.log"), 1)
    assert res.outcome is Outcome.FAIL
    assert res.reason.startswith("exit status 1")


def test_program_no_tap_exit_0_passes_and_exit_4_skips_with_last_line() -> None:
    assert program_result("old_style", "Testing guest mode\nDone.\n", 0).outcome is Outcome.PASS
    res = program_result("old_style", "KVM_CAP_S390_PROTECTED not available, skipping test\n", 4)
    assert res.outcome is Outcome.SKIP
    assert res.reason == "KVM_CAP_S390_PROTECTED not available, skipping test"


def test_program_xfail_xpass_exit_codes() -> None:
    assert program_result("t", "", 2).outcome is Outcome.XFAIL
    assert program_result("t", "", 3).outcome is Outcome.XPASS


def test_program_clean_pass_and_unknown_exit() -> None:
    assert program_result("memop", load("synthetic-clean-pass.log"), 0).outcome is Outcome.PASS
    assert program_result("memop", load("synthetic-clean-pass.log"), None).outcome is Outcome.PASS
    assert program_result("memop", "", None).outcome is Outcome.ERROR


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.log")))
def test_every_log_parses_and_keeps_every_line(name: str) -> None:
    text = load(name)
    root = parse_ktap(text)
    assert len(root.log) == len(text.splitlines())
    for res in root.walk():
        assert isinstance(res.outcome, Outcome)
