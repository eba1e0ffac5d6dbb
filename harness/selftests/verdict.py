"""The verdict on one selftest program: its KTAP parse combined with its exit status and a timeout.

kselftest exit statuses: 0 pass, 1 fail, 2 xfail, 3 xpass, 4 skip; KVM's TEST_ASSERT exits 254; a signal
or the harness's timeout ends a program without a verdict of its own. Tests the plan promised but nobody
reported are relabelled by how the program ended.
"""

from __future__ import annotations

import logging
import re
import signal
from typing import Optional

from .ktap import (  # the grammar's internals this verdict reads: one package, two jobs
    KSFT_PASS,
    KSFT_SKIP,
    KSFT_XFAIL,
    KSFT_XPASS,
    NO_TESTS_RAN,
    Outcome,
    TAIL_LINES,
    TestResult,
    _DIRECTIVE_RE,
    _PLANNED_RE,
    _PLAN_RE,
    _Parser,
    _RootFacts,
    _TAP_START_RE,
    _TOTALS_RE,
    _aggregate,
    _assertion_lines,
    _clean_reason,
    _strip_hash,
)

log = logging.getLogger(__name__)


def _signal_of(exit_status: int) -> Optional[int]:
    if exit_status < 0:
        return -exit_status
    if 128 < exit_status <= 128 + 64:
        return exit_status - 128
    return None


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _tail(lines: list[str], count: int = TAIL_LINES) -> list[str]:
    useful = [line for line in lines if line.strip()]
    return useful[-count:]


def _relabel_missing(
    subtests: list[TestResult], first: tuple[Outcome, str], rest: tuple[Outcome, str]
) -> None:
    missing = [s for s in subtests if s.missing]
    for i, sub in enumerate(missing):
        sub.outcome, sub.reason = first if i == 0 else rest


def program_result(name: str, output: str, exit_status: Optional[int], timed_out: bool = False) -> TestResult:
    """The result of one selftest program from its output, exit status and whether it timed out.

    Subtests come from its TAP; tests the plan promised but never reported stay in the result
    (skipped when the program exited KSFT_SKIP, else the one that was running gets the failure,
    timeout or crash, and the rest are marked not run). The program outcome combines both:
    a ``# Totals`` or plan saying everything was skipped wins over exit 0; exit 4 is a skip with
    the printed reason; a KVM assertion block becomes the failure message.
    """
    parser = _Parser(output)
    root = parser.run()
    facts = parser.facts
    lines = root.log
    assertion = _assertion_lines(lines)
    tail = _tail(lines)
    subtests = root.subtests
    has_tap = not (root.outcome is Outcome.ERROR and not subtests and facts.plan is None)
    real_failures = [s for s in subtests if s.outcome.is_failure and not s.missing]
    sig = _signal_of(exit_status) if exit_status is not None else None
    running = facts.running

    def first_missing_name() -> str:
        miss = [s for s in subtests if s.missing]
        return miss[0].name if miss else (running or "")

    if timed_out:
        _relabel_missing(
            subtests,
            (Outcome.TIMEOUT, "timed out while this test was running"),
            (Outcome.CRASHED, "not run: the program timed out"),
        )
        where = first_missing_name()
        reason = "timed out" + (f" during {where}" if where else "")
        if tail:
            reason += "; last output:\n" + "\n".join(tail)
        outcome = Outcome.TIMEOUT
    elif sig is not None:
        why = f"killed by {_signal_name(sig)}"
        _relabel_missing(subtests, (Outcome.CRASHED, why), (Outcome.CRASHED, f"not run: program {why}"))
        outcome = Outcome.CRASHED
        reason = why
        if assertion:
            reason += "\n" + "\n".join(assertion)
        elif tail:
            reason += "; last output:\n" + "\n".join(tail)
    elif exit_status == KSFT_SKIP and not real_failures:
        skip_reason = _skip_reason(facts, subtests, tail, exit_status)
        _relabel_missing(
            subtests,
            (Outcome.SKIP, f"not run: program skipped: {skip_reason}"),
            (Outcome.SKIP, f"not run: program skipped: {skip_reason}"),
        )
        outcome, reason = Outcome.SKIP, skip_reason
    elif exit_status == KSFT_PASS:
        _relabel_missing(
            subtests,
            (Outcome.ERROR, "planned but never reported (program exited 0)"),
            (Outcome.ERROR, "planned but never reported (program exited 0)"),
        )
        outcome, reason = _exit_zero_verdict(root, facts, subtests)
    elif exit_status in (KSFT_XFAIL, KSFT_XPASS) and not real_failures:
        _relabel_missing(
            subtests,
            (Outcome.ERROR, f"planned but never reported (exit {exit_status})"),
            (Outcome.ERROR, f"planned but never reported (exit {exit_status})"),
        )
        outcome = Outcome.XFAIL if exit_status == KSFT_XFAIL else Outcome.XPASS
        reason = f"exit status {exit_status}"
    elif exit_status is None:
        outcome, reason = root.outcome, root.reason
        if not has_tap:
            outcome, reason = Outcome.ERROR, "no exit status and no TAP output"
    else:
        message = _failure_message(exit_status, assertion, facts, real_failures, tail)
        not_run = (Outcome.CRASHED, f"not run: program exited with status {exit_status}")
        if facts.bail is not None:
            not_run = (Outcome.CRASHED, f"not run: Bail out! {facts.bail}".rstrip())
            _relabel_missing(subtests, not_run, not_run)
        else:
            _relabel_missing(subtests, (Outcome.FAIL, message), not_run)
        outcome, reason = Outcome.FAIL, message
        if real_failures and all(s.outcome is Outcome.TIMEOUT for s in real_failures):
            # kselftest_harness killed its own test at its TIMEOUT: a timeout, whichever clock fired first.
            names = ", ".join(s.name for s in real_failures)
            outcome, reason = Outcome.TIMEOUT, f"timed out during {names} (the kselftest harness's own timeout)"

    result = TestResult(
        name=name,
        number=None,
        outcome=outcome,
        reason=reason,
        diagnostics=root.diagnostics,
        subtests=subtests,
        log=lines,
    )
    log.debug("%s: %s (%s)", name, outcome.value, reason.splitlines()[0] if reason else "")
    explain_unknown_skips(result)
    return result


