"""Checks that work by doing: compile, link and run a C program; install a tree's uapi headers.

Each probe returns None when the machine can do the thing, else one line saying what failed. The
package that fixes a failure is chosen from what the failure says, so a missing C library is named as
such (``libc6-dev-s390x-cross``), not hidden behind "the compiler is installed".
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..arch import get_arch

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) { char buf[32]; strcpy(buf, "kvmh-doctor-ok"); puts(buf); return EXIT_SUCCESS; }
"""
EXPECTED = "kvmh-doctor-ok"
TIMEOUT_S = 120
_MISSING_LIBC = re.compile(r"(\.h: No such file or directory|no include path|cannot find -lc\b|cannot find crt1\.o"
                           r"|cannot find .*crt\w*\.o)")


@dataclass(frozen=True)
class Toolchain:
    """How to build and run a static C program for one arch on this machine, and which packages provide it."""

    label: str
    compiler: str
    compiler_package: str
    libc_package: str
    runner: tuple[str, ...] = ()
    runner_package: str = ""


def toolchains() -> list[Toolchain]:
    """The native toolchain and the s390x cross one, with their Debian packages."""
    s390x = get_arch("s390x")
    return [
        Toolchain("native C compiler", "gcc", "gcc", "libc6-dev"),
        Toolchain("s390x cross compiler", f"{s390x.cross_compile}gcc", s390x.cross_package,
                  s390x.cross_libc_package, runner=("qemu-s390x",), runner_package="qemu-user"),
    ]


@dataclass(frozen=True)
class Finding:
    problem: str
    package: str


def compile_and_run(chain: Toolchain) -> Optional[Finding]:
    """Compile and statically link a small program with ``chain``, run it, and check what it prints."""
    if shutil.which(chain.compiler) is None:
        return Finding(f"{chain.compiler} not found", chain.compiler_package)
    if chain.runner and shutil.which(chain.runner[0]) is None:
        return Finding(f"{chain.runner[0]} not found (runs the test program)", chain.runner_package)
    with tempfile.TemporaryDirectory(prefix="kvmh-doctor-") as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text(PROGRAM)
        binary = Path(tmp) / "probe"
        built = _run([chain.compiler, "-static", "-O1", "-o", str(binary), str(source)])
        if built.returncode != 0:
            first = _first_error(built.stderr)
            if _MISSING_LIBC.search(built.stderr):
                return Finding(f"{chain.compiler} cannot build a C program, its C library is missing ({first})",
                               chain.libc_package)
            return Finding(f"{chain.compiler} failed on a minimal C program ({first})", chain.compiler_package)
        ran = _run([*chain.runner, str(binary)])
        if ran.returncode != 0 or ran.stdout.strip() != EXPECTED:
            how = " ".join([*chain.runner, "probe"])
            return Finding(f"`{how}` exited {ran.returncode} printing {ran.stdout.strip()[:60]!r}",
                           chain.runner_package or chain.libc_package)
    return None


def headers_install(tree: Path, arch: str) -> Optional[Finding]:
    """``make headers_install`` of ``tree`` for ``arch`` into a temporary directory."""
    karch = get_arch(arch).linux_arch
    for tool, package in (("make", "make"), ("rsync", "rsync")):
        if shutil.which(tool) is None:
            return Finding(f"{tool} not found (headers_install needs it)", package)
    with tempfile.TemporaryDirectory(prefix="kvmh-doctor-headers-") as tmp:
        done = _run(["make", "-s", "-C", str(tree), f"O={tmp}", f"ARCH={karch}", "headers_install"], timeout=600)
        if done.returncode != 0:
            return Finding(f"headers_install of {tree} failed ({_first_error(done.stderr)})", "make rsync gcc")
        if not (Path(tmp) / "usr/include/linux/kvm.h").exists():
            return Finding(f"headers_install of {tree} left no linux/kvm.h", "make rsync")
    return None


def _run(cmd: Sequence[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(cmd), 124, "", f"timed out after {timeout:.0f} s")
    except OSError as exc:
        return subprocess.CompletedProcess(list(cmd), 127, "", str(exc))


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line[:200]
    return (lines[0] if lines else "no output")[:200]
