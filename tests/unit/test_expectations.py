"""Unit tests for per-host selftest expectations: the file format, the judgement table, writing from JUnit."""

from __future__ import annotations

import textwrap

import pytest

from harness.errors import UsageError
from harness.selftests.expectations import (
    Expectation,
    Expectations,
    ResultRecord,
    expectations_from_junit,
    expectations_from_results,
    judge,
    write_expectations,
)

SAMPLE = textwrap.dedent('''\
    # host: kvm_pvm, 2 cores
    x86_64/cpuid_test   fail  "CPUID differs under this hypervisor"
    guest_memfd_test    fail  "guest_memfd flags differ on 6.12"   # trailing comment
    "s390x/cmma_test::GET_CMMA_BITS: basic calls" skip "no CMMA as guest-3"
    hardware_disable_test timeout "runs for minutes"
    kvm_create_max_vcpus pass
    ''')


def test_parse_sample():
    exp = Expectations.parse(SAMPLE, "host.expect")
    assert len(exp) == 5
    cpuid = exp.get("x86_64/cpuid_test")
    assert cpuid == Expectation("x86_64/cpuid_test", "fail", "CPUID differs under this hypervisor", "host.expect:2")
    sub = exp.get("s390x/cmma_test", "GET_CMMA_BITS: basic calls")
    assert sub is not None and sub.outcome == "skip" and sub.program == "s390x/cmma_test"
    assert exp.get("kvm_create_max_vcpus").reason == ""
    assert exp.get("s390x/cmma_test") is None


@pytest.mark.parametrize("line,needle", [
    ("prog crashed \"never\"", "crashes and splats are never expected"),
    ("prog", "expected 'program"),
    ("prog fail \"a\" extra", "expected 'program"),
    ("prog fail \"unterminated", "quote"),
])
def test_parse_errors_name_file_and_line(line, needle):
    with pytest.raises(UsageError) as err:
        Expectations.parse("# ok\n" + line + "\n", "f.expect")
    assert str(err.value).startswith("f.expect:2:")
    assert needle in str(err.value)


def test_duplicate_line_is_refused():
    with pytest.raises(UsageError, match="listed twice"):
        Expectations.parse("a fail \"x\"\na pass\n", "f")


def test_render_parse_roundtrip():
    exp = Expectations.parse(SAMPLE)
    again = Expectations.parse(exp.render("header line"))
    assert {k: (v.outcome, v.reason) for k, v in again.entries.items()} == \
        {k: (v.outcome, v.reason) for k, v in exp.entries.items()}
    tricky = Expectations([Expectation('p::a "quoted" name', "fail", 'says "no" \\ twice')])
    back = Expectations.parse(tricky.render())
    assert back.get("p", 'a "quoted" name').reason == 'says "no" \\ twice'


def test_load_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read expectations file"):
        Expectations.load(tmp_path / "nope")


def _exp(outcome: str) -> Expectation:
    return Expectation("prog", outcome, "known", "f:1")


@pytest.mark.parametrize("actual,expected,verdict", [
    # no expectation: the usual mapping
    ("pass", None, "passed"), ("fail", None, "failed"), ("skip", None, "skipped"), ("xfail", None, "xfailed"),
    ("crashed", None, "failed"), ("timeout", None, "failed"), ("error", None, "failed"),
    # expected pass
    ("pass", "pass", "passed"), ("fail", "pass", "failed"), ("skip", "pass", "failed"),
    ("timeout", "pass", "failed"),
    # expected fail
    ("fail", "fail", "xfailed"), ("pass", "fail", "failed"), ("crashed", "fail", "failed"),
    ("timeout", "fail", "failed"), ("error", "fail", "failed"), ("skip", "fail", "skipped"),
    # expected skip
    ("skip", "skip", "skipped"), ("pass", "skip", "passed"), ("fail", "skip", "failed"),
    # expected timeout
    ("timeout", "timeout", "xfailed"), ("pass", "timeout", "failed"), ("crashed", "timeout", "failed"),
    ("fail", "timeout", "failed"),
])
def test_judge_table(actual, expected, verdict):
    result = judge(actual, "why", _exp(expected) if expected else None)
    assert result.outcome == verdict


