"""Per-host expectations for KVM selftests: known failures become xfail, every change is reported.

File format, one test a line, ``#`` starts a comment::

    # program[::subtest]                outcome   "reason"
    x86_64/cpuid_test                   fail      "CPUID differs under this hypervisor"
    "s390x/cmma_test::GET_CMMA_BITS: basic calls" skip "no CMMA as guest-3"
    hardware_disable_test               timeout   "runs for minutes on 2 cores"

Names holding spaces are double-quoted (backslash escapes ``"`` and ``\\``).
Expected outcomes: ``pass``, ``fail``, ``skip``, ``timeout``. A crash or a kernel splat can never be expected.

How a result is judged (``judge``):

============  =================  ====================  =================  =========
actual        expected pass      expected fail         expected skip      expected timeout
============  =================  ====================  =================  =========
pass          passed             **failed** (XPASS)    passed             **failed**
fail          failed             xfailed               failed             failed
skip          **failed** (gone)  skipped               skipped            skipped
timeout       failed             failed                failed             xfailed
crash/error   failed             failed                failed             failed
============  =================  ====================  =================  =========

An expected failure that passes is strict XPASS: it fails the run so the stale line is removed
(left in place it would hide the next regression of that test). A test expected to pass that no
longer runs (skips) is a change and fails too. Skips made by the harness itself (budget used up)
are never judged. Tests without a line are judged as usual.
"""

from __future__ import annotations

import logging
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from ..errors import UsageError

log = logging.getLogger(__name__)

EXPECTABLE = ("pass", "fail", "skip", "timeout")
SEPARATOR = "::"

# JUnit testcase properties written by the selftest items and read back by write_expectations.
PROP_PROGRAM = "selftest_program"
PROP_SUBTEST = "selftest_subtest"
PROP_OUTCOME = "selftest_outcome"
PROP_REASON = "selftest_reason"
PROP_HARNESS_SKIP = "selftest_harness_skip"

_FAILING = ("fail", "error", "crashed", "timeout", "xpass")


@dataclass(frozen=True)
class Expectation:
    """One line of an expectations file."""

    test: str
    outcome: str
    reason: str = ""
    source: str = ""

    @property
    def program(self) -> str:
        return self.test.split(SEPARATOR, 1)[0]

    def render(self) -> str:
        return f"{_quote(self.test)} {self.outcome} {_quote(self.reason, always=True)}"


@dataclass(frozen=True)
class Verdict:
    """How one result is reported: ``passed``, ``failed``, ``skipped`` or ``xfailed``, with the message."""

    outcome: str
    message: str = ""
    expectation: Optional[Expectation] = None


def test_id(program: str, subtest: Optional[str] = None) -> str:
    return f"{program}{SEPARATOR}{subtest}" if subtest else program


class Expectations:
    """A parsed expectations file; ``get`` finds the line for a program or subtest."""

    def __init__(self, entries: Iterable[Expectation] = (), source: str = "") -> None:
        self.source = source
        self.entries: dict[str, Expectation] = {}
        for entry in entries:
            self.entries[entry.test] = entry

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, test: str) -> bool:
        return test in self.entries

    @classmethod
    def parse(cls, text: str, source: str = "<expectations>") -> "Expectations":
        entries: dict[str, Expectation] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            where = f"{source}:{number}"
            try:
                words = shlex.split(line, comments=True)
            except ValueError as err:
                raise UsageError(f"{where}: {err}: quote names and reasons with \"...\"") from None
            if not words:
                continue
            if len(words) not in (2, 3):
                raise UsageError(f"{where}: expected 'program[::subtest] outcome \"reason\"', got {line.strip()!r}")
            test, outcome = words[0], words[1].lower()
            if outcome not in EXPECTABLE:
                raise UsageError(f"{where}: outcome {words[1]!r} of {test} is not one of {', '.join(EXPECTABLE)}"
                                 " (crashes and splats are never expected)")
            if test in entries:
                raise UsageError(f"{where}: {test} is listed twice (first at {entries[test].source})")
            entries[test] = Expectation(test, outcome, words[2] if len(words) == 3 else "", where)
        return cls(entries.values(), source)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Expectations":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise UsageError(f"cannot read expectations file {path}: {err.strerror}") from None
        return cls.parse(text, str(path))

    def get(self, program: str, subtest: Optional[str] = None) -> Optional[Expectation]:
        return self.entries.get(test_id(program, subtest))

    def render(self, header: str = "") -> str:
        lines = [f"# {h}" if h else "#" for h in header.splitlines()] if header else []
        width = max((len(_quote(e.test)) for e in self.entries.values()), default=0)
        for test in sorted(self.entries):
            entry = self.entries[test]
            lines.append(f"{_quote(entry.test):<{width}} {entry.outcome:<7} {_quote(entry.reason, always=True)}")
        return "\n".join(lines) + "\n"


def judge(actual: str, reason: str = "", expectation: Optional[Expectation] = None, *,
          harness_skip: bool = False) -> Verdict:
    """Turn an actual outcome (a ktap ``Outcome`` value) and its expectation into a Verdict."""
    actual = getattr(actual, "value", actual)
    base = _plain(actual, reason)
    if expectation is None or harness_skip:
        return base
    want = expectation.outcome
    why = f' ("{expectation.reason}")' if expectation.reason else ""
    if actual in ("crashed", "error"):
        note = f" (expected {want}{why}; a crash is never expected)"
        return Verdict("failed", _describe(actual, reason, note), expectation)
    if actual in ("pass", "xpass"):
        if want in ("fail", "timeout"):
            return Verdict("failed", f"XPASS(strict): expected {want}{why} but it passed: "
                           f"remove the line from {expectation.source or 'the expectations file'}", expectation)
        return Verdict("passed", base.message, expectation)
    if actual in ("skip", "xfail"):
        if want == "pass":
            return Verdict("failed", f"expected pass{why} but skipped: {reason or 'no reason given'}", expectation)
        return base
    if actual == want:
        return Verdict("xfailed", f"known {want}{why}: {_first_line(reason) or actual}", expectation)
    return Verdict("failed", _describe(actual, reason, f" (expected {want}{why})"), expectation)


