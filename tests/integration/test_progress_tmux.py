"""`kvmh build` in a real terminal (tmux): a live progress display that moves; Ctrl-C stops the whole build.

The build is real (the pinned linux-source, s390x, with a config fragment of its own so it is never a
cache hit); the test reads the pane twice, mid-build, then presses Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.ci import need, source_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BAR = re.compile(r"kvmh: kernel build \(s390x, full\): +\d+%\|.*\| *(\d+)/(\d+) \[")


def _tmux(*args: str, check: bool = True) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=check, timeout=30).stdout


def _pane(session: str) -> str:
    return _tmux("capture-pane", "-p", "-t", session)


def _wait_for(session: str, pattern: re.Pattern, timeout: float) -> re.Match:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = list(pattern.finditer(_pane(session)))
        if found:
            return found[-1]
        time.sleep(1)
    raise AssertionError(f"no progress bar within {timeout:.0f} s; the pane:\n{_pane(session)}")


def test_kvmh_build_shows_a_moving_bar_in_a_terminal(tmp_path: Path) -> None:
    need(shutil.which("tmux") is not None, "tmux is not installed (ci/setup.sh installs it)")
    need(shutil.which("s390x-linux-gnu-gcc") is not None, "s390x-linux-gnu-gcc missing (gcc-s390x-linux-gnu)")
    tree = source_tree()
    fragment = tmp_path / "own.config"
    fragment.write_text(f'CONFIG_LOCALVERSION="-tmux{uuid.uuid4().hex[:8]}"\n')
    session = f"kvmh-{uuid.uuid4().hex[:8]}"
    env = " ".join(f"{k}={v}" for k, v in (("KVMH_CACHE", os.environ.get("KVMH_CACHE", "")),) if v)
    command = (f"cd {tmp_path} && env {env} {sys.executable} -m harness.cli build --tree {tree} --arch s390x "
               f"--config-fragment {fragment}; echo KVMH-EXIT=$?; sleep 120")
    _tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "20", command)
    try:
        first = _wait_for(session, BAR, timeout=600)
        time.sleep(8)
        second = _wait_for(session, BAR, timeout=60)
        assert int(second.group(1)) > int(first.group(1)), (first.group(0), second.group(0))
        assert "\n" not in first.group(0), "the bar redraws one line in place"
        _tmux("send-keys", "-t", session, "C-c")
        end = time.monotonic() + 60
        while "KVMH-EXIT=" not in _pane(session) and time.monotonic() < end:
            time.sleep(1)
        pane = _pane(session)
        assert "KVMH-EXIT=" in pane, pane
        assert "KVMH-EXIT=0" not in pane, "an interrupted build reported success"
    finally:
        _tmux("kill-session", "-t", session, check=False)
