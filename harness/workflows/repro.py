"""``kvmh repro``: run a report's reproducer N times on a target and compare the splats with the report's.

Evidence in the artifacts directory: the report, what was extracted (``extracted.txt``), the reproducer and its
binary, per run the reproducer's output and the kernel log window, ``splats.txt`` with the report's and the
observed splats side by side, and the console log of QEMU targets.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import InfrastructureError
from ..results.splats import Splat, find_splats
from .report_parse import Report, ReportError, Reproducer

log = logging.getLogger(__name__)

COMPILE_TIMEOUT_S = 300.0


@dataclass
class ReproOutcome:
    runs: int
    reproduced_at: Optional[int] = None
    observed: list[tuple[int, Splat]] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return self.reproduced_at is not None


def compiler_for(arch: str) -> str:
    """gcc for ``arch``: the native one on the same arch, else the Debian cross compiler."""
    from ..arch import get_arch
    from ..kernel.build import host_arch

    if arch == host_arch():
        return "gcc"
    return f"{get_arch(arch).cross_compile}gcc"


def prepare_reproducer(repro: Reproducer, arch: str, out: Path) -> Path:
    """Write the reproducer; compile C statically for ``arch``. Returns what to copy to the target."""
    if not repro.runnable:
        raise ReportError("the report's reproducer is a syz program: it needs syz-execprog, which kvmh does not "
                          "run — pass a C reproducer with --reproducer FILE")
    source = out / repro.filename
    source.write_text(repro.text)
    if repro.kind == "shell":
        source.chmod(0o755)
        return source
    gcc = compiler_for(arch)
    if shutil.which(gcc) is None:
        from ..arch import get_arch

        package = get_arch(arch).cross_package if gcc != "gcc" else "gcc"
        raise InfrastructureError(f"{gcc} not found: install the Debian package {package} to build the reproducer")
    binary = out / "repro"
    cmd = [gcc, "-O1", "-static", "-pthread", "-w", "-o", str(binary), str(source)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"{gcc} did not finish within {COMPILE_TIMEOUT_S:.0f} s") from None
    (out / "compile.log").write_text(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:200])
        raise ReportError(f"the report's C reproducer does not compile for {arch}: {first}")
    return binary


def side_by_side(report: Report, observed: list[tuple[int, Splat]]) -> str:
    """The report's splat and every observed one, with fingerprints and whether they match."""
    out = ["== report ==", _describe(report.splat) if report.splat else "(no splat in the report)", ""]
    if not observed:
        out.append("== observed: no splat ==")
    for run, splat in observed:
        same = "MATCHES the report" if report.splat and splat.fingerprint == report.fingerprint else "different"
        out += [f"== observed at run {run} ({same}) ==", _describe(splat), ""]
    return "\n".join(out) + "\n"


def _describe(splat: Splat) -> str:
    return f"kind: {splat.kind}\nfingerprint: {splat.fingerprint}\nfirst line: {splat.first_line}\n{splat.text}"


def run_reproducer(target, report: Report, payload: Path, runs: int, timeout_s: float, out: Path,
                   echo: Callable[[str], None] = print) -> ReproOutcome:
    """Copy the reproducer to the started target and run it up to ``runs`` times, watching the kernel log."""
    remote = "kvmh-" + payload.name
    target.put(payload, remote, mode=0o755)
    outcome = ReproOutcome(runs=runs)
    for k in range(1, runs + 1):
        cursor = target.dmesg_cursor()
        cmd = f"timeout -s KILL {int(timeout_s)} ./{shlex.quote(remote)}"
        result = target.run(cmd, timeout=timeout_s + 60)
        dmesg = target.dmesg_since(cursor)
        (out / f"run-{k}.out").write_text(f"$ {cmd}\nexit status {result.exit_status}\n--- stdout\n{result.stdout}"
                                          f"\n--- stderr\n{result.stderr}\n")
        (out / f"dmesg-run-{k}.txt").write_text(dmesg + "\n")
        splats = find_splats(dmesg)
        outcome.observed += [(k, s) for s in splats]
        match = [s for s in splats if report.fingerprint and s.fingerprint == report.fingerprint]
        status = "killed at the timeout" if result.exit_status in (124, 137) else f"exit {result.exit_status}"
        echo(f"run {k}/{runs}: {status}, {len(splats)} splat(s)"
             + (f": {', '.join(s.fingerprint for s in splats)}" if splats else ""))
        if match:
            outcome.reproduced_at = k
            break
    (out / "splats.txt").write_text(side_by_side(report, outcome.observed))
    return outcome
