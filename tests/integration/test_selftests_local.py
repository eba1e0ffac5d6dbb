"""Integration: build the x86_64 KVM selftests natively and run a representative subset on this machine's /dev/kvm.

Nothing here knows in advance which program passes or fails on this host: the assertions are about
the reporting (a pass, a failure whose JUnit message is the program's own assertion text, a timeout
with the last output, expectations written from one run turning that run's failures into xfail in
the next while a failure they do not list still fails). The full run of every program is done by
hand (``kvmh selftests --target local``), not in CI.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.selftests.build import SelftestBuild, build_selftests
from harness.workflows.selftests import selftest_pytest_args
from harness.selftests.expectations import Expectations, write_expectations

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Programs that finish within seconds on a 2-core machine (pass, fail or skip, whatever this host says).
SUBSET = ("kvm_create_max_vcpus", "guest_memfd_test", "x86_64/cpuid_test", "x86_64/debug_regs",
          "x86_64/set_sregs_test", "x86_64/hyperv_clock", "kvm_binary_stats_test", "x86_64/platform_info_test")
LONG_PROGRAM = "set_memory_region_test"


def _kvm_reason():
    if platform.machine() != "x86_64":
        return f"the native build is for x86_64 hosts, this is {platform.machine()}"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not accessible: no local KVM to run the selftests on"
    if shutil.which("gcc") is None:
        return "gcc is missing"
    return None


@pytest.fixture(scope="module")
def x86_build() -> SelftestBuild:
    reason = _kvm_reason()
    if reason:
        pytest.skip(reason)
    from harness.kernel.source import linux_source

    build = build_selftests(linux_source(), "x86_64")
    print(f"x86_64 selftests: {len(build.programs)} programs, {'cached' if build.cached else 'built'} "
          f"in {build.duration_s:.1f} s")
    return build


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    junit = tmp_path / f"{name}.xml"
    args = selftest_pytest_args(junitxml=junit) + ["--kvm-target", "local", "-p", "no:cacheprovider", *extra]
    proc = subprocess.run([sys.executable, "-m", "pytest", *args], capture_output=True, text=True, timeout=1200)
    assert junit.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    programs = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        if props.get("selftest_program") and not props.get("selftest_subtest"):
            programs[props["selftest_program"]] = (case, props)
    return proc, programs


def _verdict(case: ET.Element) -> tuple[str, str, str]:
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            kind = "xfailed" if tag == "skipped" and node.get("type") == "pytest.xfail" else tag
            return kind, node.get("message") or "", node.text or ""
    return "passed", "", ""


def _includes(programs) -> list[str]:
    out = []
    for program in programs:
        out += ["--selftest-include", program]
    return out


def test_subset_reports_passes_failures_and_expectations(x86_build: SelftestBuild, tmp_path: Path) -> None:
    subset = [p for p in SUBSET if p in x86_build.programs]
    assert len(subset) >= 5, f"the tree lacks most of {SUBSET}"
    proc, programs = _run(tmp_path, "first", *_includes(subset))
    assert set(programs) == set(subset), proc.stdout[-3000:]
    verdicts = {p: _verdict(case) for p, (case, _) in programs.items()}
    print({p: v[0] for p, v in verdicts.items()})
    passed = [p for p, v in verdicts.items() if v[0] == "passed"]
    failed = [p for p, v in verdicts.items() if v[0] == "failure"]
    assert passed, f"no program passed on this host: {verdicts}"
    assert failed, f"no program failed on this host: {verdicts}"
    for program in failed:
        message = verdicts[program][1]
        props = programs[program][1]
        assert message and program in message
        # The JUnit message is the program's own assertion text, not a generic "exit status 254".
        own = props["selftest_reason"].strip().splitlines()[-1]
        assert own in message or own in verdicts[program][2], f"{program}: {message!r} vs {own!r}"
    assert proc.returncode == 1

    # Expectations from this run: the next run reports no change ...
    expect = tmp_path / "host.expect"
    write_expectations(tmp_path / "first.xml", expect)
    written = Expectations.load(expect)
    for program in failed:
        assert written.get(program).outcome == "fail"
    proc2, programs2 = _run(tmp_path, "second", "--kvm-expectations", str(expect), *_includes(subset))
    for program in failed:
        assert _verdict(programs2[program][0])[0] == "xfailed", f"{program}: {_verdict(programs2[program][0])}"
    assert proc2.returncode == 0, proc2.stdout[-3000:]

    # ... and a failure the file does not list still fails.
    if len(failed) < 2:
        pytest.skip(f"only one program failed on this host ({failed}): cannot split known and new failures")
    known, new = failed[0], failed[1]
    lines = [ln for ln in expect.read_text().splitlines() if not ln.startswith(new + " ")]
    expect.write_text("\n".join(lines) + "\n")
    proc3, programs3 = _run(tmp_path, "third", "--kvm-expectations", str(expect), *_includes(subset))
    assert _verdict(programs3[known][0])[0] == "xfailed"
    assert _verdict(programs3[new][0])[0] == "failure"
    assert proc3.returncode == 1


def test_timeout_is_reported_with_the_last_output(x86_build: SelftestBuild, tmp_path: Path) -> None:
    if LONG_PROGRAM not in x86_build.programs:
        pytest.skip(f"{LONG_PROGRAM} is not in this tree")
    timeout_s = 2.0
    factor = timeout_s / x86_build.timeout_s
    proc, programs = _run(tmp_path, "timeout", "--selftest-include", LONG_PROGRAM,
                          "--selftest-timeout-factor", repr(factor))
    case, props = programs[LONG_PROGRAM]
    kind, message, text = _verdict(case)
    assert kind == "failure", proc.stdout[-2000:]
    assert props["selftest_outcome"] == "timeout"
    assert message.startswith(f"{LONG_PROGRAM}: timeout after 2 s")
    assert "last output" in text and "Random seed" in text
    assert float(props["selftest_duration_s"]) < 60, "the program was not killed at its timeout"