def _plain(actual: str, reason: str) -> Verdict:
    if actual == "pass":
        return Verdict("passed", reason)
    if actual == "skip":
        return Verdict("skipped", reason or "skipped")
    if actual == "xfail":
        return Verdict("xfailed", reason or "expected failure")
    if actual == "xpass":
        return Verdict("passed", reason or "unexpectedly passed")
    return Verdict("failed", _describe(actual, reason))


def _describe(actual: str, reason: str, note: str = "") -> str:
    if actual == "timeout" and reason.startswith("timeout after"):
        return reason.replace(";", note + ";", 1) if note and ";" in reason else reason + note
    words = {"fail": "failed", "error": "error", "crashed": "crashed", "timeout": "timed out"}
    text = words.get(actual, actual) + note
    return f"{text}: {reason}" if reason else text


def _first_line(text: str) -> str:
    """The line that best summarises a reason (a KVM assertion's own message and location)."""
    return headline(text) if text and text.strip() else ""


_ASSERT_MARK = "==== Test Assertion Failure ===="


def headline(text: str) -> str:
    """One line for JUnit's failure message: a KVM assertion's own message and location, else the first line."""
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        if _ASSERT_MARK not in line:
            continue
        block = []
        for nxt in lines[i + 1:]:
            if not nxt or nxt.startswith("---") or nxt.startswith("["):
                break
            block.append(nxt)
        prefix = line[: line.index(_ASSERT_MARK)].strip()
        if block:
            where = block[0].split(":", 2)
            location = f" ({where[0]}:{where[1]})" if len(where) >= 2 and where[1].strip().isdigit() else ""
            message = block[-1] if len(block) > 1 else block[0]
            return f"{prefix} {message}{location}".strip()[:300]
    useful = [line for line in lines if line]
    if not useful:
        return "failed"
    if useful[0].endswith("last output:") and len(useful) > 1:
        return f"{useful[0]} {useful[-1]}"[:300]
    return useful[0][:300]



def _quote(text: str, always: bool = False) -> str:
    if not always and text and not any(c.isspace() or c in "\"'\\#" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def expectations_from_junit(junit_path: Union[str, Path]) -> Expectations:
    """Expectations that describe a run's JUnit file: every program, and each failing subtest."""
    path = Path(junit_path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise UsageError(f"cannot read JUnit file {path}: {err}") from None
    results: list[ResultRecord] = []
    for case in root.iter("testcase"):
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        program = props.get(PROP_PROGRAM)
        if not program:
            continue
        results.append(ResultRecord(program, props.get(PROP_SUBTEST) or None, props.get(PROP_OUTCOME, ""),
                                    props.get(PROP_REASON, ""), bool(props.get(PROP_HARNESS_SKIP))))
    return expectations_from_results(results, str(path))


@dataclass(frozen=True)
class ResultRecord:
    """One program's or subtest's actual result, as the expectations writer needs it."""

    program: str
    subtest: Optional[str]
    outcome: str
    reason: str = ""
    harness_skip: bool = False


def expectations_from_results(results: Iterable[ResultRecord], source: str = "") -> Expectations:
    """Expectations describing results: a line per program that ran, and one per failing subtest.

    Crashes and errors get no line (they can never be expected), nor do harness skips.
    """
    entries: list[Expectation] = []
    for res in results:
        outcome = _expectable(res.outcome)
        name = test_id(res.program, res.subtest)
        if res.harness_skip:
            continue
        if outcome is None:
            log.info("not writing an expectation for %s: it %s", name, res.outcome)
            continue
        if res.subtest and outcome not in ("fail", "timeout"):
            continue
        entries.append(Expectation(name, outcome, _first_line(res.reason)[:200]))
    return Expectations(entries, source)


def _expectable(actual: str) -> Optional[str]:
    if actual in ("pass", "xpass"):
        return "pass"
    if actual in ("fail", "xfail"):
        return "fail"
    if actual in ("skip", "timeout"):
        return actual
    return None  # crashed, error: never expected


def write_expectations(junit_path: Union[str, Path], out_path: Union[str, Path]) -> int:
    """Write the expectations a run's JUnit file describes to ``out_path``; return the number of lines."""
    expectations = expectations_from_junit(junit_path)
    if not len(expectations):
        raise UsageError(f"{junit_path} holds no KVM selftest results: run 'kvmh selftests --junitxml FILE' first")
    header = (f"KVM selftest expectations written from {Path(junit_path).name}.\n"
              "program[::subtest]  pass|fail|skip|timeout  \"reason\"; review before committing.")
    Path(out_path).write_text(expectations.render(header))
    return len(expectations)


def write_results(results: Iterable[ResultRecord], out_path: Union[str, Path]) -> int:
    """Write the expectations that in-memory results describe; return the number of lines."""
    expectations = expectations_from_results(results)
    if not len(expectations):
        raise UsageError("this run has no KVM selftest results to write expectations from")
    Path(out_path).write_text(expectations.render(
        "KVM selftest expectations written by a kvmh run.\n"
        "program[::subtest]  pass|fail|skip|timeout  \"reason\"; review before committing."))
    return len(expectations)
