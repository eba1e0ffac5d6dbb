"""kvmh bisect on a real git history built here: the driver, git bisect worktree, step logic, skip mapping and
output are the real ones; only the build (a shell script) and the target (a pytest run reading the "image")
are fakes, so each step takes a fraction of a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.kernel.series import EMPTY
from harness.kernel.worktree import open_repo, prepare, repo_lock
from harness.workflows.bisect import BisectRequest, run_bisect
from harness.workflows.bisect_steps import BAD, GOOD, SKIPPED, BuildInfo, CommandRunner, StepBuildError

BUILD_SH = """#!/bin/sh
# the fake kernel build: fails when BROKEN exists, else writes the answer into the image
if [ -e BROKEN ]; then echo "drivers/kvm.c:1:1: error: expected ';' before '}' token" >&2; exit 2; fi
echo "answer=$(cat answer)" > "$1/image"
"""

TEST_PY = """
import os, pathlib, subprocess, time

def _count():
    path = pathlib.Path(os.environ["FAKE_COUNTER"])
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n

def test_answer(record_property):
    n = _count()
    hang = os.environ.get("FAKE_HANG_AT_RUN")
    if hang and int(hang) == n:
        child = subprocess.Popen(["sleep", "300"])
        pathlib.Path(os.environ["FAKE_PIDFILE"]).write_text(str(child.pid))
        time.sleep(300)
    text = pathlib.Path(os.environ["FAKE_IMAGE"]).read_text()
    answer = int(text.strip().split("=")[1])
    if pathlib.Path(os.environ["FAKE_SRC"], "OTHER").exists():
        raise RuntimeError("unrelated breakage in the vcpu setup")
    if answer == 43:
        record_property("splat", "warning: kvm_arch_vcpu_ioctl_run|kvm_vcpu_ioctl")
        return
    if answer == 44 and n % 2 == 0:
        answer = 41
    assert answer in (42, 43, 44), f"answer is {answer}"
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=Kernel Dev", "-c", "user.email=dev@example.org",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, subject: str, files: dict[str, str | None]) -> str:
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", subject)
    return git(repo, "rev-parse", "HEAD")


def kernel_like_repo(root: Path) -> tuple[Path, str]:
    repo = root / "linux"
    repo.mkdir()
    git(repo, "init", "-q")
    base = commit(repo, "Linux 6.12", {
        "Makefile": "# fake\n", "Kconfig": "# fake\n", "arch/s390/Kconfig": "# fake\n",
        "include/uapi/linux/kvm.h": "/* fake */\n", "build.sh": BUILD_SH, "tests/test_answer.py": TEST_PY,
        "answer": "42\n"})
    return repo, base


def history(repo: Path, plan: list[tuple[str, dict]]) -> list[str]:
    return [commit(repo, subject, files) for subject, files in plan]


class FakeBuilder:
    """Checks the commit out with the real cache worktree code, then runs the repository's build.sh."""

    def __init__(self, tree: Path) -> None:
        self.tree, self.repo = tree, open_repo(tree)

    def build(self, commit: str, step_dir: Path) -> BuildInfo:
        with repo_lock(self.repo):
            src = prepare(self.tree, EMPTY, commit)
            out = step_dir / "build"
            out.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(["sh", "build.sh", str(out)], cwd=src.tree, capture_output=True, text=True)
            if proc.returncode != 0:
                raise StepBuildError(f"build failed: {proc.stderr.strip()}")
        return BuildInfo(out / "image", None, src.tree, "full", 0.0)


class FakeRunner(CommandRunner):
    """The "target": a pytest run of the tree's own test against the built image (real subprocess + JUnit)."""

    def __init__(self, work: Path, **env: str) -> None:
        super().__init__(timeout_s=120)
        self.work, self.extra = work, env

    def argv(self, build: BuildInfo, run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
                "--rootdir", str(build.source), str(build.source / "tests/test_answer.py"),
                f"--junitxml={run_dir / 'junit.xml'}", "-o", "junit_family=xunit1"]

    def env(self, build: BuildInfo) -> dict[str, str]:
        return dict(os.environ, FAKE_IMAGE=str(build.image), FAKE_SRC=str(build.source),
                    FAKE_COUNTER=str(self.work / "counter"), **self.extra)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMH_CACHE", str(tmp_path / "cache"))


def request(repo: Path, good: str, bad: str, **kw) -> BisectRequest:
    return BisectRequest(tree=str(repo), good=good, bad=bad, selection="tests/test_answer.py", target="fake", **kw)


def user_state(repo: Path) -> tuple[str, str, str]:
    return (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"),
            git(repo, "for-each-ref", "refs/bisect"))


