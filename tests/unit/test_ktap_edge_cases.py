"""KTAP edge cases where kunit_tool and the kselftest conventions disagree with a naive reading.

Each log in tests/data/ktap/synthetic-* was written for these tests (see SOURCES.md).
"""

from __future__ import annotations

from pathlib import Path

from harness.selftests.ktap import Outcome, parse_ktap
from harness.selftests.verdict import program_result

DATA = Path(__file__).resolve().parent.parent / "data" / "ktap"


def load(name: str) -> str:
    return (DATA / name).read_text()


def test_plan_zero_without_skip_is_no_tests_ran_not_a_skip() -> None:
    root = parse_ktap(load("synthetic-plan-zero-no-skip.log"))
    assert root.outcome is Outcome.ERROR
    assert "no tests ran" in root.reason and "0 tests run" in root.reason
    assert root.subtests == []


def test_plan_zero_with_skip_is_still_a_skip() -> None:
    root = parse_ktap("TAP version 14\n1..0 # SKIP no PV host\n")
    assert (root.outcome, root.reason) == (Outcome.SKIP, "no PV host")


def test_program_exit_0_with_plan_zero_is_not_reported_as_ksft_skip() -> None:
    res = program_result("empty_test", load("synthetic-plan-zero-no-skip.log"), 0)
    assert res.outcome is Outcome.ERROR
    assert "KSFT_SKIP" not in res.reason and "exit status 4" not in res.reason
    assert "no tests ran" in res.reason and "exited 0" in res.reason


def test_program_exit_4_with_plan_zero_says_exit_4_and_not_the_plan() -> None:
    res = program_result("empty_test", load("synthetic-plan-zero-no-skip.log"), 4)
    assert (res.outcome, res.reason) == (Outcome.SKIP, "exit status 4 (KSFT_SKIP)")


def test_suite_cut_off_by_a_panic_keeps_its_subtest_name() -> None:
    root = parse_ktap(load("synthetic-kunit-panic-subtest-header.log"))
    assert [s.name for s in root.subtests] == ["kvm-s390-gmap-test", "kvm-s390-uv-test", "string-stream-test"]
    crashed = root.subtests[2]
    assert crashed.outcome is Outcome.CRASHED and crashed.missing
    assert [s.outcome for s in crashed.subtests] == [Outcome.PASS, Outcome.CRASHED, Outcome.CRASHED]
    assert crashed.subtests[0].name == "string_stream_test_empty_on_creation"
    assert any("Kernel panic - not syncing" in d for d in crashed.diagnostics + crashed.subtests[1].diagnostics)
    assert root.outcome is Outcome.CRASHED
    assert "string-stream-test crashed" in root.reason


def test_kunit_failure_message_keeps_the_expectation_and_its_explanation() -> None:
    root = parse_ktap(load("synthetic-kunit-expectation-message.log"))
    failed = root.find("example_simple_test")
    assert failed is not None and failed.outcome is Outcome.FAIL
    lines = failed.reason.splitlines()
    assert lines[0] == "example_simple_test: EXPECTATION FAILED at lib/kunit/example-test.c:30"
    assert lines[1] == "Expected 1 + 1 == 3, but"
    assert "1 + 1 == 2 (0x2)" in lines and "3 == 3 (0x3)" in lines
    assert "initializing" not in failed.reason  # what came before the failure is not the message


def test_diagnostics_before_the_nested_plan_belong_to_the_suite() -> None:
    root = parse_ktap(load("synthetic-kunit-module-before-plan.log"))
    (suite,) = root.subtests
    assert suite.name == "example"
    assert "module: example" in suite.diagnostics
    first = suite.subtests[0]
    assert first.name == "example_simple_test"
    assert "module: example" not in first.diagnostics
    assert root.outcome is Outcome.PASS


def test_old_style_header_lines_belong_to_the_nested_suite() -> None:
    text = ("TAP version 14\n1..1\n    # Subtest: example\n    # module: example\n    1..1\n"
            "    ok 1 - example_simple_test\nok 1 - example\n")
    root = parse_ktap(text)
    (suite,) = root.subtests
    assert suite.name == "example" and "module: example" in suite.diagnostics
    assert suite.subtests[0].diagnostics == []
    assert root.diagnostics == []


def test_a_suite_with_no_tests_is_an_error_but_the_run_stays_a_pass() -> None:
    root = parse_ktap(load("synthetic-kunit-empty-suite.log"))
    empty, handles, old_style = root.subtests
    for suite in (empty, old_style):
        assert suite.outcome is Outcome.ERROR and suite.no_tests
        assert "no tests" in suite.reason
    assert empty.name == "kvm_s390_pv_empty" and old_style.name == "kvm_s390_pv_old_style_empty"
    assert handles.outcome is Outcome.PASS and not handles.no_tests
    assert root.outcome is Outcome.PASS
    assert program_result("kunit", load("synthetic-kunit-empty-suite.log"), 0).outcome is Outcome.PASS


def test_only_empty_suites_is_no_tests_ran() -> None:
    root = parse_ktap("KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: lonely\nok 1 lonely\n")
    assert root.subtests[0].no_tests
    assert root.outcome is Outcome.ERROR


def test_a_panic_right_after_the_subtest_line_still_names_the_suite() -> None:
    text = ("TAP version 14\n1..2\n    # Subtest: kvm-s390-uv-test\n    1..1\n    ok 1 - uv_query_test\n"
            "ok 1 - kvm-s390-uv-test\n    # Subtest: string-stream-test\n"
            "[    2.812101] Kernel panic - not syncing: Fatal exception: panic_on_oops\n")
    root = parse_ktap(text)
    crashed = root.subtests[1]
    assert (crashed.name, crashed.outcome, crashed.missing) == ("string-stream-test", Outcome.CRASHED, True)
    assert any("Kernel panic" in d for d in crashed.diagnostics)
