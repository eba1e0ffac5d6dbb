"""What a bisect leaves behind: the step table (text) and one JUnit file for the whole bisect."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from junit_xml import TestCase, TestSuite, to_xml_report_string

from .bisect_steps import BAD, GOOD, StepRecord

ROLE_SHORT = {"bad endpoint": "--bad", "good endpoint": "--good", "bisect": ""}


def step_table(steps: Sequence[StepRecord]) -> str:
    """Every step: commit, subject, outcome, cost (build how and seconds, run seconds, wall), artifacts."""
    header = f"{'#':>3}  {'commit':<12}  {'outcome':<16}  {'build':<17}  {'run':>6}  {'wall':>6}  subject"
    lines = [header, "-" * len(header)]
    for s in steps:
        role = ROLE_SHORT.get(s.role, "")
        outcome = f"{s.outcome or '?'}{' ' + role if role else ''}"
        build = f"{s.build_how or '-'} {s.build_s:.0f}s" if s.build_how else "-"
        runs = f" [{' '.join(s.runs)}]" if len(s.runs) > 1 else ""
        lines.append(f"{s.n:>3}  {s.commit[:12]:<12}  {outcome:<16}  {build:<17}  {s.run_s:>5.0f}s  "
                     f"{s.wall_s:>5.0f}s  {s.subject[:60]}")
        if s.reason:
            lines.append(f"{'':>5}{'':<12}    why: {s.reason[:150]}{runs}")
        if s.directory:
            lines.append(f"{'':>5}{'':<12}    artifacts: {s.directory}")
    return "\n".join(lines)


def write_junit(path: Path, steps: Sequence[StepRecord], properties: Mapping[str, str], verdict: str,
                verdict_ok: bool) -> None:
    """One testcase per step (bad → failure, skip/untestable → skipped) and one for the bisect's result."""
    cases = []
    for s in steps:
        case = TestCase(name=f"{s.n:02d} {s.commit[:12]} {s.subject}", classname="kvmh.bisect.step",
                        elapsed_sec=s.wall_s, stdout=f"role: {s.role}\nbuild: {s.build_how} {s.build_s:.0f}s\n"
                                                        f"runs: {' '.join(s.runs)}\nartifacts: {s.directory}")
        if s.outcome == BAD:
            case.add_failure_info(message=f"bad: {s.reason}", failure_type="bad")
        elif s.outcome != GOOD:
            case.add_skipped_info(message=f"{s.outcome}: {s.reason}")
        cases.append(case)
    result = TestCase(name="result", classname="kvmh.bisect", stdout=verdict)
    if not verdict_ok:
        result.add_error_info(message=verdict.splitlines()[0] if verdict else "no result", error_type="bisect")
    cases.append(result)
    suite = TestSuite("kvmh-bisect", cases, properties=dict(properties))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_xml_report_string([suite]))
