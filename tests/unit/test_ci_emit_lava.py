"""kvmh ci emit lava: every generated job passes LAVA's own job schema (lava-common), the committed example is
current, and kvmh ci lava-cases reports each JUnit test case through lava-test-case."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.workflows.ci_emit_lava import (
    CASE_NAME_MAX, DEFAULT_DEVICE_TYPE, LAVA_REPO_PLACEHOLDER, emit_lava, lava_jobs, yaml_lines,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "ci" / "examples"
TARGETS = EXAMPLES / "targets.txt"
NIGHTLY = "https://example.org/linux-next.git"

# Runs with LAVA's schema on its path (ci/tools/lava-common/fetch.py unpacks Debian's lava-common and the
# voluptuous it was written for): every document of the file must pass lava_common.schemas.validate in strict
# mode (no unknown keys anywhere).
VALIDATE = """
import sys
import yaml
from lava_common.schemas import validate
with open(sys.argv[1]) as f:
    jobs = [job for job in yaml.safe_load_all(f) if job is not None]
if not jobs:
    sys.exit("no job in " + sys.argv[1])
for number, job in enumerate(jobs, 1):
    try:
        validate(job, strict=True)
    except Exception as err:
        sys.exit("job %d: %s: %s" % (number, type(err).__name__, err))
print(len(jobs))
"""


LAVA_LOCK = ROOT / "ci" / "tools" / "lava-common" / "lock.json"


def lava_env() -> dict[str, str]:
    """The environment in which ``sys.executable`` imports lava_common.schemas (skip, or in CI fail, without it)."""
    lock = json.loads(LAVA_LOCK.read_text())
    site = (Path(sys.prefix) / "share" / "kvmh-tools" / f"{lock['name']}-{lock['version']}"
            / "usr" / "lib" / "python3" / "dist-packages")
    env = dict(os.environ, PYTHONPATH=str(site))
    probe = subprocess.run([sys.executable, "-c", "import yaml, lava_common.schemas"], capture_output=True,
                           text=True, env=env)
    if probe.returncode != 0:
        reason = (f"LAVA's schema is not importable from {site} ({probe.stderr.strip().splitlines()[-1:]}): "
                  "run ci/tools/lava-common/fetch.py")
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; bash ci/setup.sh fetches it")
        pytest.skip(reason)
    return env


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", VALIDATE, str(path)], capture_output=True, text=True, env=lava_env())


@pytest.mark.parametrize("nightly", [None, NIGHTLY])
def test_every_generated_job_passes_lavas_schema(nightly, tmp_path):
    out = tmp_path / "lava-jobs.yaml"
    out.write_text(emit_lava(TARGETS, nightly))
    proc = validate(out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "3"
    text = out.read_text()
    assert text.count("\n---\n") == 3 and "ssh://ci@lpar1" in text and "kvmh ci lava-cases junit.xml" in text
    assert ("kvmh nightly" in text) == bool(nightly) and ("kvmh run --target" in text) != bool(nightly)


def test_out_dir_writes_one_valid_job_a_file(tmp_path, capsys):
    out = tmp_path / "jobs"
    assert main(["ci", "emit", "lava", "--targets", str(TARGETS), "--out-dir", str(out), "--lava-repo",
                 "https://git.example.com/me/kvm-harness.git", "--lava-device-type", "zvm-guest",
                 "--nightly-tree", NIGHTLY]) == 0
    files = sorted(out.glob("*.yaml"))
    assert [f.name for f in files] == ["local.yaml", "qemu-s390x.yaml", "ssh-ci-lpar1.yaml"]
    for path in files:
        proc = validate(path)
        assert proc.returncode == 0 and proc.stdout.strip() == "1", (path, proc.stdout + proc.stderr)
        text = path.read_text()
        assert "\n---" not in text and "device_type: \"zvm-guest\"" in text
        assert "https://git.example.com/me/kvm-harness.git" in text and LAVA_REPO_PLACEHOLDER not in text


def test_job_shape_ssh_device_tags_and_parameters():
    jobs = dict(lava_jobs(TARGETS))
    local = jobs["local"]
    assert local["device_type"] == DEFAULT_DEVICE_TYPE and local["tags"] == ["s390x"]
    assert jobs["ssh-ci-lpar1"]["tags"] == ["s390x", "lpar-pool"]
    assert "tags" not in jobs["qemu-s390x"]  # its only label is the GitHub-hosted image
    actions = [next(iter(a)) for a in local["actions"]]
    assert actions == ["deploy", "boot", "test"]
    assert local["actions"][0]["deploy"]["to"] == "ssh" and local["actions"][1]["boot"]["connection"] == "ssh"
    definition = local["actions"][2]["test"]["definitions"][0]
    assert definition["from"] == "inline"
    assert definition["repository"]["params"] == {"KVMH_REPO": LAVA_REPO_PLACEHOLDER, "KVMH_TARGET": "local",
                                                  "KVMH_SLUG": "local"}
    steps = definition["repository"]["run"]["steps"]
    assert steps.index("bash ci/setup.sh") < next(i for i, s in enumerate(steps) if s.startswith("kvmh run"))
    assert steps[-1] == "kvmh ci lava-cases junit.xml"


def _broken(job: dict, how: str) -> dict:
    job = copy.deepcopy(job)
    if how == "no job_name":
        del job["job_name"]
    elif how == "zero timeout":
        job["timeouts"]["job"] = {"minutes": 0}
    elif how == "action longer than the job":
        job["actions"][2]["test"]["timeout"] = {"hours": 7}
    elif how == "unknown key":
        job["actions"][1]["boot"]["login"] = "root"
    elif how == "bad definition name":
        job["actions"][2]["test"]["definitions"][0]["name"] = "kvmh on lpar"
    return job


@pytest.mark.parametrize("how,where", [
    ("no job_name", "data['job_name']"),
    ("zero timeout", "['timeouts']['job']"),
    ("action longer than the job", "Action timeout is larger than job timeout"),
    ("unknown key", "['boot']['ssh']['login']"),
    ("bad definition name", "['test']['definition']['definitions'][0]"),
])
def test_lavas_schema_rejects_a_broken_job(how, where, tmp_path):
    good = dict(lava_jobs(TARGETS))["local"]
    path = tmp_path / "good.yaml"
    path.write_text("\n".join(yaml_lines(good)) + "\n")
    assert validate(path).returncode == 0
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(yaml_lines(_broken(good, how))) + "\n")
    proc = validate(path)
    assert proc.returncode != 0, f"{how}: accepted"
    assert "job 1:" in proc.stderr and where in proc.stderr, proc.stderr


def test_committed_example_is_what_emit_writes():
    assert (EXAMPLES / "lava-jobs.yaml").read_text() == emit_lava(TARGETS)


def test_a_value_lava_cannot_quote_is_a_one_line_usage_error(tmp_path, capsys):
    quoted = tmp_path / "quoted.txt"
    quoted.write_text("qemu:s390x\n")
    capsys.readouterr()
    assert main(["ci", "emit", "lava", "--targets", str(quoted), "--lava-repo", "https://x.org/it's.git"]) == 3
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["ci", "emit", "github", "--targets", str(quoted), "--lava-repo", "https://x.org/k.git"]) == 3


LONG = "test_" + "x" * 150
JUNIT = f"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="tests.selftests.test_kvm" name="test_selftest[memop]"/>
  <testcase classname="tests.selftests.test_kvm" name="test_selftest[s390/tprot x=1]">
    <failure message="boom"/></testcase>
  <testcase classname="tests.selftests.test_kvm" name="test_selftest[s390_tprot x 1]"/>
  <testcase classname="tests.scenarios.test_async" name="test_teardown"><error message="BootError"/></testcase>
  <testcase classname="tests.scenarios.test_async" name="test_skipped"><skipped message="no PV"/></testcase>
  <testcase classname="tests.scenarios.test_async" name="test_xfail"><skipped type="pytest.xfail" message="old"/>
  </testcase>
  <testcase classname="tests.scenarios.test_async" name="{LONG}_a"/>
  <testcase classname="tests.scenarios.test_async" name="{LONG}_b"><failure message="x"/></testcase>
</testsuite></testsuites>
"""
EXPECTED_RESULTS = ["pass", "fail", "pass", "fail", "skip", "skip", "pass", "fail"]


