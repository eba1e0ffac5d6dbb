"""The end-of-run summary: counts per outcome, splats, slowest tests, where the artifacts are."""

from __future__ import annotations

from typing import Any

import pytest

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "flaky")


def write_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print a short table; only when the run used a KVM target."""
    holder = getattr(config, "_kvm_holder", None)
    if holder is None or (holder.target is None and holder.error is None):
        return
    stats = terminalreporter.stats
    tr = terminalreporter
    tr.section("kvm-harness summary")
    counts = {name: len([r for r in stats.get(name, []) if getattr(r, "when", "call") in ("call", "setup")])
              for name in OUTCOMES}
    tr.write_line("  ".join(f"{name}: {counts[name]}" for name in OUTCOMES))
    target = config.getoption("--kvm-target")
    tr.write_line(f"target: {target}")
    if holder.error is not None:
        tr.write_line(f"infrastructure failure: {holder.error}", red=True)
    splats = [p for reports in stats.values() for r in reports if isinstance(r, pytest.TestReport)
              for p in r.user_properties if p[0] == "splat"]
    stray = getattr(config, "_kvm_session_splats", [])
    if splats or stray:
        tr.write_line(f"kernel splats: {len(splats)} in tests, {len(stray)} outside any test", red=True)
        for _name, value in splats:
            tr.write_line(f"  {value}")
        for splat in stray:
            tr.write_line(f"  (session) {splat.kind}: {splat.fingerprint}")
    else:
        tr.write_line("kernel splats: none")
    reports = [r for reports in stats.values() for r in reports
               if isinstance(r, pytest.TestReport) and r.when == "call"]
    slowest = sorted(reports, key=lambda r: r.duration, reverse=True)[:5]
    if slowest:
        tr.write_line("slowest: " + ", ".join(f"{r.nodeid.split('::')[-1]} {r.duration:.1f}s" for r in slowest))
    artifacts = config.getoption("--kvm-artifacts")
    if artifacts is not None:
        tr.write_line(f"artifacts: {artifacts}")
