"""Parallel guests with pytest-xdist: two targets (a QEMU s390x guest and this machine) in one run.

Each worker starts its own target; the one JUnit file names the worker and the target of every test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.parallel import xdist_args
from harness.results.junit_read import read_junit
from tests.ci import need, source_tree

pytestmark = pytest.mark.integration


def _case_properties(junit: Path) -> list[dict[str, str]]:
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        out.append({"name": case.get("name"), **props})
    return out


def test_two_targets_in_one_run_name_their_target(tmp_path: Path, s390x_guest_image) -> None:
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "-q", "--target", "qemu:s390x", "--also-target", "local",
         "-j", "2", "--artifacts", str(tmp_path / "a"), "--junitxml", str(junit),
         "--", "-k", "lifecycle_exit or lifecycle_create or pv_prepare", "--selftest-include", "kvm_create_max_vcpus"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = _case_properties(junit)
    assert cases, proc.stdout[-2000:]
    assert {c["target"] for c in cases} == {"qemu:s390x", "local"}
    assert {c["worker"] for c in cases} == {"gw0", "gw1"}
    for c in cases:  # gw0 takes the first target, gw1 the second
        assert c["target"] == ("qemu:s390x" if c["worker"] == "gw0" else "local"), c
    workers = sorted(p.name for p in (tmp_path / "a").glob("*/gw*"))
    assert workers == ["gw0", "gw1"]
    assert list((tmp_path / "a").glob("*/gw0/qemu-cmdline.txt")), "the QEMU worker keeps its own artifacts"


def test_worker_count_must_cover_the_targets() -> None:
    with pytest.raises(UsageError, match="pass -j 2"):
        xdist_args(1, ["local"])
    with pytest.raises(UsageError, match="not a worker count"):
        xdist_args(0)
    assert xdist_args(1) == []
    assert xdist_args(2, ["local"])[-2:] == ["--kvm-target", "local"]


def _run(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``kvmh run ARGS`` (kvmh's options, then ``--`` and pytest's) with its own artifacts and JUnit file."""
    junit = tmp_path / f"{name}.xml"
    split = args.index("--") if "--" in args else len(args)
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", *args[:split], "--artifacts",
                           str(tmp_path / name), "--junitxml", str(junit), *args[split:]],
                          capture_output=True, text=True, timeout=900)
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, junit


def _outcomes(junit: Path) -> dict[str, str]:
    return {case_id: case.outcome for case_id, case in read_junit(junit).cases.items()}


def _suite_properties(junit: Path) -> dict[str, str]:
    suite = ET.parse(junit).getroot().find("testsuite")
    return {p.get("name"): p.get("value") for p in suite.find("properties").iter("property")}


def test_two_workers_report_what_one_reports(tmp_path: Path) -> None:
    """Real selftests with KTAP subtests on this machine's /dev/kvm: -j 2 gives -j 1's test cases and outcomes,
    the subtests as test cases of their own (naming their worker), and the target's facts."""
    need(os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is missing or not accessible")
    tree = source_tree()
    select = ["--", "--kvm-tree", str(tree), "--selftest-include", "kvm_binary_stats_test",
              "--selftest-include", "kvm_create_max_vcpus",
              "-k", "kvm_binary_stats or kvm_create_max or lifecycle_exit"]
    serial, serial_junit = _run(tmp_path, "j1", "-q", "--target", "local", *select)
    parallel, parallel_junit = _run(tmp_path, "j2", "-q", "--target", "local", "-j", "2", *select)
    one, two = _outcomes(serial_junit), _outcomes(parallel_junit)
    assert one == two, (one, two)
    subtests = [name for name in two if "kvm_binary_stats_test::" in name]
    assert subtests and all(two[name] == one[name] == "pass" for name in subtests), two
    cases = {f"{c['classname']}::{c['name']}": c for c in
             ({"classname": case.get("classname"), "name": case.get("name"),
               **{p.get("name"): p.get("value") for p in case.iter("property")}}
              for case in ET.parse(parallel_junit).getroot().iter("testcase"))}
    assert all(cases[name].get("worker") in ("gw0", "gw1") for name in subtests), [cases[n] for n in subtests]
    facts_one, facts_two = _suite_properties(serial_junit), _suite_properties(parallel_junit)
    for name in ("kernel_release", "arch", "target_kind", "harness_version"):
        assert facts_two.get(name) == facts_one.get(name) and facts_one.get(name), name
    assert serial.returncode == parallel.returncode == 0, parallel.stdout[-3000:]


def test_two_workers_still_say_why_nothing_ran(tmp_path: Path, s390x_guest_image) -> None:
    proc, junit = _run(tmp_path, "j2", "--target", "qemu:s390x", "-j", "2", "--", "-k", "pv_prepare or pv_small",
                       "--selftest-include", "kvm_create_max_vcpus")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = len(_outcomes(junit))
    assert cases >= 3 and set(_outcomes(junit).values()) == {"skip"}
    headline = f"0 of {cases} ran: no /dev/kvm on this target (QEMU TCG has no SIE)"
    assert headline in proc.stdout, proc.stdout[-3000:]
    assert _suite_properties(junit)["summary"].startswith(headline)
