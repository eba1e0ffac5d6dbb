"""Compare two JUnit reports (a baseline and a new run): regressions, fixes, new and vanished tests,
and splat fingerprints that appear only in the new run. Also the ``kvmh splats FILE`` command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import EXIT_OK, EXIT_TEST_FAILED
from harness.results.junit_read import ERROR, FAIL, PASS, SKIP, XFAIL, JUnitReport, read_junit

log = logging.getLogger(__name__)

_WAS_OK = (PASS, SKIP, XFAIL)
_BROKEN = (FAIL, ERROR)


@dataclass(frozen=True)
class Change:
    """One test whose outcome differs (or that exists on one side only)."""

    test: str
    base: str
    new: str
    message: str = ""


@dataclass(frozen=True)
class SplatChange:
    """A splat fingerprint and the tests (or ``<session>``) that recorded it."""

    fingerprint: str
    where: tuple[str, ...]


@dataclass
class Comparison:
    base: Path
    new: Path
    base_count: int = 0
    new_count: int = 0
    regressions: list[Change] = field(default_factory=list)
    fixes: list[Change] = field(default_factory=list)
    new_tests: list[Change] = field(default_factory=list)
    vanished: list[Change] = field(default_factory=list)
    still_failing: list[Change] = field(default_factory=list)
    new_splats: list[SplatChange] = field(default_factory=list)
    gone_splats: list[SplatChange] = field(default_factory=list)


def compare_reports(base: JUnitReport, new: JUnitReport) -> Comparison:
    """Compare two parsed reports."""
    comp = Comparison(base=base.path, new=new.path, base_count=len(base.cases), new_count=len(new.cases))
    for test_id in sorted(set(base.cases) | set(new.cases)):
        old, cur = base.cases.get(test_id), new.cases.get(test_id)
        if old is None and cur is not None:
            comp.new_tests.append(Change(test_id, "", cur.outcome, cur.message))
        elif cur is None and old is not None:
            comp.vanished.append(Change(test_id, old.outcome, ""))
        elif old is not None and cur is not None:
            if old.outcome in _WAS_OK and cur.outcome in _BROKEN:
                comp.regressions.append(Change(test_id, old.outcome, cur.outcome, cur.message))
            elif old.outcome in _BROKEN and cur.outcome == PASS:
                comp.fixes.append(Change(test_id, old.outcome, cur.outcome))
            elif old.outcome in _BROKEN and cur.outcome in _BROKEN:
                comp.still_failing.append(Change(test_id, old.outcome, cur.outcome, cur.message))
    base_splats, new_splats = base.splat_locations(), new.splat_locations()
    for fp in sorted(set(new_splats) - set(base_splats)):
        comp.new_splats.append(SplatChange(fp, tuple(dict.fromkeys(new_splats[fp]))))
    for fp in sorted(set(base_splats) - set(new_splats)):
        comp.gone_splats.append(SplatChange(fp, tuple(dict.fromkeys(base_splats[fp]))))
    return comp


def compare_files(base: Path, new: Path) -> Comparison:
    """Read and compare two JUnit XML files (JUnitError, exit status 3, if one is unusable)."""
    return compare_reports(read_junit(Path(base)), read_junit(Path(new)))


def exit_status(comp: Comparison) -> int:
    """1 when the new run regressed or shows a splat the baseline did not have, else 0."""
    return EXIT_TEST_FAILED if comp.regressions or comp.new_splats else EXIT_OK


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def format_comparison(comp: Comparison) -> str:
    """A report for a maintainer: what got worse first."""
    out = [f"base: {comp.base} ({comp.base_count} tests)", f"new:  {comp.new} ({comp.new_count} tests)", ""]

    def section(title: str, items: list[Change], show_message: bool = True) -> None:
        if not items:
            return
        out.append(f"{title} ({len(items)}):")
        for ch in items:
            arrow = f"{ch.base or '-'} -> {ch.new or '-'}"
            msg = _first_line(ch.message) if show_message else ""
            out.append(f"  {ch.test}: {arrow}" + (f": {msg}" if msg else ""))
        out.append("")

    section("REGRESSIONS", comp.regressions)
    if comp.new_splats:
        out.append(f"NEW SPLATS ({len(comp.new_splats)}):")
        for sp in comp.new_splats:
            out.append(f"  {sp.fingerprint}  (in {', '.join(sp.where)})")
        out.append("")
    section("Still failing", comp.still_failing)
    section("Fixes", comp.fixes, show_message=False)
    section("New tests", comp.new_tests)
    section("Vanished tests", comp.vanished, show_message=False)
    if comp.gone_splats:
        out.append(f"Splats gone since base ({len(comp.gone_splats)}):")
        for sp in comp.gone_splats:
            out.append(f"  {sp.fingerprint}")
        out.append("")
    out.append(
        f"summary: {len(comp.regressions)} regressions, {len(comp.new_splats)} new splats, "
        f"{len(comp.fixes)} fixes, {len(comp.still_failing)} still failing, "
        f"{len(comp.new_tests)} new tests, {len(comp.vanished)} vanished"
    )
    return "\n".join(out)
