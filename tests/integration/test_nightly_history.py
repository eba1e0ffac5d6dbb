"""kvmh nightly over three nights of a local git repository standing in for linux-next.

Each night adds a commit (tagged next-YYYYMMDD) to the repository; the second carries a regression and a new
splat in a test the tree ships. The nightly runs the real fetch, fake build (a build command), ``kvmh run``
against the model and local targets, the compare with the previous night and the history index; then
``kvmh history`` must answer the three questions and the HTML report must render in headless Chromium.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.workflows.history import History
from tests.nightly_tree import commit_night, git, kvmh, render_in_chromium


TREE_TEST = '''
import pathlib

HERE = pathlib.Path(__file__).parent


def test_answer(kvm_target, record_property):
    if (HERE / "splat").exists():
        record_property("splat", "warning: " + (HERE / "splat").read_text().strip())
    assert (HERE / "answer").read_text().strip() == "42", "the answer changed"


def test_flip(kvm_target):
    assert (HERE / "flip").read_text().strip() == "pass"
'''

SPLAT = "kvm_s390_pv_deinit_vm_async|kvm_s390_pv_perform|kvm_s390_handle_pv"
NIGHTS = [("2025-01-01", "42", "pass", None), ("2025-01-02", "41", "fail", SPLAT), ("2025-01-03", "41", "pass", SPLAT)]


@pytest.fixture(scope="module")
def nightly_history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str], list[str]]:
    base = tmp_path_factory.mktemp("nightly")
    repo = base / "linux-next"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "master")
    history = base / "history"
    commits, outputs = [], []
    for night, answer, flip, splat in NIGHTS:
        commits.append(commit_night(repo, night, TREE_TEST, answer, flip, splat))
        proc = kvmh("nightly", "--tree", str(repo), "--history", str(history), "--night", night,
                    "--target", "model", "--target", "local",
                    "--build-command", 'git rev-parse HEAD > "$KVMH_BUILD_OUT/built-commit"',
                    "--", "--selftest-include", "kvm_create_max_vcpus", "-k", "not test_pv and not test_lifecycle",
                    "{tree}/kvmtests", cwd=base)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode in (0, 1), outputs[-1]
    return base, history, commits, outputs


def test_nights_and_tips_are_indexed(nightly_history):
    base, history, commits, outputs = nightly_history
    assert "next-20250101" in outputs[0] and "tip next-20250102" in outputs[1]
    assert "2 regressions, 1 new splats" in outputs[1], outputs[1]
    with History(history, create=False) as h:
        nights = h.nights()
        assert [(n.night, n.target) for n in nights][:2] == [("2025-01-01", "model"), ("2025-01-01", "local")]
        assert {n.commit_sha for n in nights} == set(commits)
        assert all(n.status != "infra" for n in nights), [(n.target, n.status) for n in nights]
    index = json.loads((history / "index.json").read_text())
    second_model = next(n for n in index["nights"] if n["night"] == "2025-01-02" and n["target"] == "model")
    answer = next(v for k, v in second_model["tests"].items() if k.endswith("::test_answer"))
    assert answer["outcome"] == "fail" and answer["splats"] == [SPLAT]
    assert (history / "2025-01-02" / "model" / "compare.txt").read_text().count("REGRESSIONS (2)") == 1
    built = (history / "2025-01-03" / "local" / "build" / "built-commit").read_text().strip()
    assert built == commits[2]


def test_history_answers_when_it_started_failing(nightly_history):
    base, history, commits, _ = nightly_history
    proc = kvmh("history", "--history", str(history), "--test", "test_answer", "--json", cwd=base)
    assert proc.returncode == 0, proc.stderr
    answers = {a["target"]: a for a in json.loads(proc.stdout)["failing_since"]}
    assert set(answers) == {"model", "local"}
    for a in answers.values():
        assert a["failing"] and a["first_bad_tip"] == "next-20250102" and a["first_bad_commit"] == commits[1]
        assert a["last_good_tip"] == "next-20250101"
    text = kvmh("history", "--history", str(history), "--test", "test_answer", cwd=base).stdout
    assert "failing since 2025-01-02 (tip next-20250102" in text


def test_history_answers_flaky_and_new_splats(nightly_history):
    base, history, _, _ = nightly_history
    out = json.loads(kvmh("history", "--history", str(history), "--flaky", "--new-splats", "--json", cwd=base).stdout)
    flaky = {(f["test"].split("::")[-1], f["target"]) for f in out["flaky"]}
    assert flaky == {("test_flip", "model"), ("test_flip", "local")}
    assert all(f["rate"] == 1.0 for f in out["flaky"])
    assert out["new_splats"] == []  # the splat is two nights old by the third night
    second = json.loads(kvmh("history", "--history", str(history), "--new-splats", "--night", "2025-01-02",
                             "--json", cwd=base).stdout)["new_splats"]
    assert {s["fingerprint"] for s in second} == {SPLAT} and {s["tip"] for s in second} == {"next-20250102"}


def test_history_usage_errors(nightly_history, tmp_path):
    base, history, _, _ = nightly_history
    proc = kvmh("history", "--history", str(tmp_path / "none"), cwd=base)
    assert proc.returncode == 3 and "does not exist" in proc.stderr and proc.stderr.count("\n") == 1
    proc = kvmh("history", "--history", str(history), "--test", "no_such_test", cwd=base)
    assert proc.returncode == 3 and "no test matches" in proc.stderr


def test_html_report_renders_in_chromium(nightly_history, tmp_path):
    _, history, _, _ = nightly_history
    report = history / "report.html"
    dom, shot = render_in_chromium(report, tmp_path)
    rows = dom.find_all_rows("nights")
    assert rows == 6  # 3 nights x 2 targets
    assert dom.count_class("timeline", "fail") >= 4 and dom.count_class("timeline", "pass") >= 4
    assert 'href="2025-01-02/model/junit.xml"' in dom.text and "next-20250102" in dom.text
    width, height = shot
    assert width >= 800 and height >= 600
