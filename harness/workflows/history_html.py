"""A static HTML report over a nightly history: nights x suites, a per-test timeline, links to artifacts.

One self-contained file (``<history>/report.html``, no scripts, no external resources); links are relative,
so the history directory can be copied or served as it is.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from .history import BROKEN, History, Night, suite_of

log = logging.getLogger(__name__)

REPORT = "report.html"

_STYLE = """
body { font-family: sans-serif; margin: 1em; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #999; padding: 2px 6px; font-size: 13px; }
td.pass { background: #b6e3b6; } td.fail { background: #f2a0a0; } td.skip { background: #e6e6e6; }
td.infra { background: #f5d37a; } td.none { background: #fff; }
th.test { text-align: left; font-weight: normal; font-family: monospace; }
"""


def _cell_class(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    if any(counts.get(o) for o in BROKEN):
        return "fail"
    if counts.get("pass"):
        return "pass"
    return "skip"


def _outcome_class(outcome: str) -> str:
    return "fail" if outcome in BROKEN else "pass" if outcome == "pass" else "skip" if outcome else "none"


def _night_label(night: Night) -> str:
    return f"{night.night} {night.target}"


def render(history: History) -> str:
    """The report's HTML text."""
    esc = html.escape
    nights = history.nights()
    suites = history.suites()
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           "<title>kvmh nightly history</title>", f"<style>{_STYLE}</style></head><body>",
           "<h1>kvmh nightly history</h1>",
           f"<p id='counts'>{len({n.night for n in nights})} nights, {len(history.targets())} targets, "
           f"{len(history.tests())} tests</p>"]
    out += ["<h2>Nights &times; suites</h2>", "<table id='nights'><thead><tr><th>night</th><th>target</th>"
            "<th>tip</th><th>status</th>", *[f"<th>{esc(s)}</th>" for s in suites], "<th>artifacts</th></tr></thead>",
            "<tbody>"]
    for night in reversed(nights):
        counts = history.suite_counts(night)
        row = [f"<tr data-night='{esc(night.night)}' data-target='{esc(night.target)}'>",
               f"<td>{esc(night.night)}</td><td>{esc(night.target)}</td>",
               f"<td title='{esc(night.commit_sha)}'>{esc(night.tip)}</td>",
               f"<td class='{'infra' if night.status == 'infra' else night.status}'>{esc(night.status)}"
               f"{f' ({night.regressions} regr.)' if night.regressions else ''}</td>"]
        for suite in suites:
            c = counts.get(suite, {})
            text = " ".join(f"{k}:{v}" for k, v in sorted(c.items())) or "&ndash;"
            row.append(f"<td class='{_cell_class(c)}' data-suite='{esc(suite)}'>{text}</td>")
        links = [f"<a href='{esc(night.directory)}/{name}'>{name.split('.')[0]}</a>"
                 for name in ("junit.xml", "summary.txt", "compare.txt", "run.log")
                 if (history.root / night.directory / name).exists()]
        if (history.root / night.directory / "artifacts").is_dir():
            links.append(f"<a href='{esc(night.directory)}/artifacts/'>artifacts</a>")
        row.append(f"<td class='links'>{' '.join(links)}</td></tr>")
        out.append("".join(row))
    out.append("</tbody></table>")
    out += _timeline(history, nights)
    out += _new_splats(history)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _timeline(history: History, nights: list[Night]) -> list[str]:
    esc = html.escape
    out = ["<h2>Per-test timeline</h2>", "<table id='timeline'><thead><tr><th>test</th><th>target</th>",
           *[f"<th>{esc(n.night)}<br>{esc(n.tip)}</th>" for n in _columns(nights)], "</tr></thead><tbody>"]
    columns = _columns(nights)
    for test, target in history.tests():
        by_night = {n.night: (o, m) for n, o, m in history.outcomes(test, target)}
        cells = []
        for night in columns:
            outcome, message = by_night.get(night.night, ("", ""))
            title = f"{outcome}: {message}" if message else outcome
            cells.append(f"<td class='{_outcome_class(outcome)}' title='{esc(title)}'>{esc(outcome[:4])}</td>")
        out.append(f"<tr data-test='{esc(test)}' data-target='{esc(target)}' data-suite='{esc(suite_of(test))}'>"
                   f"<th class='test'>{esc(test)}</th><td>{esc(target)}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return out


def _columns(nights: list[Night]) -> list[Night]:
    """One column per night name (the first target's record names its tip)."""
    seen: dict[str, Night] = {}
    for night in nights:
        seen.setdefault(night.night, night)
    return list(seen.values())


def _new_splats(history: History) -> list[str]:
    esc = html.escape
    found = history.new_splats() if history.nights() else []
    out = ["<h2>New splat fingerprints (latest night)</h2>", "<ul id='new-splats'>"]
    out += [f"<li>{esc(s.fingerprint)} &mdash; {esc(s.target)} at {esc(s.tip)} in {esc(', '.join(s.tests))}</li>"
            for s in found]
    out.append("</ul>")
    return out


def write_report(history: History) -> Path:
    """Write ``report.html`` into the history directory and return its path."""
    path = history.root / REPORT
    path.write_text(render(history))
    log.info("history report written to %s", path)
    return path