def test_finds_the_breaking_commit_and_leaves_the_tree_alone(tmp_path: Path) -> None:
    repo, base = kernel_like_repo(tmp_path)
    shas = history(repo, [(f"docs: update {i}", {f"Documentation/{i}.txt": "x\n"}) for i in range(3)]
                   + [("KVM: s390: change the answer", {"answer": "41\n"})]
                   + [(f"docs: more {i}", {f"Documentation/m{i}.txt": "y\n"}) for i in range(3)])
    before = user_state(repo)
    lines: list[str] = []
    result = run_bisect(request(repo, base, shas[-1]), FakeBuilder(repo), FakeRunner(tmp_path), tmp_path / "out",
                        echo=lines.append)
    assert result.first_bad == shas[3]
    assert result.subject == "KVM: s390: change the answer"
    assert result.author == "Kernel Dev <dev@example.org>"
    assert result.exit_status == 0
    assert user_state(repo) == before
    assert not (repo / ".git" / "BISECT_LOG").exists()
    outcomes = {s.commit: s.outcome for s in result.steps}
    assert outcomes[shas[-1]] == BAD and outcomes[base] == GOOD
    assert "git bisect start" in result.log and f"# first bad commit: [{shas[3]}]" in result.log
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert f"first bad commit: {shas[3]}" in summary and "artifacts:" in summary and "--bad" in summary
    junit = (tmp_path / "out" / "junit.xml").read_text()
    assert junit.count("<testcase") == len(result.steps) + 1 and 'value="' + shas[3] in junit
    assert "msg:AssertionError: answer is N" in json.dumps([s.reason for s in result.steps])


def test_unbuildable_commit_is_skipped_with_its_reason_and_the_bisect_converges(tmp_path: Path) -> None:
    repo, base = kernel_like_repo(tmp_path)
    shas = history(repo, [
        ("docs: one", {"Documentation/1.txt": "x\n"}),
        ("kbuild: break the build", {"BROKEN": "1\n"}),
        ("kbuild: still broken", {"Documentation/2.txt": "x\n"}),
        ("kbuild: fix the build", {"BROKEN": None}),
        ("KVM: change the answer", {"answer": "41\n"}),
        ("docs: two", {"Documentation/3.txt": "x\n"}),
    ])
    result = run_bisect(request(repo, base, shas[-1]), FakeBuilder(repo), FakeRunner(tmp_path), tmp_path / "out",
                        echo=lambda s: None)
    assert result.first_bad == shas[4]
    skipped = [s for s in result.steps if s.outcome == SKIPPED]
    assert skipped, [(s.commit[:8], s.outcome) for s in result.steps]
    assert all("expected ';' before '}' token" in s.reason and s.build_how == "failed" for s in skipped)
    assert f"git bisect skip {skipped[0].commit}" in result.log


def test_a_different_failure_is_untestable_not_bad(tmp_path: Path) -> None:
    repo, base = kernel_like_repo(tmp_path)
    shas = history(repo, [
        ("docs: one", {"Documentation/1.txt": "x\n"}),
        ("KVM: unrelated breakage", {"OTHER": "1\n"}),
        ("KVM: fix unrelated breakage", {"OTHER": None}),
        ("KVM: change the answer", {"answer": "41\n"}),
    ])
    result = run_bisect(request(repo, base, shas[-1]), FakeBuilder(repo), FakeRunner(tmp_path), tmp_path / "out",
                        echo=lambda s: None)
    assert result.first_bad == shas[3]
    other = [s for s in result.steps if s.commit == shas[1]]
    if other:  # git chose to test it: it must not count as bad
        assert other[0].outcome == "untestable" and "fails differently from --bad" in other[0].reason


def test_splat_counts_as_bad_only_when_the_bisect_is_about_it(tmp_path: Path) -> None:
    repo, base = kernel_like_repo(tmp_path)
    shas = history(repo, [("docs: one", {"Documentation/1.txt": "x\n"}),
                          ("KVM: warn in the run loop", {"answer": "43\n"}),
                          ("docs: two", {"Documentation/2.txt": "x\n"})])
    with pytest.raises(UsageError, match="shows no splat|passes at --bad"):
        run_bisect(request(repo, base, shas[-1]), FakeBuilder(repo), FakeRunner(tmp_path), tmp_path / "a",
                   echo=lambda s: None)
    result = run_bisect(request(repo, base, shas[-1], splat_kind="warning"), FakeBuilder(repo),
                        FakeRunner(tmp_path), tmp_path / "b", echo=lambda s: None)
    assert result.first_bad == shas[1]
    assert any("splat warning: kvm_arch_vcpu_ioctl_run" in s.reason for s in result.steps if s.outcome == BAD)


def test_flaky_failure_with_runs(tmp_path: Path) -> None:
    repo, base = kernel_like_repo(tmp_path)
    shas = history(repo, [("docs: one", {"Documentation/1.txt": "x\n"}),
                          ("docs: two", {"Documentation/2.txt": "x\n"}),
                          ("KVM: make the answer flaky", {"answer": "44\n"}),
                          ("docs: three", {"Documentation/3.txt": "x\n"})])
    lines: list[str] = []
    result = run_bisect(request(repo, base, shas[-1], runs=3), FakeBuilder(repo), FakeRunner(tmp_path),
                        tmp_path / "out", echo=lines.append)
    assert result.first_bad == shas[2]
    good = [s for s in result.steps if s.outcome == GOOD]
    assert good and all(s.runs == ["good"] * 3 for s in good)
    assert any(s.runs[-1] == "bad" and len(s.runs) >= 2 for s in result.steps if s.outcome == BAD)
    assert any("run 2/3" in line for line in lines)


