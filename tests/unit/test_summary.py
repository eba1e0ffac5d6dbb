"""The run's one-line verdict: model results say so; a run where nothing ran says why and what to do."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from harness.kvm.caps import Capabilities
from harness.results.summary import model_line, nothing_ran

pytest_plugins = ["pytester"]

TCG = Capabilities(arch="s390x", kernel_release="6.12.57+deb13-s390x", has_kvm=False, has_sie=False)
NO_COUNTS = {o: 0 for o in ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "flaky")}


def test_nothing_ran_on_a_tcg_guest_says_why_and_what_to_do() -> None:
    assert nothing_ran(52, TCG, ["no /dev/kvm on this target (QEMU TCG has no SIE: the CPU lacks 'sie')"]) == (
        "0 of 52 ran: no /dev/kvm on this target (QEMU TCG has no SIE); run on an IBM z15+ LPAR with prot_virt=1 "
        "(--target ssh://…) or use --target local for the generic scenarios on this machine")


def test_nothing_ran_elsewhere() -> None:
    x86 = Capabilities(arch="x86_64", kernel_release="6.1.0", has_kvm=False)
    assert nothing_ran(3, x86, []).startswith("0 of 3 ran: no /dev/kvm on this target (x86_64); load kvm")
    sie = Capabilities(arch="s390x", kernel_release="6.12.0", has_kvm=False, has_sie=True)
    assert "modprobe kvm" in nothing_ran(3, sie, [])
    with_kvm = Capabilities(arch="x86_64", kernel_release="6.12.0", has_kvm=True)
    assert nothing_ran(4, with_kvm, ["not an s390x host", "not an s390x host", "other"]) == (
        "0 of 4 ran: not an s390x host; see each skip reason with -rs")


def test_model_line_counts_model_results_never_passes() -> None:
    assert model_line(dict(NO_COUNTS, passed=17), []) == "17 model results agree with the spec; no kernel ran"
    assert model_line(dict(NO_COUNTS, passed=15, failed=2, skipped=1), ["the model target runs no C selftests"]) == (
        "15 of 17 model results agree with the spec, 2 disagree; no kernel ran "
        "(1 skipped: the model target runs no C selftests)")


def test_the_model_target_run_prints_and_records_model_results(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--pyargs", "harness.suites", "--kvm-target", "model",
                                          "--junitxml=junit.xml", "-o", "junit_family=xunit1", "-p",
                                          "no:cacheprovider")
    result.assert_outcomes(passed=17, skipped=1)
    result.stdout.fnmatch_lines(["*kvm-harness summary*",
                                 "17 model results agree with the spec; no kernel ran*",
                                 "model results: passed: 17*"])
    assert not any(line.startswith("passed: 17") for line in result.stdout.lines)
    root = ET.parse(pytester.path / "junit.xml").getroot()
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["summary"].startswith("17 model results agree with the spec; no kernel ran")
    assert props["result_source"] == "model"


FAKE_NO_KVM_CONFTEST = '''
import pytest
from harness.kvm.caps import Capabilities
from harness.results.summary import CAPS_KEY
from harness.session import holder_of
from harness.targets.base import CommandResult, Target, TargetFacts


class NoKvmTarget(Target):
    spec = "qemu:s390x"
    kind = "qemu"
    arch = "s390x"
    def start(self): pass
    def close(self): pass
    def put(self, local, remote, mode=None): pass
    def get(self, remote, local): pass
    def run(self, command, timeout=60.0, *, stdin=None, on_output=None):
        return CommandResult(command, 0, "", "", 0.0)
    def facts(self):
        return TargetFacts(target="qemu:s390x", kind="qemu", arch="s390x", kernel_release="6.12.0")


@pytest.fixture(scope="session")
def kvm_target(request):
    target = NoKvmTarget()
    holder_of(request.config).target = target
    request.config.stash[CAPS_KEY] = Capabilities(arch="s390x", kernel_release="6.12.0", has_kvm=False,
                                                  has_sie=False)
    return target
'''


def _tests_that_all_skip(pytester: pytest.Pytester, count: int) -> None:
    """A conftest with a target lacking /dev/kvm, and ``count`` tests that skip for that reason."""
    pytester.makeconftest(FAKE_NO_KVM_CONFTEST)
    pytester.makepyfile(test_skips=f'''
        import pytest
        @pytest.mark.parametrize("n", range({count}))
        def test_pv(kvm_target, n):
            pytest.skip("no /dev/kvm on this target (QEMU TCG has no SIE: the CPU lacks the 'sie' feature)")
    ''')


def test_a_run_where_everything_skips_says_so_in_one_line(pytester: pytest.Pytester) -> None:
    _tests_that_all_skip(pytester, 3)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["0 of 3 ran: no /dev/kvm on this target (QEMU TCG has no SIE); run on an IBM "
                                 "z15+ LPAR with prot_virt=1 (--target ssh://…) or use --target local for the "
                                 "generic scenarios on this machine"])


XDIST = ("-n", "2", "-p", "no:cacheprovider")


def test_two_xdist_workers_give_the_model_summary_and_suite_properties(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--pyargs", "harness.suites", "--kvm-target", "model",
                                           "--junitxml=junit.xml", "-o", "junit_family=xunit1", *XDIST)
    result.assert_outcomes(passed=17, skipped=1)
    result.stdout.fnmatch_lines(["*kvm-harness summary*", "17 model results agree with the spec; no kernel ran*",
                                 "model results: passed: 17*", "*kvmh timeline*", "kvmh: stage gw*: boot: model *"])
    suite = ET.parse(pytester.path / "junit.xml").getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties").iter("property")}
    assert props["summary"].startswith("17 model results agree with the spec; no kernel ran")
    assert props["result_source"] == "model" and props["kernel_release"] == "model", props


def test_two_xdist_workers_still_say_why_nothing_ran(pytester: pytest.Pytester) -> None:
    _tests_that_all_skip(pytester, 4)
    result = pytester.runpytest_subprocess("--junitxml=junit.xml", *XDIST)
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["0 of 4 ran: no /dev/kvm on this target (QEMU TCG has no SIE); run on an IBM*"])
    suite = ET.parse(pytester.path / "junit.xml").getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties").iter("property")}
    assert props["summary"].startswith("0 of 4 ran: no /dev/kvm"), props


def test_a_plain_xdist_run_prints_no_harness_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = pytester.runpytest_subprocess(*XDIST)
    result.assert_outcomes(passed=2)
    assert "kvm-harness summary" not in result.stdout.str()
