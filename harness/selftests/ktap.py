"""KTAP/TAP grammar: kselftest and KUnit output parsed into a tree of results.

One job, in one module of about 650 lines: a line-driven parser whose frames, directives, diagnostics and
recovery from cut-off output share state; the verdict on a program is ``verdict.py``.

Follows Documentation/dev-tools/ktap.rst and the kselftest conventions (kselftest.h,
kselftest_harness.h, run_kselftest.sh):

* version lines ``KTAP version 1`` / ``TAP version 13|14``, plans ``1..N`` (missing, or late at
  the end), ``1..0 # SKIP reason``, ``Bail out!``; a plain ``1..0`` means no test ran (an error,
  as kunit_tool reports "0 tests run!"), and so does a ``# Subtest:`` with no children;
* results ``ok N name # DIRECTIVE reason`` with SKIP, TODO, XFAIL, XPASS, TIMEOUT, ERROR
  (case-insensitive);
* nesting by indentation (KTAP/KUnit) or by a ``# `` prefix (kselftest runner output);
* diagnostics ``# ...`` and unknown lines, kept with the test they precede (or follow, for a
  failing test), or with the suite when printed before its plan; an indented ``# Subtest: name``
  (and what follows it) before the nested plan names the nested suite; printk
  ``[   12.345678] `` / ``[    T1]`` and syslog ``<6>`` prefixes stripped;
* output cut off by a crash or a timeout: every test the plan promised but nobody reported
  becomes a ``missing`` result (outcome ``crashed`` by default), never silently dropped.

``harness.selftests.verdict.program_result`` combines the parse with a program's exit status.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterator, Optional

from .. import printk

log = logging.getLogger(__name__)

KSFT_PASS = 0
KSFT_FAIL = 1
KSFT_XFAIL = 2
KSFT_XPASS = 3
KSFT_SKIP = 4

NO_TESTS_RAN = "no tests ran: the plan is 1..0 without # SKIP (0 tests run)"

TAIL_LINES = 10
"""How many last output lines a timeout or an unexplained failure quotes."""


class Outcome(str, Enum):
    """The outcome of one test, a group of tests, or a whole program."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    XFAIL = "xfail"
    XPASS = "xpass"
    ERROR = "error"
    CRASHED = "crashed"
    TIMEOUT = "timeout"

    @property
    def is_failure(self) -> bool:
        """True for outcomes a maintainer must look at: fail, error, crashed, timeout."""
        return self in _BAD_ORDER


# Worst first: when several subtests went wrong, the parent reports the worst.
_BAD_ORDER = (Outcome.CRASHED, Outcome.TIMEOUT, Outcome.ERROR, Outcome.FAIL)


@dataclass
class TestResult:
    """One test (or the root of a parse, or a whole selftest program)."""

    __test__ = False  # not a pytest test class

    name: str
    number: Optional[int]
    outcome: Outcome
    reason: str = ""
    """Skip reason or failure message."""
    diagnostics: list[str] = field(default_factory=list)
    """Diagnostic lines of this test, ``# `` stripped."""
    subtests: list["TestResult"] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    """The raw lines of this test's block (printk prefixes stripped)."""
    missing: bool = False
    """True when the plan promised this test but no result line was ever printed."""
    no_tests: bool = False
    """A suite that reported a result without running any test: an error of its own that does not
    change its parent's outcome (kunit_tool's "0 tests run!")."""

    def walk(self) -> Iterator["TestResult"]:
        """This result and every subtest below it, depth first."""
        yield self
        for sub in self.subtests:
            yield from sub.walk()

    def counts(self) -> dict[str, int]:
        """Outcome counts over the direct subtests."""
        out: dict[str, int] = {}
        for sub in self.subtests:
            out[sub.outcome.value] = out.get(sub.outcome.value, 0) + 1
        return out

    def find(self, name: str) -> Optional["TestResult"]:
        """The first result below (or at) this one with exactly this name."""
        for res in self.walk():
            if res.name == name:
                return res
        return None


