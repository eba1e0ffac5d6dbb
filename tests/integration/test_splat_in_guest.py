"""A real kernel WARN inside a test's window fails exactly that test, on a harness-built s390x kernel in QEMU.

The kernel is the harness's default s390x build (its base fragment has LKDTM and KALLSYMS); LKDTM's
``echo WARNING > /sys/kernel/debug/provoke-crash/DIRECT`` runs the kernel's real WARN path.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROVOKE = "echo WARNING > /sys/kernel/debug/provoke-crash/DIRECT"

TESTS = f'''
import pytest

def test_before(kvm_target):
    assert kvm_target.run("true").exit_status == 0

def test_provokes_warn(kvm_target):
    kvm_target.run("{PROVOKE}")

@pytest.mark.kvm_expected_splat("warning")
def test_provokes_expected_warn(kvm_target):
    kvm_target.run("{PROVOKE}")

def test_after(kvm_target):
    assert kvm_target.run("uname -m").stdout.strip() == "s390x"
'''


def test_real_warn_fails_only_the_test_that_caused_it(pytester: pytest.Pytester, harness_s390x_kernel) -> None:
    lkdtm_kernel = harness_s390x_kernel
    pytester.makepyfile(test_guest_warn=TESTS)
    artifacts = pytester.path / "artifacts"
    result = pytester.runpytest_subprocess(
        "--kvm-target", "qemu:s390x",
        "--kvm-kernel", str(lkdtm_kernel.image),
        "--kvm-modules", str(lkdtm_kernel.modules_dir),
        "--kvm-boot-timeout", "900",
        "--kvm-artifacts", str(artifacts),
        "--junitxml=junit.xml", "-o", "junit_family=xunit1", "-v",
        timeout=1500,
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_provokes_warn FAILED*", "*kernel splat during this test*",
                                 "*WARNING: CPU:*lkdtm*"])
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")}
    failure = cases["test_provokes_warn"].find("failure")
    assert failure is not None and "lkdtm" in (failure.text or "")
    props = {p.get("name"): p.get("value") for p in cases["test_provokes_warn"].iter("property")}
    assert props["splat"].startswith("warning:") and "lkdtm" in props["splat"]
    expected = {p.get("name"): p.get("value") for p in cases["test_provokes_expected_warn"].iter("property")}
    assert expected["expected_splat"] == props["splat"], "the same WARN must give the same fingerprint"
    for name in ("test_before", "test_after", "test_provokes_expected_warn"):
        assert cases[name].find("failure") is None, name
    suite_props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "junit.xml").getroot()
                   .find("testsuite").find("properties").iter("property")}
    assert suite_props["kernel_release"] == lkdtm_kernel.release
    assert "session_splat" not in suite_props, "attributed splats must not be reported again for the session"
    assert (artifacts / "dmesg.txt").exists()
