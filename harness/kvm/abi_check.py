"""Check ``harness.kvm.uapi`` against real kernel uapi headers with a compiled C probe (``abi_probe.c``).

The probe is built for the target architecture (``s390x-linux-gnu-gcc -static`` run under ``qemu-s390x``,
or the host ``gcc`` for the host's own architecture) and prints ``name=value`` lines.
"""

from __future__ import annotations

import logging
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from ..errors import InfrastructureError
from . import uapi

log = logging.getLogger(__name__)

PROBE_SOURCE = Path(__file__).with_name("abi_probe.c")
COMPILE_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ProbeToolchain:
    """How to build and run the probe for one architecture."""

    arch: str
    compiler: str
    runner: Optional[str]  # user-mode emulator, None when the host runs the binary itself
    apt_packages: str

    def missing(self) -> Optional[str]:
        """A one-line reason when a tool is missing, else None."""
        for tool in (self.compiler, self.runner):
            if tool and shutil.which(tool) is None:
                return f"{tool} not found: apt-get install {self.apt_packages}"
        return None


def toolchain(arch: str) -> ProbeToolchain:
    """The compiler (and emulator) for ``arch`` on this host."""
    arch = uapi.check_ioc_arch(arch)
    host = uapi.normalise_arch(platform.machine())
    if arch == host:
        return ProbeToolchain(arch, "gcc", None, "gcc")
    if arch == "s390x":
        return ProbeToolchain(arch, "s390x-linux-gnu-gcc", "qemu-s390x", "gcc-s390x-linux-gnu qemu-user")
    if arch == "x86_64":
        return ProbeToolchain(arch, "x86_64-linux-gnu-gcc", "qemu-x86_64", "gcc-x86-64-linux-gnu qemu-user")
    raise InfrastructureError(f"no probe toolchain known for {arch} on a {host} host")


def build_probe(arch: str, include_dir: Path, out_dir: Path) -> Path:
    """Compile the probe against ``include_dir`` (an installed uapi tree) and return the binary."""
    chain = toolchain(arch)
    reason = chain.missing()
    if reason:
        raise InfrastructureError(reason)
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / f"abi_probe-{arch}"
    cmd = [chain.compiler, "-static", "-O0", "-Wall", "-Werror", "-I", str(include_dir),
           "-o", str(binary), str(PROBE_SOURCE)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"compiling the ABI probe for {arch} took more than "
                                  f"{COMPILE_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise InfrastructureError(f"compiling the ABI probe for {arch} failed: {proc.stderr.strip()[:500]}",
                                  details=proc.stderr)
    return binary


def run_probe(arch: str, binary: Path) -> Dict[str, int]:
    """Run the probe binary (under user emulation if needed) and parse its ``name=value`` lines."""
    chain = toolchain(arch)
    cmd = ([chain.runner] if chain.runner else []) + [str(binary)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"the ABI probe for {arch} ran longer than {RUN_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise InfrastructureError(f"ABI probe for {arch} exited {proc.returncode}: {proc.stderr.strip()[:300]}")
    return parse_probe_output(proc.stdout)


def parse_probe_output(text: str) -> Dict[str, int]:
    """Parse ``name=value`` lines; a duplicate or malformed line is an error."""
    values: Dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"probe output line {number} is not name=value: {line!r}")
        if name in values:
            raise ValueError(f"probe printed {name} twice")
        values[name] = int(value)
    return values


def compare_abi(python: Mapping[str, int], headers: Mapping[str, int]) -> List[str]:
    """One line per disagreement: differing values, and names only one side knows."""
    problems = []
    for name in sorted(set(python) | set(headers)):
        if name not in headers:
            problems.append(f"{name}: python {python[name]:#x}, not printed by the header probe")
        elif name not in python:
            problems.append(f"{name}: headers {headers[name]:#x}, missing in harness.kvm.uapi")
        elif python[name] != headers[name]:
            problems.append(f"{name}: python {python[name]:#x} != headers {headers[name]:#x}")
    return problems