# ---------------------------------------------------------------------------------------------
# Line level

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_PRINTK_RE = printk.PREFIX
_TAP_START_RE = re.compile(r"^([ \t#]*?)(K?TAP version \d+|1\.\.\d+|not ok \d+|ok \d+|Bail out!)")
_VERSION_RE = re.compile(r"^(K?TAP) version (\d+)\s*$")
_PLAN_RE = re.compile(r"^1\.\.(\d+)\s*(?:#\s*(.*))?$")
_RESULT_RE = re.compile(r"^(not ok|ok)\s+(\d+)(?=\s|$)(.*)$")
_BAIL_RE = re.compile(r"^Bail out!\s*(.*)$")
_DIRECTIVE_RE = re.compile(r"^(SKIP|TODO|XFAIL|XPASS|TIMEOUT|ERROR)\w*\b\s*(.*)$", re.IGNORECASE)
_HASH_RE = re.compile(r"(?:^|\s)#")

_SUBTEST_RE = re.compile(r"^#\s*Subtest:\s*(.*?)\s*$")
_TOTALS_RE = re.compile(
    r"^#\s*Totals:\s*pass:(\d+)\s+fail:(\d+)\s+xfail:(\d+)\s+xpass:(\d+)\s+skip:(\d+)\s+error:(\d+)"
)
_PLANNED_RE = re.compile(r"^#\s*Planned tests != run tests \((\d+) != (\d+)\)")
_HARNESS_SUMMARY_RE = re.compile(r"^#\s*(PASSED|FAILED): \d+ / \d+ tests passed\.")
_HARNESS_START_RE = re.compile(r"^#\s*Starting \d+ tests from \d+ test cases\.")
_RUN_RE = re.compile(r"^#\s+RUN\s+(\S+)\s*\.\.\.\s*$")
_HARNESS_SKIP_RE = re.compile(r"^#\s+SKIP\s+(.*?)\s*$")
_HARNESS_MARK_RE = re.compile(r"^\s*(?:OK|FAIL)\s+\S+\s*$")

_KUNIT_FAILED_RE = re.compile(r"(?:EXPECTATION|ASSERTION) FAILED at \S+")
KUNIT_MESSAGE_LINES = 20
"""How many lines of a KUnit expectation failure the message keeps."""

_ASSERT_MARK = "==== Test Assertion Failure ===="
_HARNESS_TIMEOUT = "Test terminated by timeout"
_ADDR2LINE_RE = re.compile(r"^\s*\d+\s+(?:0x[0-9a-fA-F]+:|\(inlined by\))")


def _clean(raw: str) -> str:
    """Strip ANSI colours, CR, trailing blanks and a printk/syslog prefix from one line."""
    line = _ANSI_RE.sub("", raw).replace("\r", "").rstrip()
    m = _PRINTK_RE.match(line)
    if m and m.end():
        rest = line[m.end():]
        if "[" in m.group(0) and rest.startswith(" "):
            rest = rest[1:]
        line = rest
    return line


def _strip_hash(text: str) -> str:
    """``# foo`` -> ``foo``; other text unchanged (minus surrounding blanks)."""
    text = text.strip()
    if text.startswith("#"):
        text = text[1:]
        if text.startswith(" "):
            text = text[1:]
    return text.rstrip()


def _clean_reason(text: str) -> str:
    return re.sub(r"^[-:]\s*", "", text.strip()).strip()


def _split_result(rest: str) -> tuple[str, str]:
    """Split what follows ``ok N`` into (description, text after the first ``#``)."""
    m = _HASH_RE.search(rest)
    if m:
        desc, directive = rest[: m.start()], rest[m.end():]
    else:
        desc, directive = rest, ""
    desc = desc.strip()
    if desc.startswith("- "):
        desc = desc[2:].strip()
    elif desc == "-":
        desc = ""
    return desc, directive.strip()


def _line_outcome(ok: bool, directive: str) -> tuple[Outcome, str, bool]:
    """Outcome, reason and whether a known directive was present for one result line."""
    m = _DIRECTIVE_RE.match(directive)
    if not m:
        return (Outcome.PASS if ok else Outcome.FAIL), _clean_reason(directive), False
    word, reason = m.group(1).upper(), _clean_reason(m.group(2))
    if word == "SKIP":
        return Outcome.SKIP, reason, True
    if word == "TODO":
        return (Outcome.XPASS if ok else Outcome.XFAIL), reason, True
    if word == "XFAIL":
        return Outcome.XFAIL, reason, True
    if word == "XPASS":
        return Outcome.XPASS, reason, True
    if word == "TIMEOUT":
        return Outcome.TIMEOUT, reason, True
    return Outcome.ERROR, reason, True


