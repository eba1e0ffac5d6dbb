"""The end-of-run summary: one line saying what ran, counts per outcome, splats, slowest tests, artifacts.

The first line is the verdict a maintainer can quote: on the model target that the results are model
results (no kernel ran); on a target where nothing ran, why and what to do instead.  It also goes into
the JUnit file as the testsuite property ``summary``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional

import pytest

from . import workers
from ..parallel import targets_of
from .junit_hook import junit_writer
from ..session import find_holder

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "flaky")
RAN = ("passed", "failed", "error", "xfailed", "xpassed", "flaky")
DISAGREE = ("failed", "error", "xpassed")

CAPS_KEY: "pytest.StashKey[Any]" = pytest.StashKey()
"""The target's probed ``harness.kvm.caps.Capabilities``, stashed by the shipped suites."""

PV_HOST_STEP = "run on an IBM z15+ LPAR with prot_virt=1 (--target ssh://…)"


def counts_of(stats: Dict[str, List[Any]]) -> Dict[str, int]:
    """Tests per outcome (a skip or an error in setup counts as the test's outcome)."""
    return {name: len([r for r in stats.get(name, []) if getattr(r, "when", "call") in ("call", "setup")])
            for name in OUTCOMES}


def skip_reasons(stats: Dict[str, List[Any]]) -> List[str]:
    """The reason of every skipped test, as pytest recorded it."""
    reasons = []
    for report in stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
        reasons.append(text[len("Skipped: "):] if text.startswith("Skipped: ") else text)
    return reasons


def _no_kvm(caps: Any) -> tuple:
    """(reason, next step) for a target without /dev/kvm."""
    if caps.arch == "s390x":
        if caps.has_sie:
            return ("no /dev/kvm on this target although the CPU has SIE",
                    "load the kvm module on the target (modprobe kvm) and run again")
        return ("no /dev/kvm on this target (QEMU TCG has no SIE)",
                f"{PV_HOST_STEP} or use --target local for the generic scenarios on this machine")
    return (f"no /dev/kvm on this target ({caps.arch or 'unknown arch'})",
            "load kvm or enable virtualization on the target; the PV scenarios need an IBM z15+ LPAR "
            "with prot_virt=1 (--target ssh://…)")


def nothing_ran(total: int, caps: Any, reasons: List[str]) -> str:
    """``0 of N ran: <why>; <what to do>``."""
    if caps is not None and not caps.has_kvm:
        why, step = _no_kvm(caps)
    else:
        common = Counter(r for r in reasons if r).most_common(1)
        why = common[0][0] if common else "every test was skipped"
        step = "see each skip reason with -rs"
    return f"0 of {total} ran: {why}; {step}"


def model_line(counts: Dict[str, int], reasons: List[str]) -> str:
    """``17 model results agree with the spec; no kernel ran``."""
    ran = sum(counts[o] for o in RAN)
    bad = sum(counts[o] for o in DISAGREE)
    if bad:
        line = f"{ran - bad} of {ran} model results agree with the spec, {bad} disagree; no kernel ran"
    else:
        line = f"{ran} model results agree with the spec; no kernel ran"
    if counts["skipped"]:
        common = Counter(r for r in reasons if r).most_common(1)
        line += f" ({counts['skipped']} skipped" + (f": {common[0][0]})" if common else ")")
    return line


def headline(config: pytest.Config, stats: Dict[str, List[Any]]) -> Optional[str]:
    """The one-line verdict, or None when a plain count says it all."""
    counts = counts_of(stats)
    total = sum(counts.values())
    if is_model_run(config):
        return model_line(counts, skip_reasons(stats))
    if total and not any(counts[o] for o in RAN):
        return nothing_ran(total, _caps(config), skip_reasons(stats))
    return None


def _caps(config: pytest.Config) -> Any:
    """The probed capabilities: this process's, or (in an xdist controller) those its workers reported."""
    caps = config.stash.get(CAPS_KEY, None)
    from_workers = workers.seen(config)
    return from_workers.caps if caps is None and from_workers is not None else caps


def is_model_run(config: pytest.Config) -> bool:
    holder = find_holder(config)
    target = getattr(holder, "target", None)
    if target is not None:
        return getattr(target, "kind", "") == "model"
    try:
        return all(t == "model" for t in targets_of(config))
    except AttributeError:  # the harness's options are not registered
        return False


def record_headline(session: pytest.Session) -> None:
    """Put the headline into the JUnit file (testsuite property ``summary``) before it is written."""
    xml = junit_writer(session.config)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if xml is None or reporter is None or workers.in_worker(session.config):
        return
    line = headline(session.config, reporter.stats)
    if line is not None:
        xml.add_global_property("summary", line)


def write_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print a short table; only when the run used a KVM target."""
    holder = find_holder(config)
    from_workers = workers.seen(config)
    if holder is None or (holder.target is None and holder.error is None and from_workers is None):
        return
    stats = terminalreporter.stats
    tr = terminalreporter
    tr.section("kvm-harness summary")
    line = headline(config, stats)
    if line is not None:
        tr.write_line(line, bold=True)
    counts = counts_of(stats)
    if is_model_run(config):
        tr.write_line("model results: " + "  ".join(f"{name}: {counts[name]}" for name in OUTCOMES))
    else:
        tr.write_line("  ".join(f"{name}: {counts[name]}" for name in OUTCOMES))
    targets = targets_of(config)
    tr.write_line(("targets: " if len(targets) > 1 else "target: ") + ", ".join(targets))
    errors = [str(holder.error)] if holder.error is not None else []
    for error in errors + (from_workers.errors if from_workers else []):
        tr.write_line(f"infrastructure failure: {error}", red=True)
    splats = [p for reports in stats.values() for r in reports if isinstance(r, pytest.TestReport)
              for p in r.user_properties if p[0] == "splat"]
    stray = getattr(config, "_kvm_session_splats", []) + (from_workers.session_splats if from_workers else [])
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
