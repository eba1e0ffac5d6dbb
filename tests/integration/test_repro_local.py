"""kvmh repro on a real kvm-list report: its inline syzkaller C reproducer (needs only /dev/kvm) is extracted,
compiled for x86_64 and run on the local target; the outcome is printed whichever it is."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from tests.ci import need

pytestmark = [pytest.mark.integration]
REPORT = Path(__file__).resolve().parents[1] / "data/reports/kvm-kmalloc-bug-kvm_arch_prepare_memory_region.eml"


def test_repro_runs_the_inline_reproducer_on_local(tmp_path: Path, capsys) -> None:
    if platform.machine() != "x86_64":
        pytest.skip("the report is x86_64")
    need(os.access("/dev/kvm", os.R_OK | os.W_OK), "no usable /dev/kvm on this machine")
    need(shutil.which("gcc") is not None, "gcc and make missing")
    status = main(["repro", str(REPORT), "--target", "local", "--runs", "2", "--timeout", "20",
                   "--artifacts", str(tmp_path)])
    out = capsys.readouterr().out
    assert status in (0, 1), out
    verdict = "reproduced at run" if status == 1 else "not reproduced in 2 runs"
    assert verdict in out
    run_dir = next(tmp_path.iterdir())
    for name in ("report.txt", "extracted.txt", "repro.c", "repro", "run-1.out", "dmesg-run-1.txt", "splats.txt"):
        assert (run_dir / name).is_file(), name
    assert "exit status" in (run_dir / "run-1.out").read_text()
    assert "== report ==" in (run_dir / "splats.txt").read_text()