def _failure_hint(diagnostics: list[str]) -> str:
    """A short failure message from a failing test's diagnostics."""
    block = _assertion_lines(diagnostics) or _kunit_failure_lines(diagnostics)
    if block:
        return "\n".join(block)
    useful = [
        d for d in diagnostics
        if d.strip() and not _RUN_RE.match("# " + d) and not _HARNESS_MARK_RE.match(d)
    ]
    return "\n".join(useful[-3:])


def _kunit_failure_lines(lines: list[str]) -> list[str]:
    """KUnit's ``name: EXPECTATION FAILED at file:line`` and the explanation after it (``Expected …``)."""
    for i, line in enumerate(lines):
        if _KUNIT_FAILED_RE.search(line):
            block = [text.strip() for text in lines[i:] if text.strip()]
            return block[:KUNIT_MESSAGE_LINES]
    return []


def _assertion_lines(lines: list[str]) -> list[str]:
    """The KVM ``==== Test Assertion Failure ====`` block without the addr2line stack, or []."""
    for i, line in enumerate(lines):
        pos = line.find(_ASSERT_MARK)
        if pos < 0:
            continue
        prefix = line[:pos]
        if prefix.strip(" #\t"):
            prefix = ""  # the mark follows other output on the same line (no newline before it)
        out = [_ASSERT_MARK]
        for nxt in lines[i + 1:]:
            if not nxt.startswith(prefix):
                break
            body = nxt[len(prefix):]
            if not body[:1].isspace() or not body.strip():
                break
            if _ADDR2LINE_RE.match(body):
                continue
            out.append(body.strip())
        return out
    return []


# ---------------------------------------------------------------------------------------------
# The parser