def test_ctrl_c_mid_step_stops_the_run_and_clears_bisect_state_then_resume_finishes(tmp_path: Path) -> None:
    repo, base = kernel_like_repo(tmp_path)
    shas = history(repo, [(f"docs: {i}", {f"Documentation/{i}.txt": "x\n"}) for i in range(4)]
                   + [("KVM: change the answer", {"answer": "41\n"})]
                   + [(f"docs: more {i}", {f"Documentation/m{i}.txt": "y\n"}) for i in range(3)])
    pidfile = tmp_path / "qemu.pid"
    out = tmp_path / "out"

    def interrupt_when_hung() -> None:
        deadline = time.monotonic() + 60
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_hung, daemon=True).start()
    runner = FakeRunner(tmp_path, FAKE_HANG_AT_RUN="3", FAKE_PIDFILE=str(pidfile))
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_bisect(request(repo, base, shas[-1]), FakeBuilder(repo), runner, out, echo=lines.append)
    assert time.monotonic() - started < 60
    sleeper = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(sleeper), "the step's child process survived Ctrl-C"
    wt = tmp_path / "cache" / "kernel" / "work"
    bisect_dirs = list(wt.glob("*/bisect"))
    assert bisect_dirs and subprocess.run(["git", "-C", str(bisect_dirs[0]), "bisect", "log"],
                                          capture_output=True).returncode != 0
    state = json.loads((out / "state.json").read_text())
    assert [s["outcome"] for s in state["steps"]][-1] == "aborted"
    assert any("kvmh bisect --resume" in line for line in lines)
    assert git(repo, "for-each-ref", "refs/bisect") == ""

    resumed = run_bisect(Bisect_request_from(out), FakeBuilder(repo), FakeRunner(tmp_path), out, resume=True,
                         echo=lambda s: None)
    assert resumed.first_bad == shas[4]
    assert [s.role for s in resumed.steps][:2] == ["bad endpoint", "good endpoint"]
    assert all(s.outcome != "aborted" for s in resumed.steps)


def Bisect_request_from(out: Path) -> BisectRequest:
    from harness.workflows.bisect import Bisect

    return Bisect.load_request(out)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_bad_input_is_a_one_line_usage_error(tmp_path: Path) -> None:
    repo, base = kernel_like_repo(tmp_path)
    tip = commit(repo, "docs", {"Documentation/x.txt": "x\n"})
    with pytest.raises(UsageError, match="not a commit"):
        run_bisect(request(repo, "nosuchrev", tip), FakeBuilder(repo), FakeRunner(tmp_path), tmp_path / "o")
    with pytest.raises(UsageError, match="not an ancestor"):
        run_bisect(request(repo, tip, base), FakeBuilder(repo), FakeRunner(tmp_path), tmp_path / "o")
    with pytest.raises(UsageError, match="passes at --bad"):
        run_bisect(request(repo, base, tip), FakeBuilder(repo), FakeRunner(tmp_path), tmp_path / "o",
                   echo=lambda s: None)


def test_cli_usage_errors_exit_3_with_one_line(tmp_path: Path, capsys) -> None:
    from harness.cli import main

    assert main(["bisect", "--good", "a", "--bad", "b", "--", "-k", "x"]) == 3
    assert main(["bisect", "--tree", str(tmp_path), "--good", "a", "--bad", "b", "--", "memop"]) == 3
    assert main(["bisect", "--resume", str(tmp_path)]) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kvmh: error:")]
    assert len(err) == 3
    assert "needs --tree" in err[0] and "selftest:NAME" in err[1] and "state.json" in err[2]


def test_selftests_that_no_longer_build_are_a_failure_not_infrastructure(tmp_path: Path) -> None:
    """Exit 2 only because the selected selftests do not build at a commit: that is the test failing there."""
    from harness.selftests.pytest_items import SETUP_FAILED
    from harness.workflows.bisect_steps import result_from_junit

    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="1" errors="1">'
        '<testcase classname="kvm_selftests.kvmh" name="s390x/async_teardown_test">'
        f'<error message="{SETUP_FAILED}, so s390x/async_teardown_test did not run: kvm.h:9: #error">x</error>'
        '</testcase></testsuite></testsuites>')
    result = result_from_junit(junit, 2, 1.0, tmp_path)
    assert result.status == "fail" and result.failures and "#error" in result.failures[0]
    junit.write_text(junit.read_text().replace(SETUP_FAILED, "target unavailable: no boot"))
    assert result_from_junit(junit, 2, 1.0, tmp_path).status == "infra"
