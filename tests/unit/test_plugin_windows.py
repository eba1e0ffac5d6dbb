"""The plugin's per-test kernel log windows, expected splats, flaky retries and JUnit evidence."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

FAKE_TARGET_CONFTEST = '''
import pytest
from pathlib import Path
from harness.targets.base import CommandResult, Target, TargetFacts

KERNEL_LOG = []

WARN = """WARNING: CPU: 1 PID: 4242 at arch/s390/kvm/pv.c:312 kvm_s390_pv_deinit_vm+0x1a/0x60 [kvm]
Modules linked in: kvm
CPU: 1 PID: 4242 Comm: agent Not tainted 6.12.0 #1
Call Trace:
 [<000003ff8012345a>] kvm_s390_pv_deinit_vm+0x1a/0x60 [kvm]
 [<000003ff80123500>] kvm_s390_handle_pv+0x100/0x200 [kvm]
 [<000003ff80123600>] kvm_arch_vm_ioctl+0x90/0x300 [kvm]
 [<0000000000412345>] __s390x_sys_ioctl+0xa0/0xe0
---[ end trace 0000000000000000 ]---"""


class FakeTarget(Target):
    spec = "fake"
    kind = "fake"
    arch = "s390x"
    reads = 0

    def start(self): pass
    def close(self): pass
    def put(self, local, remote, mode=None): pass
    def get(self, remote, local): pass
    def run(self, command, timeout=60.0, *, stdin=None, on_output=None):
        return CommandResult(command, 0, "", "", 0.0)
    def facts(self):
        return TargetFacts(target="fake", kind="fake", arch="s390x", kernel_release="6.12.0")
    def dmesg_cursor(self):
        FakeTarget.reads += 1
        return len(KERNEL_LOG)
    def dmesg_since(self, cursor):
        return "\\n".join(KERNEL_LOG[cursor:])
    def dmesg_read(self, after):
        FakeTarget.reads += 1
        return "\\n".join(KERNEL_LOG[after:]), len(KERNEL_LOG)


@pytest.fixture(scope="session")
def kvm_target():
    return FakeTarget()


@pytest.fixture
def kernel_log():
    return KERNEL_LOG
'''


@pytest.fixture
def fake(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(FAKE_TARGET_CONFTEST)
    return pytester


def _junit(pytester: pytest.Pytester) -> ET.Element:
    return ET.parse(pytester.path / "junit.xml").getroot()


def test_a_splat_fails_the_test_that_caused_it(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_three='''
        from conftest import WARN
        def test_before(kvm_target, kernel_log):
            kernel_log.append("harmless line")
        def test_warns(kvm_target, kernel_log):
            kernel_log.extend(WARN.splitlines())
        def test_after(kvm_target, kernel_log):
            kernel_log.append("another harmless line")
    ''')
    result = fake.runpytest("--junitxml=junit.xml", "-o", "junit_family=xunit1")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*kernel splat during this test*", "*kvm_s390_pv_deinit_vm*"])
    cases = {c.get("name"): c for c in _junit(fake).iter("testcase")}
    assert cases["test_before"].find("failure") is None and cases["test_after"].find("failure") is None
    failure = cases["test_warns"].find("failure")
    assert failure is not None and "WARNING: CPU: 1 PID: 4242" in (failure.text or "") + failure.get("message", "")
    props = {p.get("name"): p.get("value") for p in cases["test_warns"].iter("property")}
    assert props["splat"].startswith("warning:") and "kvm_s390_pv_deinit_vm" in props["splat"]
    assert "harmless line" in "".join(cases["test_before"].find("system-out").itertext())


def test_an_expected_splat_does_not_fail(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_expected='''
        import pytest
        from conftest import WARN
        @pytest.mark.kvm_expected_splat("warning")
        def test_provokes(kvm_target, kernel_log):
            kernel_log.extend(WARN.splitlines())
    ''')
    result = fake.runpytest("--junitxml=junit.xml", "-o", "junit_family=xunit1")
    result.assert_outcomes(passed=1)
    props = {p.get("name"): p.get("value") for p in _junit(fake).iter("property")}
    assert props["expected_splat"].startswith("warning:")


def test_one_kernel_log_read_per_test_and_none_for_skips(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_reads='''
        import pytest
        from conftest import FakeTarget
        def test_a(kvm_target): pass
        def test_b(kvm_target): pytest.skip("no PV here")
        def test_c(kvm_target): pass
        def test_count(kvm_target):
            assert FakeTarget.reads == 3  # first cursor, end of test_a, end of test_c
    ''')
    fake.runpytest().assert_outcomes(passed=3, skipped=1)


def test_retry_reports_flaky(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_flaky='''
        calls = []
        def test_sometimes(kvm_target):
            calls.append(1)
            assert len(calls) > 1, "first attempt fails"
        def test_always(kvm_target):
            assert False, "broken"
    ''')
    result = fake.runpytest("--kvm-retry-failed", "-v", "--junitxml=junit.xml", "-o", "junit_family=xunit1")
    result.stdout.fnmatch_lines(["*test_sometimes FLAKY*"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1 and outcomes.get("flaky") == 1 and "passed" not in outcomes
    cases = {c.get("name"): c for c in _junit(fake).iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_sometimes"].iter("property")}
    assert "first attempt fails" in props["flaky"]
    assert cases["test_always"].find("failure") is not None


def test_retry_sets_up_afresh_and_reports_a_failing_retry(fake: pytest.Pytester) -> None:
    """The second attempt gets new function fixtures; an error in it is reported, not swallowed."""
    fake.makepyfile(test_retry='''
        import pytest
        setups = []
        attempts = []

        @pytest.fixture
        def scratch():
            setups.append(1)
            yield {"fresh": True}

        def test_needs_fresh_fixture(kvm_target, scratch):
            attempts.append(1)
            assert scratch.pop("fresh"), "fixture reused"
            assert len(attempts) > 1, "first attempt fails"

        def test_retry_breaks_differently(kvm_target):
            attempts.append(2)
            if attempts.count(2) == 1:
                assert False, "first failure"
            raise RuntimeError("infrastructure went away in the retry")

        def test_setup_counts():
            assert len(setups) == 2
    ''')
    result = fake.runpytest("--kvm-retry-failed", "-v")
    result.stdout.fnmatch_lines(["*test_needs_fresh_fixture FLAKY*", "*test_retry_breaks_differently FAILED*",
                                 "*test_setup_counts PASSED*"])
    assert "infrastructure went away in the retry" in result.stdout.str()