@dataclass
class _Frame:
    """One level of (possibly nested) TAP output being parsed."""

    prefix: str
    start: int
    version: Optional[str] = None
    plan: Optional[int] = None
    skip_all: Optional[str] = None
    bail: Optional[str] = None
    name: str = ""
    running: Optional[str] = None
    harness_skip: str = ""
    totals: Optional[dict[str, int]] = None
    results: list[TestResult] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    block_start: int = 0
    header_name: Optional[str] = None
    """An indented ``# Subtest: name`` seen here: the name of the nested suite about to open."""
    header: list[str] = field(default_factory=list)
    header_indent: int = 0

    @property
    def empty(self) -> bool:
        return self.version is None and self.plan is None and not self.results

    def next_number(self) -> int:
        numbers = [r.number for r in self.results if r.number is not None]
        return max(numbers, default=0) + 1


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = [_clean(raw) for raw in text.splitlines()]
        self.root = _Frame(prefix="", start=0)
        self.stack: list[_Frame] = [self.root]
        self.facts = _RootFacts(None, None, None, None, None)

    # -- driving ---------------------------------------------------------------------------
    def run(self) -> TestResult:
        for idx, line in enumerate(self.lines):
            self._feed(idx, line)
        while len(self.stack) > 1:
            self._close_unterminated(len(self.lines), "output ended before this test reported a result")
        return self._finish_root()

    def _feed(self, idx: int, line: str) -> None:
        # A TAP line of a frame already open (innermost first)?
        for depth in range(len(self.stack) - 1, -1, -1):
            frame = self.stack[depth]
            if not line.startswith(frame.prefix):
                continue
            rest = line[len(frame.prefix):]
            if rest[:1].isspace() or not rest:
                continue
            if self._tap_line(idx, depth, rest):
                return
            break
        # The start of a deeper (nested) frame?
        m = _TAP_START_RE.match(line)
        if m and self._maybe_nest(idx, m.group(1), line[len(m.group(1)):]):
            return
        self._diagnostic(line)

    # -- TAP lines ---------------------------------------------------------------------------
    def _tap_line(self, idx: int, depth: int, rest: str) -> bool:
        frame = self.stack[depth]
        m = _RESULT_RE.match(rest)
        if m:
            self._result(idx, depth, m.group(1) == "ok", int(m.group(2)), m.group(3))
            return True
        m = _PLAN_RE.match(rest)
        if m:
            self._pop_to(depth, idx, "no result line before the parent's plan")
            if frame.plan is None:
                frame.plan = int(m.group(1))
                directive = m.group(2) or ""
                dm = _DIRECTIVE_RE.match(directive)
                if dm and dm.group(1).upper() == "SKIP":
                    frame.skip_all = _clean_reason(dm.group(2))
                if not frame.results and frame.pending:
                    # Printed before the plan (``# module: example``): the suite's, not its first test's.
                    frame.summary.extend(p for p in frame.pending if p)
                    frame.pending = []
            else:
                log.debug("second plan line ignored: %r", rest)
                frame.pending.append(rest)
            return True
        m = _BAIL_RE.match(rest)
        if m:
            self._pop_to(depth, idx, "Bail out! before this test reported a result")
            frame.bail = m.group(1).strip()
            frame.pending.append(rest)
            return True
        m = _VERSION_RE.match(rest)
        if m:
            if frame.empty and frame.version is None:
                frame.version = f"{m.group(1)} {m.group(2)}"
                return True
            if depth == 0:
                log.debug("repeated version line at top level kept as a diagnostic: %r", rest)
                return False
            # A sibling nested test starts while the previous one never got its result line.
            self._pop_to(depth - 1, idx, "no result line for this test")
            self._push(idx, frame.prefix, version=f"{m.group(1)} {m.group(2)}")
            return True
        return False

    def _maybe_nest(self, idx: int, prefix: str, rest: str) -> bool:
        kind_result = _RESULT_RE.match(rest)
        is_version = _VERSION_RE.match(rest)
        is_plan = _PLAN_RE.match(rest)
        if not (kind_result or is_version or is_plan):
            return False
        # The deepest open frame this prefix extends.
        for depth in range(len(self.stack) - 1, -1, -1):
            frame = self.stack[depth]
            if prefix.startswith(frame.prefix) and len(prefix) > len(frame.prefix):
                break
        else:
            return False
        extension = prefix[len(frame.prefix):]
        if depth == 0 and len(self.stack) == 1 and self.root.empty and not extension.strip() and is_version:
            # Indented output as a whole (e.g. console noise): the root starts here.
            self.root.prefix = prefix
            return self._tap_line(idx, 0, rest)
        if kind_result and extension.strip():
            return False  # "# ok 1 ..." without a nested version or plan: just a diagnostic
        self._pop_to(depth, idx, "no result line for this test")
        self._push(idx, prefix)
        return self._tap_line(idx, len(self.stack) - 1, rest)

    def _push(self, idx: int, prefix: str, version: Optional[str] = None) -> None:
        parent = self.stack[-1]
        frame = _Frame(prefix=prefix, start=idx, version=version, block_start=idx)
        if parent.header_name is not None:
            frame.name = parent.header_name
            frame.summary.extend(parent.header)
            parent.header_name, parent.header = None, []
        self.stack.append(frame)

    def _pop_to(self, depth: int, idx: int, why: str) -> None:
        while len(self.stack) > depth + 1:
            self._close_unterminated(idx, why)

    def _close_unterminated(self, idx: int, why: str) -> None:
        """Pop the innermost frame, which never got its parent's result line."""
        child = self.stack.pop()
        parent = self.stack[-1]
        subtests, trailing = self._finish_frame(child, closing=None)
        name = child.name or parent.running or f"#{parent.next_number()}"
        agg, agg_reason = _aggregate(subtests)
        reason = why
        if agg_reason:
            reason = f"{why}; {agg_reason}"
        res = TestResult(
            name=name,
            number=parent.next_number(),
            outcome=Outcome.CRASHED,
            reason=reason,
            diagnostics=parent.pending + child.summary + trailing,
            subtests=subtests,
            log=self.lines[parent.block_start:idx],
            missing=True,
        )
        parent.results.append(res)
        parent.pending = []
        parent.running = None
        parent.block_start = idx

    def _result(self, idx: int, depth: int, ok: bool, number: int, rest: str) -> None:
        children: Optional[_Frame] = None
        while len(self.stack) > depth + 2:
            self._close_unterminated(idx, "no result line for this test")
        if len(self.stack) == depth + 2:
            children = self.stack.pop()
        frame = self.stack[depth]
        desc, directive = _split_result(rest)
        outcome, reason, _ = _line_outcome(ok, directive)
        if outcome is Outcome.SKIP and not reason and frame.harness_skip:
            reason = frame.harness_skip
        subtests: list[TestResult] = []
        diagnostics = list(frame.pending)
        suite = children is not None or frame.header_name is not None
        if frame.header_name is not None:  # "# Subtest:" whose nested plan never came
            diagnostics += frame.header
            frame.header_name, frame.header = None, []
        if children is not None:
            subtests, trailing = self._finish_frame(children, closing=outcome, closing_reason=reason)
            diagnostics += children.summary + trailing
            outcome, reason = _reconcile(outcome, reason, subtests)
            if children.skip_all is not None and not subtests and outcome is Outcome.PASS:
                outcome, reason = Outcome.SKIP, children.skip_all
        no_tests = suite and not subtests and outcome is Outcome.PASS
        if no_tests:
            outcome, reason = Outcome.ERROR, "no tests: the suite reported ok but ran no test (0 tests run)"
        name = desc or frame.running or (children.name if children else "") or f"#{number}"
        if outcome is Outcome.FAIL and any(_HARNESS_TIMEOUT in line for line in diagnostics):
            outcome, reason = Outcome.TIMEOUT, reason or "terminated by the kselftest harness's own timeout"
        if outcome.is_failure:
            assertion = _assertion_lines(diagnostics)
            if assertion:
                reason = "\n".join(assertion) + (f"\n[{reason}]" if reason else "")
            elif not reason and subtests:
                reason = _aggregate(subtests)[1]
            elif not reason:
                reason = _failure_hint(diagnostics)
        frame.results.append(
            TestResult(
                name=name,
                number=number,
                outcome=outcome,
                reason=reason,
                diagnostics=diagnostics,
                subtests=subtests,
                log=self.lines[frame.block_start: idx + 1],
                no_tests=no_tests,
            )
        )
        frame.pending = []
        frame.running = None
        frame.harness_skip = ""
        frame.block_start = idx + 1

    # -- diagnostics ---------------------------------------------------------------------------
    def _diagnostic(self, line: str) -> None:
        frame = self.stack[-1]
        content = line[len(frame.prefix):] if line.startswith(frame.prefix) else line.strip()
        if not content.strip():
            if frame.pending:
                frame.pending.append("")
            return
        if self._nested_header(frame, content):
            return
        m = _TOTALS_RE.match(content)
        if m:
            keys = ("pass", "fail", "xfail", "xpass", "skip", "error")
            frame.totals = {k: int(v) for k, v in zip(keys, m.groups())}
            frame.summary.append(_strip_hash(content))
            return
        if _PLANNED_RE.match(content) or _HARNESS_SUMMARY_RE.match(content):
            frame.summary.append(_strip_hash(content))
            return
        if _HARNESS_START_RE.match(content):
            frame.summary.append(_strip_hash(content))
            return
        m = _SUBTEST_RE.match(content)
        if m:
            if not frame.name and not frame.results:
                frame.name = m.group(1)
            frame.summary.append(_strip_hash(content))
            return
        m = _RUN_RE.match(content)
        if m:
            last = frame.results[-1] if frame.results else None
            if frame.pending and last is not None and last.outcome.is_failure:
                # Output between a failed test and the next RUN marker belongs to the failed test.
                last.diagnostics.extend(p for p in frame.pending if p)
                frame.pending = []
            frame.running = m.group(1)
            frame.harness_skip = ""
        else:
            sm = _HARNESS_SKIP_RE.match(content)
            if sm:
                frame.harness_skip = sm.group(1)
        frame.pending.append(_strip_hash(content))

    @staticmethod
    def _nested_header(frame: _Frame, content: str) -> bool:
        """An indented ``# Subtest: name`` (and lines as deep after it): the header of a nested suite."""
        indent = len(content) - len(content.lstrip())
        m = _SUBTEST_RE.match(content.lstrip())
        if indent and m:
            frame.header_name, frame.header, frame.header_indent = m.group(1), [], indent
        elif frame.header_name is None or indent < frame.header_indent:
            return False
        frame.header.append(_strip_hash(content))
        return True

    # -- closing ------------------------------------------------------------------------------
    def _finish_frame(
        self, frame: _Frame, closing: Optional[Outcome], closing_reason: str = ""
    ) -> tuple[list[TestResult], list[str]]:
        """The frame's results plus its missing tests; and diagnostics left over for the parent."""
        results = list(frame.results)
        trailing = [p for p in frame.pending + frame.header if p]
        while trailing and not trailing[-1]:
            trailing.pop()
        reported = {r.number for r in results if r.number is not None}
        missing_numbers = []
        if frame.plan:
            missing_numbers = [n for n in range(1, frame.plan + 1) if n not in reported]
        if missing_numbers:
            if closing is Outcome.SKIP:
                outcome, why = Outcome.SKIP, "not run: " + (closing_reason or "the test was skipped")
            elif frame.bail is not None:
                outcome, why = Outcome.CRASHED, f"not run: Bail out! {frame.bail}".rstrip()
            elif closing is None:
                outcome, why = Outcome.CRASHED, "never reported: output ended before this test reported"
            else:
                outcome, why = Outcome.CRASHED, "never reported although the plan promised it"
            for i, n in enumerate(missing_numbers):
                first = i == 0
                res = TestResult(
                    name=(frame.running or frame.header_name or f"#{n}") if first else f"#{n}",
                    number=n,
                    outcome=outcome,
                    reason=why,
                    diagnostics=trailing if first else [],
                    log=self.lines[frame.block_start:] if first and closing is None else [],
                    missing=True,
                )
                results.append(res)
            trailing = []
        elif trailing and results and results[-1].outcome.is_failure:
            results[-1].diagnostics.extend(trailing)
            if not results[-1].reason:
                results[-1].reason = _failure_hint(results[-1].diagnostics)
            trailing = []
        return results, trailing

    def _finish_root(self) -> TestResult:
        root = self.root
        subtests, trailing = self._finish_frame(root, closing=None)
        diagnostics = root.summary + trailing
        if root.skip_all is not None and not root.results:
            outcome, reason = Outcome.SKIP, root.skip_all
        elif root.bail is not None:
            outcome, reason = Outcome.FAIL, f"Bail out! {root.bail}".rstrip()
        elif root.plan == 0 and not subtests:
            outcome, reason = Outcome.ERROR, NO_TESTS_RAN
        elif root.empty:
            outcome, reason = Outcome.ERROR, "no KTAP/TAP results in the output"
        else:
            agg, agg_reason = _aggregate(subtests)
            outcome, reason = (agg or Outcome.PASS), agg_reason
            totals = root.totals or {}
            if not outcome.is_failure and (totals.get("fail", 0) or totals.get("error", 0)):
                outcome = Outcome.FAIL
                reason = f"# Totals reports fail:{totals.get('fail', 0)} error:{totals.get('error', 0)}"
        res = TestResult(
            name=root.name,
            number=None,
            outcome=outcome,
            reason=reason,
            diagnostics=diagnostics,
            subtests=subtests,
            log=list(self.lines),
        )
        self.facts = _RootFacts(root.plan, root.skip_all, root.bail, root.totals, root.running)
        return res


