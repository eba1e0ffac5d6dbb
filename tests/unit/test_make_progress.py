"""The kernel build's progress: kbuild step lines counted against the last build's count, and its deadline."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from harness import progress, stages
from harness.kernel import build as kbuild
from harness.kernel.make_progress import expected_steps, remember_steps, run_make

FILES = ["init/main.o", "kernel/fork.o", "mm/memory.o", "arch/s390/kernel/setup.o", "vmlinux"]


def _fake_tree(root: Path, delay: float = 0.05, fail: bool = False) -> Path:
    tree = root / "tree"
    tree.mkdir()
    lines = "".join(f"\t@echo '  {'LD' if name == 'vmlinux' else 'CC'}      {name}'; sleep {delay}\n" for name in FILES)
    tail = "\t@echo 'kernel/fork.c:3:1: error: expected ; before }'; exit 2\n" if fail else ""
    (tree / "Makefile").write_text(textwrap.dedent("""\
        all:
        \t@echo 'make[1]: Entering directory'
        """) + lines + tail + "slow:\n\t@sleep 30\n")
    return tree


@pytest.fixture
def shown() -> list[str]:
    out: list[str] = []
    display = progress.configure("lines", sink=out.append, heartbeat_s=0.1)
    yield out
    display.close()
    stages.remove_listener(display.on_stage)


def test_steps_are_counted_and_shown_with_the_current_file(tmp_path: Path, shown: list[str]) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    tree = _fake_tree(tmp_path, delay=0.15)
    log = tmp_path / "build.log"
    with stages.stage("kernel build (s390x, full)"):
        status, steps, timed_out = run_make(["make", "-C", str(tree)], log, 60, stage="kernel build (s390x, full)",
                                            expected=10)
    assert (status, steps, timed_out) == (0, 5, False)
    text = log.read_text()
    assert text.startswith("$ make -C ") and "  CC      mm/memory.o" in text and "Entering directory" in text
    beats = [line for line in shown if "still running" in line]
    assert beats and any(" files of 10 files; now " in b for b in beats), shown
    assert shown[-1].startswith("kvmh: kernel build (s390x, full) done in ") and shown[-1].endswith("; 5 files\n")


def test_a_make_past_its_deadline_is_killed_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    tree = _fake_tree(tmp_path)
    monkeypatch.setattr(kbuild, "MAKE_TIMEOUT_S", 0.5)
    with pytest.raises(kbuild.BuildError, match=r"did not finish within 0 s \(log: "):
        kbuild._run_make(tree, tmp_path / "obj", ["slow"], tmp_path / "build.log", "abcdef123456")


def test_a_failed_make_names_its_first_error(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    tree = _fake_tree(tmp_path, delay=0, fail=True)
    with pytest.raises(kbuild.BuildError, match=r"kernel/fork.c:3:1: error: expected ; before \}"):
        kbuild._run_make(tree, tmp_path / "obj", ["all"], tmp_path / "build.log", "abcdef123456")


def test_expected_steps_measured_after_a_first_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMH_CACHE", str(tmp_path / "cache"))
    config = "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n" + "CONFIG_X=y\n" * 200
    estimate, measured = expected_steps("c0ffee" * 8, config)
    assert not measured and estimate >= 200
    remember_steps("c0ffee" * 8, 1234)
    assert expected_steps("c0ffee" * 8, config) == (1234, True)
