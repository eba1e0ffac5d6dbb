"""The CLI as a user runs it: the main job, the shipped suites per target, doctor, exit statuses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def kvmh(*args: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def suite_properties(junit: Path) -> dict[str, str]:
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {p.get("name"): p.get("value") for p in suite.iter("property") if p.get("name")}


def junit_cases(junit: Path) -> dict[str, ET.Element]:
    return {f"{c.get('classname')}::{c.get('name')}": c for c in ET.parse(junit).getroot().iter("testcase")}


def artifacts_dir(output: str) -> Path:
    lines = [line for line in output.splitlines() if line.startswith("kvmh: artifacts in ")]
    assert lines, f"no artifacts line in:\n{output[-2000:]}"
    return Path(lines[-1].split("kvmh: artifacts in ", 1)[1].strip())


def test_doctor_passes_on_a_set_up_machine(tmp_path: Path) -> None:
    result = kvmh("doctor", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all required pieces present" in result.stdout


def test_model_target_runs_every_pv_scenario_as_model_results(tmp_path: Path) -> None:
    junit = tmp_path / "out.xml"
    result = kvmh("test", "--target", "model", "--junitxml", str(junit), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    cases = junit_cases(junit)
    pv = {name: case for name, case in cases.items() if "test_pv" in name}
    assert len(pv) >= 10
    for name, case in pv.items():
        assert case.find("failure") is None and case.find("skipped") is None and case.find("error") is None, name
    assert suite_properties(junit).get("result_source") == "model"


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm on this machine")
def test_local_target_runs_the_lifecycle_scenarios_for_real(tmp_path: Path) -> None:
    result = kvmh("test", "--target", "local", "-k", "lifecycle", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    junit = artifacts_dir(result.stdout) / "junit.xml"
    lifecycle = {n: c for n, c in junit_cases(junit).items() if "lifecycle" in n}
    assert len(lifecycle) >= 3
    assert all(c.find("skipped") is None and c.find("failure") is None for c in lifecycle.values())
    assert suite_properties(junit)["target_kind"] == "local"


@pytest.mark.skipif(shutil.which("qemu-system-s390x") is None, reason="qemu-system-s390x missing (qemu-system-misc)")
def test_main_job_on_the_default_s390x_guest(tmp_path: Path) -> None:
    result = kvmh("run", cwd=tmp_path, timeout=3000)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    artifacts = artifacts_dir(result.stdout)
    assert artifacts.parent == (tmp_path / "kvmh-artifacts").resolve()
    junit = artifacts / "junit.xml"
    props = suite_properties(junit)
    assert props["arch"] == "s390x" and props["accelerator"].startswith("tcg")
    assert props["kernel_release"] and props["qemu_version"]
    cases = junit_cases(junit)
    pv = [c for n, c in cases.items() if "test_pv" in n]
    selftests = [c for n, c in cases.items() if "kvm_selftests" in n or "s390x/" in n]
    assert pv and selftests, sorted(cases)[:20]
    for case in pv:
        skipped = case.find("skipped")
        assert skipped is not None, ET.tostring(case)[:300]
        assert "no /dev/kvm on this target" in skipped.get("message", "")
    assert any("memop" in n for n in cases), "the s390x selftests must be part of the main job"
    for name in ("console.log", "qemu-cmdline.txt", "dmesg.txt", "facts.json"):
        assert (artifacts / name).exists(), name
    assert "-cpu qemu,vx=off" in (artifacts / "qemu-cmdline.txt").read_text()
    assert "kvm-harness summary" in result.stdout
    junitparser = pytest.importorskip("junitparser", reason="junitparser is a test extra: pip install -e .[test]")
    parsed = junitparser.JUnitXml.fromfile(str(junit))
    read = [case for suite in parsed for case in suite]
    assert len(read) == len(cases)
    assert all(any(isinstance(r, junitparser.Skipped) for r in case.result) for case in read if "test_pv" in
               (case.classname or "") + case.name)


@pytest.mark.skipif(shutil.which("qemu-system-s390x") is None, reason="qemu-system-s390x missing (qemu-system-misc)")
def test_boot_dry_run_prints_the_qemu_command(tmp_path: Path) -> None:
    result = kvmh("boot", "--dry-run", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "qemu-system-s390x" in result.stdout and "restrict=on,hostfwd=tcp:127.0.0.1:" in result.stdout
    assert "-no-reboot" in result.stdout and "panic=-1" in result.stdout


@pytest.mark.skipif(shutil.which("qemu-system-s390x") is None, reason="qemu-system-s390x missing (qemu-system-misc)")
def test_boot_run_returns_the_commands_status(tmp_path: Path) -> None:
    result = kvmh("boot", "--target", "qemu:s390x", "--run", "uname -m", cwd=tmp_path, timeout=900)
    assert result.returncode == 0 and result.stdout.strip() == "s390x", result.stderr
    result = kvmh("boot", "--target", "qemu:s390x", "--run", "exit 7", cwd=tmp_path, timeout=900)
    assert result.returncode == 7, result.stderr
