"""``kvmh boot`` without ``--run`` attaches the terminal to the guest console; Ctrl-] detaches and stops QEMU."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("qemu-system-s390x") is None, reason="qemu-system-s390x missing (qemu-system-misc)")
def test_interactive_console_runs_a_command_and_detaches(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    child = pexpect.spawn(sys.executable, ["-m", "harness.cli", "boot", "--artifacts", str(artifacts)],
                          cwd=str(tmp_path), timeout=300, encoding="utf-8", codec_errors="replace")
    try:
        child.expect("Ctrl-] leaves")
        child.send("echo kvmh-$((6*7))-interactive\r")
        child.expect("kvmh-42-interactive")
        child.send("\x1d")
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    pid = int((artifacts / "qemu.pid").read_text().split()[0])
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), \
        f"QEMU {pid} outlived kvmh boot"
    assert os.path.getsize(artifacts / "console.log") > 0
