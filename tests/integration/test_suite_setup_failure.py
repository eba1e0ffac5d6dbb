"""A suite whose setup fails (the KVM selftest build) errors its own items; the other suites still run.

The tree is a small kernel-like tree whose selftest build fails with a real compiler error from the real
s390x cross compiler; the scenarios run on the model target, so no QEMU is needed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci import need
from tests.fakes import fake_kernel_tree

pytestmark = pytest.mark.integration

junitparser = pytest.importorskip("junitparser", reason="junitparser is a test extra: pip install -e .[test]")


def _broken_tree(root: Path) -> Path:
    tree = fake_kernel_tree(root)
    kvm = tree / "tools/testing/selftests/kvm"
    (kvm / "kvm_create_max_vcpus.c").write_text("int main(void) { return undeclared_on_purpose; }\n")
    return tree


def test_selftest_build_failure_keeps_the_other_suites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need(shutil.which("s390x-linux-gnu-gcc") is not None,
         "s390x-linux-gnu-gcc missing (Debian package gcc-s390x-linux-gnu)")
    monkeypatch.setenv("KVMH_CACHE", str(tmp_path / "cache"))
    tree = _broken_tree(tmp_path)
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "test", "--target", "model",
                           "--artifacts", str(tmp_path / "artifacts"), "--",
                           "--kvm-selftest-arch", "s390x", "--kvm-tree", str(tree), f"--junitxml={junit}"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Interrupted" not in out and "error during collection" not in out, out[-3000:]
    cases = [case for suite in junitparser.JUnitXml.fromfile(str(junit)) for case in suite]
    by_name = {case.name: case for case in cases}
    passed = [c for c in cases if c.is_passed and c.name.startswith(("test_pv_scenario", "test_lifecycle"))]
    assert len(passed) >= 10, f"the scenario suite did not run: {sorted(by_name)}"
    errored = {name: case for name, case in by_name.items() if name in ("s390x/memop", "kvm_create_max_vcpus")}
    assert set(errored) == {"s390x/memop", "kvm_create_max_vcpus"}, sorted(by_name)
    for case in errored.values():
        (result,) = case.result
        assert isinstance(result, junitparser.Error), f"{case.name}: {result!r}"
        message = result.message or ""
        assert "undeclared_on_purpose" in message and "log: " in message, message
        log_path = Path(message.split("log: ", 1)[1].split(")", 1)[0])
        assert log_path.is_file() and "undeclared_on_purpose" in log_path.read_text()