def fake_lava_test_case(bindir: Path, exit_status: int = 0) -> Path:
    """A stand-in for LAVA's lava-test-case: appends its arguments, one call a line, to $FAKE_LAVA_LOG."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "lava-test-case"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> \"$FAKE_LAVA_LOG\"\nexit {exit_status}\n")
    script.chmod(0o755)
    return script


def test_lava_cases_calls_lava_test_case_once_per_case(tmp_path, monkeypatch, capfd):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    log = tmp_path / "calls.log"
    fake_lava_test_case(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_LAVA_LOG", str(log))
    assert main(["ci", "lava-cases", str(junit)]) == 0
    calls = [line.split() for line in log.read_text().splitlines()]
    assert len(calls) == len(EXPECTED_RESULTS)
    assert all(len(c) == 3 and c[1] == "--result" for c in calls)
    assert [c[2] for c in calls] == EXPECTED_RESULTS
    names = [c[0] for c in calls]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) and len(n) <= CASE_NAME_MAX for n in names), names
    assert names[0] == "tests.selftests.test_kvm.test_selftest_memop"
    assert names[1] == "tests.selftests.test_kvm.test_selftest_s390_tprot_x_1"
    assert names[2] == "tests.selftests.test_kvm.test_selftest_s390_tprot_x_1-2"
    assert "reported 8 test cases" in capfd.readouterr().out


def test_lava_cases_failing_call_is_an_infrastructure_error(tmp_path, monkeypatch, capfd):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    fake_lava_test_case(tmp_path / "bin", exit_status=1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_LAVA_LOG", str(tmp_path / "calls.log"))
    assert main(["ci", "lava-cases", str(junit)]) == 2
    err = capfd.readouterr().err
    assert "lava-test-case failed for 8 of 8" in err and err.count("\n") == 1


def test_lava_cases_without_lava_test_case_prints_the_calls_and_exits_2(tmp_path, monkeypatch, capsys):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["ci", "lava-cases", str(junit)]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "lava-test-case is not on PATH" in err
    lines = out.splitlines()
    assert len(lines) == len(EXPECTED_RESULTS) and all(line.startswith("lava-test-case ") for line in lines)
    assert main(["ci", "lava-cases", "--print", str(junit)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == len(EXPECTED_RESULTS) and err == ""


def test_lava_cases_bad_junit_is_a_one_line_usage_error(tmp_path, capsys):
    assert main(["ci", "lava-cases", "--print", str(tmp_path / "missing.xml")]) == 3
    assert capsys.readouterr().err.count("\n") == 1
