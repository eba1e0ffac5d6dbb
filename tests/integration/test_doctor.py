"""``kvmh doctor`` checks by doing: a machine whose s390x cross compiler lacks its C library is named as such."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci import need

pytestmark = pytest.mark.integration

CROSS_INCLUDE = Path("/usr/s390x-linux-gnu/include")


def _doctor(prefix: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "harness.cli", "doctor"], capture_output=True, text=True,
                          timeout=300, env=env)


def test_doctor_compiles_and_runs_for_real() -> None:
    need(shutil.which("s390x-linux-gnu-gcc") is not None, "s390x-linux-gnu-gcc missing (gcc-s390x-linux-gnu)")
    need(shutil.which("qemu-s390x") is not None, "qemu-s390x missing (qemu-user)")
    proc = _doctor([], dict(os.environ))
    lines = proc.stdout.splitlines()
    assert "ok       s390x cross compiler: static C program built and run under qemu-s390x" in lines, proc.stdout
    assert "ok       native C compiler: static C program built and run" in lines, proc.stdout


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="hiding the cross C library needs root and unshare (a private mount namespace)")
def test_doctor_names_the_missing_cross_c_library() -> None:
    """The cross compiler is installed but its C library headers are hidden (an empty tmpfs over them)."""
    need(CROSS_INCLUDE.is_dir(), "s390x-linux-gnu-gcc's C library is not installed (libc6-dev-s390x-cross)")
    hide = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs kvmh-hidden {CROSS_INCLUDE} && exec "$@"', "hide"]
    proc = _doctor(hide, dict(os.environ))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if "s390x cross compiler" in line]
    assert line.startswith("MISSING"), line
    assert line.endswith("-> apt-get install libc6-dev-s390x-cross"), line
    assert "C library is missing" in line and "No such file or directory" in line, line
    assert "required piece(s) missing" in proc.stdout.splitlines()[-1]
    assert CROSS_INCLUDE.joinpath("stdio.h").exists(), "the host's headers were touched"
