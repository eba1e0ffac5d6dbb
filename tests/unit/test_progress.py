"""The progress layer: timed stage lines and heartbeats outside a terminal, a live bar in one, quiet/verbose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import progress, stages


@pytest.fixture
def lines() -> list[str]:
    out: list[str] = []
    display = progress.configure("lines", sink=out.append, heartbeat_s=0.2)
    yield out
    display.close()
    stages.remove_listener(display.on_stage)


def test_stage_lines_heartbeat_and_no_carriage_return(lines: list[str]) -> None:
    with stages.stage("image: s390x guest"):
        progress.update("image: s390x guest", total=4 * 2**20, unit="B", current="busybox_1.37.0-6+b9_s390x.deb")
        progress.update("image: s390x guest", advance=2 * 2**20)
        time.sleep(0.7)
    with pytest.raises(RuntimeError):
        with stages.stage("selftests build (s390x)"):
            raise RuntimeError("compiler error")
    text = "".join(lines)
    assert "\r" not in text
    assert lines[0] == "kvmh: image: s390x guest ...\n"
    beats = [line for line in lines if "still running after" in line]
    assert beats, lines
    assert "2.0 MiB of 4.0 MiB" in beats[0] and "now busybox_1.37.0-6+b9_s390x.deb" in beats[0]
    assert len(beats) <= 4, "at most one heartbeat per interval"
    done = [line for line in lines if line.startswith("kvmh: image: s390x guest done in ")]
    assert len(done) == 1 and float(done[0].split(" in ")[1].split(" s")[0]) >= 0.7
    assert lines[-1].startswith("kvmh: selftests build (s390x) FAILED in ")


def test_quiet_display_says_nothing() -> None:
    out: list[str] = []
    display = progress.configure("quiet", sink=out.append, heartbeat_s=0.05)
    try:
        with stages.stage("boot: qemu:s390x"):
            time.sleep(0.2)
    finally:
        display.close()
        stages.remove_listener(display.on_stage)
    assert out == []


def test_tty_mode_draws_a_bar_with_count_and_current_item() -> None:
    out: list[str] = []
    display = progress.configure("tty", sink=out.append)
    try:
        with stages.stage("kernel build (s390x)"):
            progress.update("kernel build (s390x)", done=120, total=480, unit="objects", current="kernel/fork.o")
            time.sleep(0.3)
            progress.update("kernel build (s390x)", done=240, current="mm/memory.o")
    finally:
        display.close()
        stages.remove_listener(display.on_stage)
    text = "".join(out)
    assert "240/480" in text and "mm/memory.o" in text and "\r" in text


def _kvmh(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_quiet_prints_only_the_summary_and_verbose_shows_debug(tmp_path: Path) -> None:
    quiet = _kvmh(["test", "--target", "model", "-q"], tmp_path)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    out = quiet.stdout.splitlines()
    assert out[0] == "=== kvm-harness summary ===", out
    assert "17 model results agree with the spec; no kernel ran" in out[1]
    assert not [line for line in out if "test session starts" in line or line.startswith("harness/suites")]
    assert quiet.stderr == ""
    verbose = _kvmh(["test", "--target", "model", "-v"], tmp_path)
    assert verbose.returncode == 0
    assert "DEBUG harness.workflows.run: pytest " in verbose.stderr
    logs = sorted((tmp_path / "kvmh-artifacts").glob("*/kvmh.log"))
    assert len(logs) == 2
    for log in logs:
        assert " DEBUG harness.workflows.run: pytest " in log.read_text(), log
    stages_json = json.loads(sorted((tmp_path / "kvmh-artifacts").glob("*/stages.json"))[0].read_text())
    assert [s["name"] for s in stages_json][0] == "boot: model"
