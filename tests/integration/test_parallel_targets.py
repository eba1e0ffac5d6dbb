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
