"""The nightly history: one directory per night and target, and an index over all of them.

Layout of a history directory::

    <history>/<night>/<target-slug>/junit.xml, summary.txt, compare.txt, run.log, artifacts/
    <history>/index.sqlite   the index (standard library sqlite3)
    <history>/index.json     the same index as JSON, rewritten after every night

The index maps night -> tip (label and commit), and per test its outcome, duration and splat fingerprints.
It answers three questions: when a test started failing (and on which tip), which tests are flaky over
the last N nights (pass/fail alternation rate), and which splat fingerprints are new.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from ..results.junit_read import ERROR, FAIL, PASS, read_junit

log = logging.getLogger(__name__)

INDEX_DB = "index.sqlite"
INDEX_JSON = "index.json"
BROKEN = (FAIL, ERROR)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nights (
    night TEXT NOT NULL, target TEXT NOT NULL, seq INTEGER NOT NULL,
    tip TEXT NOT NULL, commit_sha TEXT NOT NULL, status TEXT NOT NULL, exit_status INTEGER NOT NULL,
    directory TEXT NOT NULL, started TEXT NOT NULL, regressions INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (night, target));
CREATE TABLE IF NOT EXISTS results (
    night TEXT NOT NULL, target TEXT NOT NULL, test TEXT NOT NULL, suite TEXT NOT NULL,
    outcome TEXT NOT NULL, seconds REAL NOT NULL, message TEXT NOT NULL,
    PRIMARY KEY (night, target, test));
CREATE TABLE IF NOT EXISTS splats (
    night TEXT NOT NULL, target TEXT NOT NULL, test TEXT NOT NULL, fingerprint TEXT NOT NULL);
"""