def test_judge_messages():
    known = judge("fail", "CPUID 0x1.0 differ\nmore", _exp("fail"))
    assert known.message == 'known fail ("known"): CPUID 0x1.0 differ'
    xpass = judge("pass", "", _exp("fail"))
    assert "XPASS(strict)" in xpass.message and "f:1" in xpass.message
    crash = judge("crashed", "killed by SIGSEGV", _exp("fail"))
    assert "killed by SIGSEGV" in crash.message and "never expected" in crash.message
    gone = judge("skip", "Cannot open /dev/kvm", _exp("pass"))
    assert "expected pass" in gone.message and "Cannot open /dev/kvm" in gone.message
    assert judge("skip", "Cannot open /dev/kvm").message == "Cannot open /dev/kvm"


def test_harness_skips_are_never_judged():
    assert judge("skip", "budget used up", _exp("pass"), harness_skip=True).outcome == "skipped"


def test_judge_accepts_enum_values():
    from harness.selftests.ktap import Outcome

    assert judge(Outcome.FAIL, "x", _exp("fail")).outcome == "xfailed"


def test_expectations_from_results_rules():
    exp = expectations_from_results([
        ResultRecord("a", None, "pass"),
        ResultRecord("b", None, "fail", "boom\nstack"),
        ResultRecord("b", "sub1", "fail", "sub boom"),
        ResultRecord("b", "sub2", "pass"),
        ResultRecord("c", None, "crashed", "SIGSEGV"),
        ResultRecord("d", None, "skip", "Cannot open /dev/kvm"),
        ResultRecord("e", None, "skip", "budget", harness_skip=True),
        ResultRecord("f", None, "xfail", "known"),
        ResultRecord("g", None, "timeout", "timed out"),
    ])
    got = {k: (v.outcome, v.reason) for k, v in exp.entries.items()}
    assert got == {
        "a": ("pass", ""),
        "b": ("fail", "boom"),
        "b::sub1": ("fail", "sub boom"),
        "d": ("skip", "Cannot open /dev/kvm"),
        "f": ("fail", "known"),
        "g": ("timeout", "timed out"),
    }


JUNIT = textwrap.dedent('''\
    <?xml version="1.0" encoding="utf-8"?>
    <testsuites><testsuite name="pytest" tests="4">
     <testcase classname="harness.suites.kvm_selftests.kvmh" name="x86_64/cpuid_test">
      <properties><property name="selftest_program" value="x86_64/cpuid_test"/>
       <property name="selftest_outcome" value="fail"/>
       <property name="selftest_reason" value="CPUID 0x1.0 differ&#10;details"/></properties>
      <failure message="x">x</failure></testcase>
     <testcase classname="harness.suites.kvm_selftests.kvmh.s390x/ucontrol_test" name="uc_kvm.uc_gprs">
      <properties><property name="selftest_program" value="s390x/ucontrol_test"/>
       <property name="selftest_subtest" value="uc_kvm.uc_gprs"/>
       <property name="selftest_outcome" value="skip"/></properties><skipped message="unknown"/></testcase>
     <testcase classname="harness.suites.kvm_selftests.kvmh" name="s390x/ucontrol_test">
      <properties><property name="selftest_program" value="s390x/ucontrol_test"/>
       <property name="selftest_outcome" value="skip"/>
       <property name="selftest_reason" value="Cannot open /dev/kvm: No such file or directory"/></properties>
      <skipped message="m"/></testcase>
     <testcase classname="tests.unit.test_other" name="test_python"/>
    </testsuite></testsuites>
    ''')


def test_write_expectations_from_junit(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    out = tmp_path / "host.expect"
    assert write_expectations(junit, out) == 2
    exp = Expectations.load(out)
    assert exp.get("x86_64/cpuid_test").outcome == "fail"
    assert exp.get("x86_64/cpuid_test").reason == "CPUID 0x1.0 differ"
    assert exp.get("s390x/ucontrol_test").outcome == "skip"
    assert exp.get("s390x/ucontrol_test", "uc_kvm.uc_gprs") is None
    assert out.read_text().startswith("# KVM selftest expectations")
    assert len(expectations_from_junit(junit)) == 2


def test_write_expectations_without_selftests_is_a_usage_error(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="a" name="b"/></testsuite></testsuites>')
    with pytest.raises(UsageError, match="no KVM selftest results"):
        write_expectations(junit, tmp_path / "out")
    with pytest.raises(UsageError, match="cannot read JUnit"):
        write_expectations(tmp_path / "missing.xml", tmp_path / "out")