_UNKNOWN_SKIP = ("", "unknown")
_SKIP_ALL_FRAGMENT_RE = re.compile(r"(?:#\s*)?1\.\.0\s*#\s*SKIP\s*(?:-\s*)?", re.IGNORECASE)
_SKIP_ALL_RE = re.compile(r"^(?:#\s*)?1\.\.0\s*#\s*SKIP\s*(?:-\s*)?(.*)$", re.IGNORECASE)


def explain_unknown_skips(result: TestResult) -> None:
    """Replace the kselftest harness's ``# SKIP unknown`` by the reason the test printed itself.

    Also drops a raw ``1..0 # SKIP -`` prefix a skip reason may carry (a program that printed a plan
    and then skipped, like ``tprot``).

    A kselftest_harness test whose setup calls ``ksft_exit_skip()`` (KVM's TEST_REQUIRE, e.g. no
    /dev/kvm) is reported as ``ok N name # SKIP unknown``; its own ``1..0 # SKIP reason`` line is a
    diagnostic of that test. The program's reason follows when it was ``unknown`` too.
    """
    for sub in result.walk():
        if sub.outcome is Outcome.SKIP and _SKIP_ALL_FRAGMENT_RE.search(sub.reason):
            sub.reason = _SKIP_ALL_FRAGMENT_RE.sub("", sub.reason)
        if sub.outcome is not Outcome.SKIP or sub.reason.strip() not in _UNKNOWN_SKIP:
            continue
        for line in sub.diagnostics + sub.log:
            match = _SKIP_ALL_RE.match(line.strip())
            if match and match.group(1).strip():
                sub.reason = match.group(1).strip()
                break
    if result.outcome is Outcome.SKIP and result.reason.strip() in _UNKNOWN_SKIP:
        explained = [s.reason for s in result.subtests if s.outcome is Outcome.SKIP and s.reason not in _UNKNOWN_SKIP]
        if explained:
            result.reason = explained[0]


def _skip_reason(facts: _RootFacts, subtests: list[TestResult], tail: list[str], exit_status: int) -> str:
    if facts.skip_all:
        return facts.skip_all
    for sub in subtests:
        if sub.outcome is Outcome.SKIP and sub.reason and not sub.missing:
            return sub.reason
    for line in reversed(tail):
        text = _strip_hash(line)
        plan = _PLAN_RE.match(text)
        directive = _DIRECTIVE_RE.match(plan.group(2) or "") if plan else None
        if directive and directive.group(1).upper() == "SKIP" and directive.group(2).strip():
            return _clean_reason(directive.group(2))
        if _TAP_START_RE.match(text):
            continue  # "TAP version 14", a bare "1..0": not a reason
        if text and not _TOTALS_RE.match("# " + text) and not _PLANNED_RE.match("# " + text):
            return _clean_reason(text)
    if exit_status == KSFT_SKIP:
        return "exit status 4 (KSFT_SKIP)"
    return f"every test was skipped (exit status {exit_status})"


def _all_skipped(facts: _RootFacts, subtests: list[TestResult]) -> bool:
    if facts.skip_all is not None and not subtests:
        return True
    if subtests and all(s.outcome is Outcome.SKIP for s in subtests):
        return True
    t = facts.totals
    if t and t["skip"] > 0 and not (t["pass"] or t["fail"] or t["xfail"] or t["xpass"] or t["error"]):
        return True
    return False


def _exit_zero_verdict(root: TestResult, facts: _RootFacts, subtests: list[TestResult]) -> tuple[Outcome, str]:
    agg, agg_reason = _aggregate(subtests)
    if agg is not None and agg.is_failure:
        missing = [s for s in subtests if s.missing]
        if agg is Outcome.ERROR and missing and len(missing) == len([s for s in subtests if s.outcome.is_failure]):
            return Outcome.ERROR, f"planned {facts.plan} tests but reported {len(subtests) - len(missing)}"
        return Outcome.FAIL, f"exit status 0, but {agg_reason}"
    totals = facts.totals or {}
    if totals.get("fail") or totals.get("error"):
        return Outcome.FAIL, f"exit status 0, but # Totals reports fail:{totals['fail']} error:{totals['error']}"
    if facts.bail is not None:
        return Outcome.FAIL, f"Bail out! {facts.bail}".rstrip()
    if facts.plan == 0 and facts.skip_all is None and not subtests:
        return Outcome.ERROR, f"{NO_TESTS_RAN}; the program exited 0"
    if _all_skipped(facts, subtests):
        return Outcome.SKIP, _skip_reason(facts, subtests, [], KSFT_PASS)
    if agg is Outcome.XPASS:
        return Outcome.XPASS, agg_reason
    return Outcome.PASS, ""


def _failure_message(
    exit_status: int,
    assertion: list[str],
    facts: _RootFacts,
    real_failures: list[TestResult],
    tail: list[str],
) -> str:
    if assertion:
        return "\n".join(assertion)
    if facts.bail is not None:
        return f"Bail out! {facts.bail}".rstrip()
    if real_failures:
        first = real_failures[0]
        return f"{first.name}: {first.reason}" if first.reason else f"{first.name} failed"
    text = f"exit status {exit_status}"
    if tail:
        text += "; last output:\n" + "\n".join(tail)
    return text