def target_slug(target: str) -> str:
    """A directory name for a target spec (``qemu:s390x`` -> ``qemu-s390x``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", target).strip("-") or "target"


def suite_of(test_id: str) -> str:
    """The suite (test module) of a JUnit test id: ``harness.suites.test_pv_async.TestX::t`` -> ``test_pv_async``."""
    classname = test_id.split("::", 1)[0]
    parts = [p for p in classname.split(".") if p]
    for part in reversed(parts):
        if part.startswith("test_") or part.endswith("_test") or part == "kvm_selftests":
            return part
    return parts[-1] if parts else classname


@dataclass
class Night:
    """One night of one target."""

    night: str
    target: str
    seq: int
    tip: str
    commit_sha: str
    status: str  # "pass" | "fail" | "infra"
    exit_status: int
    directory: str  # relative to the history directory
    started: str
    regressions: int = 0


@dataclass
class FailureStart:
    """Where the current failing streak of a test on a target began."""

    test: str
    target: str
    failing: bool
    first_bad_night: str = ""
    first_bad_tip: str = ""
    first_bad_commit: str = ""
    last_good_night: str = ""
    last_good_tip: str = ""
    last_good_commit: str = ""
    message: str = ""


@dataclass
class Flaky:
    test: str
    target: str
    runs: int
    changes: int
    rate: float
    outcomes: list[str] = field(default_factory=list)


@dataclass
class NewSplat:
    fingerprint: str
    night: str
    target: str
    tip: str
    tests: list[str] = field(default_factory=list)


class History:
    """A history directory and its index (created on first use)."""

    def __init__(self, root: Path, create: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            if not create:
                raise UsageError(f"history directory {self.root} does not exist: pass the --history DIR "
                                 "that kvmh nightly wrote")
            self.root.mkdir(parents=True)
        self.db = sqlite3.connect(str(self.root / INDEX_DB))
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ writing

    def night_dir(self, night: str, target: str) -> Path:
        return self.root / night / target_slug(target)

    def record(self, night: Night, junit: Optional[Path]) -> None:
        """Index one night of one target from its JUnit file (replacing an earlier record of the same night)."""
        with self.db:
            for table in ("nights", "results", "splats"):
                self.db.execute(f"DELETE FROM {table} WHERE night=? AND target=?", (night.night, night.target))
            row = asdict(night)
            self.db.execute(f"INSERT INTO nights ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                            tuple(row.values()))
            if junit is not None and Path(junit).is_file():
                self._record_cases(night, read_junit(Path(junit)))
        self.write_json()

    def _record_cases(self, night: Night, report) -> None:
        for case in report.cases.values():
            self.db.execute("INSERT INTO results VALUES (?,?,?,?,?,?,?)",
                            (night.night, night.target, case.id, suite_of(case.id), case.outcome, case.time,
                             case.message.splitlines()[0] if case.message else ""))
        for fingerprint, tests in report.splat_locations().items():
            for test in dict.fromkeys(tests):
                self.db.execute("INSERT INTO splats VALUES (?,?,?,?)", (night.night, night.target, test, fingerprint))

    def next_seq(self) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM nights").fetchone()
        return (row[0] or 0) + 1

    def write_json(self) -> Path:
        """Rewrite ``index.json``: every night with its tip and per-test outcome, duration and splats."""
        data = {"nights": []}
        for night in self.nights():
            tests = {}
            for test, suite, outcome, seconds, message in self.db.execute(
                    "SELECT test, suite, outcome, seconds, message FROM results WHERE night=? AND target=? "
                    "ORDER BY test", (night.night, night.target)):
                tests[test] = {"suite": suite, "outcome": outcome, "seconds": seconds, "message": message,
                               "splats": []}
            for test, fingerprint in self.db.execute(
                    "SELECT test, fingerprint FROM splats WHERE night=? AND target=?", (night.night, night.target)):
                tests.setdefault(test, {"suite": suite_of(test), "outcome": "", "seconds": 0.0, "message": "",
                                        "splats": []})["splats"].append(fingerprint)
            data["nights"].append({**asdict(night), "tests": tests})
        path = self.root / INDEX_JSON
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    # ------------------------------------------------------------ reading

    def nights(self, target: Optional[str] = None) -> list[Night]:
        """Nights in the order they ran (oldest first), optionally of one target."""
        query = "SELECT * FROM nights" + (" WHERE target=?" if target else "") + " ORDER BY seq, target"
        cursor = self.db.execute(query, (target,) if target else ())
        names = [d[0] for d in cursor.description]
        return [Night(**dict(zip(names, row))) for row in cursor.fetchall()]

    def targets(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT target FROM nights ORDER BY target")]

    def previous(self, target: str, before_seq: int) -> Optional[Night]:
        """The last night of ``target`` before sequence number ``before_seq`` that produced results."""
        for night in reversed(self.nights(target)):
            if night.seq < before_seq and night.status != "infra":
                return night
        return None

    def outcomes(self, test: str, target: str) -> list[tuple[Night, str, str]]:
        """(night, outcome, message) of ``test`` on ``target``, oldest first; nights without it are left out."""
        found = {(n, t): (o, m) for n, t, o, m in self.db.execute(
            "SELECT night, target, outcome, message FROM results WHERE test=? AND target=?", (test, target))}
        return [(n, *found[(n.night, n.target)]) for n in self.nights(target) if (n.night, n.target) in found]

    def tests(self, name: Optional[str] = None) -> list[tuple[str, str]]:
        """(test, target) pairs; ``name`` matches a whole id, its ``::name`` part, or a substring of it."""
        rows = list(self.db.execute("SELECT DISTINCT test, target FROM results ORDER BY test, target"))
        if not name:
            return rows
        exact = [r for r in rows if r[0] == name or r[0].split("::", 1)[-1] == name]
        return exact or [r for r in rows if name in r[0]]

    def suites(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT suite FROM results ORDER BY suite")]

    def suite_counts(self, night: Night) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for suite, outcome, n in self.db.execute(
                "SELECT suite, outcome, COUNT(*) FROM results WHERE night=? AND target=? GROUP BY suite, outcome",
                (night.night, night.target)):
            counts.setdefault(suite, {})[outcome] = n
        return counts

    def splats_of(self, night: Night) -> dict[str, list[str]]:
        where: dict[str, list[str]] = {}
        for test, fingerprint in self.db.execute("SELECT test, fingerprint FROM splats WHERE night=? AND target=?",
                                                 (night.night, night.target)):
            where.setdefault(fingerprint, []).append(test)
        return where

    # ------------------------------------------------------------ the three questions

    def failure_start(self, test: str, target: str) -> FailureStart:
        """When did ``test`` start failing on ``target``, and on which tip (the current failing streak)."""
        runs = [(n, o, m) for n, o, m in self.outcomes(test, target) if o in BROKEN or o == PASS]
        answer = FailureStart(test=test, target=target, failing=bool(runs) and runs[-1][1] in BROKEN)
        if not answer.failing:
            return answer
        i = len(runs) - 1
        while i > 0 and runs[i - 1][1] in BROKEN:
            i -= 1
        first, _, message = runs[i]
        answer.first_bad_night, answer.first_bad_tip, answer.first_bad_commit = first.night, first.tip, first.commit_sha
        answer.message = message
        if i > 0:
            good = runs[i - 1][0]
            answer.last_good_night, answer.last_good_tip = good.night, good.tip
            answer.last_good_commit = good.commit_sha
        return answer

    def flaky(self, last: int = 14, min_changes: int = 2) -> list[Flaky]:
        """Tests whose pass/fail outcome alternated at least ``min_changes`` times over the last ``last`` nights.

        The rate is changes / (runs - 1): 1.0 flips every night; a test that broke once and stayed broken
        has one change and is a regression, not a flake.
        """
        if last < 2:
            raise UsageError(f"--last {last} is too few nights to see an alternation: pass --last 2 or more")
        found: list[Flaky] = []
        for target in self.targets():
            window = {n.night for n in self.nights(target)[-last:]}
            for test, _ in [r for r in self.tests() if r[1] == target]:
                seq = ["fail" if o in BROKEN else "pass" for n, o, _ in self.outcomes(test, target)
                       if n.night in window and (o in BROKEN or o == PASS)]
                changes = sum(1 for a, b in zip(seq, seq[1:]) if a != b)
                if len(seq) >= 2 and changes >= min_changes:
                    found.append(Flaky(test, target, len(seq), changes, round(changes / (len(seq) - 1), 2), seq))
        return sorted(found, key=lambda f: (-f.rate, f.test, f.target))

    def new_splats(self, night: Optional[str] = None) -> list[NewSplat]:
        """Splat fingerprints of ``night`` (default: the latest) that no earlier night of any target recorded."""
        nights = self.nights()
        if not nights:
            return []
        chosen = night or nights[-1].night
        current = [n for n in nights if n.night == chosen]
        if not current:
            raise UsageError(f"night {chosen!r} is not in the history: kvmh history lists the nights")
        first_seq = min(n.seq for n in current)
        seen = {fp for n in nights if n.seq < first_seq for fp in self.splats_of(n)}
        out: list[NewSplat] = []
        for n in current:
            for fingerprint, tests in sorted(self.splats_of(n).items()):
                if fingerprint not in seen:
                    out.append(NewSplat(fingerprint, n.night, n.target, n.tip, sorted(set(tests))))
        return out