@dataclass
class _RootFacts:
    plan: Optional[int]
    skip_all: Optional[str]
    bail: Optional[str]
    totals: Optional[dict[str, int]]
    running: Optional[str]


def _aggregate(results: list[TestResult]) -> tuple[Optional[Outcome], str]:
    """The outcome a group of results adds up to, with a reason naming the culprit.

    A suite that ran no test is an error of its own but leaves its siblings' outcome alone.
    """
    counted = [r for r in results if not r.no_tests]
    if results and not counted:
        return Outcome.ERROR, f"{results[0].name}: {results[0].reason}"
    results = counted
    if not results:
        return None, ""
    for bad in _BAD_ORDER:
        for res in results:
            if res.outcome is bad:
                detail = f": {res.reason.splitlines()[0]}" if res.reason else ""
                return bad, f"{res.name} {bad.value}{detail}"
    if all(r.outcome is Outcome.SKIP for r in results):
        reasons = [r.reason for r in results if r.reason]
        return Outcome.SKIP, reasons[0] if reasons else "all subtests skipped"
    for res in results:
        if res.outcome is Outcome.XPASS:
            return Outcome.XPASS, f"{res.name} passed unexpectedly"
    return Outcome.PASS, ""


def _reconcile(outcome: Outcome, reason: str, subtests: list[TestResult]) -> tuple[Outcome, str]:
    """A parent's own result line against what its subtests say (the worse one wins)."""
    agg, agg_reason = _aggregate(subtests)
    if agg is None or outcome is not Outcome.PASS:
        return outcome, reason
    if agg.is_failure:
        final = agg if agg in (Outcome.CRASHED, Outcome.TIMEOUT) else Outcome.FAIL
        return final, f"reported ok, but {agg_reason}"
    if agg is Outcome.SKIP:
        return Outcome.SKIP, agg_reason
    return outcome, reason


def parse_ktap(text: str) -> TestResult:
    """Parse KTAP/TAP output; the returned root's subtests are the top-level tests."""
    return _Parser(text).run()
