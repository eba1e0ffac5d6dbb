"""kvmh ci emit: the generated pipelines pass the engines' own schemas, and the committed examples are current."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.cli import main
from harness.workflows.ci_emit import emit, read_targets
from harness.workflows.junit_merge import merge_junit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "ci" / "examples"
SCHEMAS = {"github": "vendor.github-workflows", "gitlab": "vendor.gitlab-ci"}


def check_jsonschema() -> str:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("check-jsonschema is missing: bash ci/setup.sh installs the test extras")
        pytest.skip("check-jsonschema is not installed (pip install -e '.[test]')")
    return found


@pytest.mark.parametrize("engine", ["github", "gitlab"])
@pytest.mark.parametrize("nightly", [None, "https://example.org/linux-next.git"])
def test_generated_pipeline_passes_the_engine_schema(engine, nightly, tmp_path):
    out = tmp_path / f"{engine}.yml"
    out.write_text(emit(engine, EXAMPLES / "targets.txt", nightly))
    proc = subprocess.run([check_jsonschema(), "--builtin-schema", SCHEMAS[engine], str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    assert text.count("qemu-s390x") >= 1 and "ssh://ci@lpar1" in text and "kvmh ci merge" in text
    assert ("kvmh nightly" in text) == bool(nightly)


def test_schema_rejects_a_broken_pipeline(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(emit("github", EXAMPLES / "targets.txt").replace("runs-on:", "run-on:"))
    proc = subprocess.run([check_jsonschema(), "--builtin-schema", SCHEMAS["github"], str(bad)], capture_output=True)
    assert proc.returncode != 0


@pytest.mark.parametrize("engine,name", [("github", "github-workflow.yml"), ("gitlab", "gitlab-ci.yml")])
def test_committed_examples_are_what_emit_writes(engine, name):
    assert (EXAMPLES / name).read_text() == emit(engine, EXAMPLES / "targets.txt")


def test_targets_file_runner_labels(tmp_path):
    targets = read_targets(EXAMPLES / "targets.txt")
    assert [t.target for t in targets] == ["qemu:s390x", "local", "ssh://ci@lpar1"]
    assert targets[0].runner == ("ubuntu-24.04",) and targets[2].runner == ("self-hosted", "s390x", "lpar-pool")


def test_bad_targets_file_is_a_one_line_usage_error(tmp_path, capsys):
    bad = tmp_path / "targets.txt"
    bad.write_text("qemu:s390x\nqemu:sparc\n")
    assert main(["ci", "emit", "github", "--targets", str(bad)]) == 3
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and err.count("\n") == 1
    assert main(["ci", "emit", "gitlab", "--targets", str(tmp_path / "missing")]) == 3


def test_merge_names_the_target_of_each_case(tmp_path):
    for target in ("qemu:s390x", "local"):
        (tmp_path / f"junit-{target.replace(':', '-')}.xml").write_text(
            f"<testsuite name='pytest'><properties><property name='target' value='{target}'/></properties>"
            f"<testcase classname='m' name='t'/></testsuite>")
    out = tmp_path / "merged.xml"
    assert merge_junit(sorted(tmp_path.glob("junit-*.xml")), out) == 2
    names = [c.find("properties/property[@name='target']").get("value")
             for c in ET.parse(out).getroot().iter("testcase")]
    assert sorted(names) == ["local", "qemu:s390x"]
