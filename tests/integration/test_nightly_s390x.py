"""Two nights of ``kvmh nightly`` on QEMU s390x, booting a harness-built kernel.

A local git repository stands in for linux-next: each night is a commit tagged ``next-YYYYMMDD`` carrying a
test that runs inside the s390x guest. The second night's commit breaks it and makes the guest kernel WARN
(LKDTM, built into the harness's default s390x config), so the history holds a real regression and a real
splat fingerprint from the booted kernel. The build step copies the harness's cached s390x kernel (a kernel
build per night would double this test's time without testing anything the kernel-build tests do not).
"""

from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.workflows.history import History

from tests.nightly_tree import commit_night, git, kvmh, render_in_chromium

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TARGET = "qemu:s390x"

GUEST_TEST = '''
import pathlib

HERE = pathlib.Path(__file__).parent


def test_answer_in_guest(kvm_target):
    kvm_target.put(HERE / "answer", "/tmp/answer")
    if (HERE / "splat").exists():
        kvm_target.run("echo WARNING > /sys/kernel/debug/provoke-crash/DIRECT")
    assert kvm_target.run("uname -m").stdout.strip() == "s390x"
    assert kvm_target.run("cat /tmp/answer").stdout.strip() == "42", "the answer changed"


def test_flip(kvm_target):
    assert (HERE / "flip").read_text().strip() == "pass"
'''

NIGHTS = [("2025-02-01", "42", "pass", None), ("2025-02-02", "41", "pass", "lkdtm")]


@pytest.fixture(scope="module")
def s390x_nights(tmp_path_factory: pytest.TempPathFactory, harness_s390x_kernel):
    base = tmp_path_factory.mktemp("nightly-s390x")
    repo = base / "linux-next"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "master")
    history = base / "history"
    build = (f"cp {shlex.quote(str(harness_s390x_kernel.image))} \"$KVMH_BUILD_OUT/image\" && "
             f"ln -s {shlex.quote(str(harness_s390x_kernel.modules_dir))} \"$KVMH_BUILD_OUT/modules\" && "
             "git rev-parse HEAD > \"$KVMH_BUILD_OUT/built-commit\"")
    commits, outputs = [], []
    for night, answer, flip, splat in NIGHTS:
        commits.append(commit_night(repo, night, GUEST_TEST, answer, flip, splat))
        proc = kvmh("nightly", "--tree", str(repo), "--history", str(history), "--night", night,
                    "--target", TARGET, "--boot-timeout", "900", "--build-command", build,
                    "--", "--selftest-include", "kvm_create_max_vcpus", "-k", "not test_pv",
                    "{tree}/kvmtests", cwd=base)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode in (0, 1), outputs[-1]
    return base, history, commits, outputs, harness_s390x_kernel


def test_s390x_nights_boot_the_built_kernel(s390x_nights):
    base, history, commits, outputs, kernel = s390x_nights
    assert "tip next-20250201" in outputs[0] and "tip next-20250202" in outputs[1]
    for night, commit in zip(NIGHTS, commits):
        night_dir = history / night[0] / "qemu-s390x"
        assert (night_dir / "build" / "built-commit").read_text().strip() == commit
        suite = ET.parse(night_dir / "junit.xml").getroot().find("testsuite")
        props = {p.get("name"): p.get("value") for p in suite.find("properties").iter("property")}
        assert props["kernel_release"] == kernel.release, props
        assert props["nightly_commit"] == commit and props["arch"] == "s390x", props
    with History(history, create=False) as h:
        nights = [n for n in h.nights() if n.target == TARGET]
        assert [n.night for n in nights] == [n[0] for n in NIGHTS]
        assert all(n.status != "infra" for n in nights), [(n.night, n.status) for n in nights]


def test_s390x_regression_and_real_splat_are_found(s390x_nights):
    base, history, commits, outputs, _ = s390x_nights
    assert "1 regressions, 1 new splats" in outputs[1], outputs[1]
    proc = kvmh("history", "--history", str(history), "--test", "test_answer_in_guest", "--json", cwd=base)
    assert proc.returncode == 0, proc.stderr
    answer = {a["target"]: a for a in json.loads(proc.stdout)["failing_since"]}[TARGET]
    assert answer["failing"] and answer["first_bad_tip"] == "next-20250202"
    assert answer["first_bad_commit"] == commits[1] and answer["last_good_tip"] == "next-20250201"
    splats = json.loads(kvmh("history", "--history", str(history), "--new-splats", "--json", cwd=base).stdout)
    found = [s for s in splats["new_splats"] if s["target"] == TARGET]
    assert len(found) == 1 and found[0]["tip"] == "next-20250202", splats
    assert "lkdtm" in found[0]["fingerprint"], found
    index = json.loads((history / "index.json").read_text())
    second = next(n for n in index["nights"] if n["night"] == "2025-02-02" and n["target"] == TARGET)
    guest = next(v for k, v in second["tests"].items() if k.endswith("::test_answer_in_guest"))
    assert guest["outcome"] == "fail" and guest["splats"] == [found[0]["fingerprint"]]


def test_s390x_history_report_renders(s390x_nights, tmp_path: Path):
    _, history, _, _, _ = s390x_nights
    dom, (width, height) = render_in_chromium(history / "report.html", tmp_path)
    assert dom.find_all_rows("nights") == len(NIGHTS)
    assert 'href="2025-02-02/qemu-s390x/junit.xml"' in dom.text and "next-20250202" in dom.text
    assert width >= 800 and height >= 600
