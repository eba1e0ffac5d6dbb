"""One bisect step: build a commit, run the selection N times, and decide good / bad / skip / untestable.

The verdict rules (pure functions, tested on their own):

* a build failure, a boot failure or any infrastructure error is ``skip`` (git's 125), with the reason kept;
* the selection passes: ``good``; it fails the way it fails at ``--bad`` (same test, same splat fingerprint or
  same normalized message): ``bad``; it fails some other way: ``untestable`` (skipped in git, reported apart);
* with ``--splat``/``--splat-kind`` the bisect is about that splat: seen → ``bad``; not seen and passing →
  ``good``; not seen but failing → ``untestable``;
* ``--runs N``: bad if any run is bad, good only if every run is good.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence

from ..errors import HarnessError
from ..results.junit_read import ERROR, FAIL, PASS, SKIP, JUnitError, JUnitReport, read_junit, splat_key
from ..selftests.pytest_items import SETUP_FAILED

log = logging.getLogger(__name__)

GOOD, BAD, SKIPPED, UNTESTABLE = "good", "bad", "skip", "untestable"
GIT_VERDICT = {GOOD: "good", BAD: "bad", SKIPPED: "skip", UNTESTABLE: "skip"}
TERM_GRACE_S = 60.0
"""How long a step's run may take to stop (and stop its QEMU) after SIGTERM before it is killed."""

_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\b\d+\b")


@dataclass
class RunResult:
    """One run of the selection on one kernel."""

    status: str  # "pass" | "fail" | "infra"
    failures: list[str] = field(default_factory=list)  # "test-id  splat:<fp>" / "test-id  msg:<text>"
    splats: list[str] = field(default_factory=list)  # "kind: fingerprint" values seen anywhere
    passed: int = 0
    skipped: int = 0
    reason: str = ""
    seconds: float = 0.0
    directory: str = ""


@dataclass
class BuildInfo:
    """What a step's build produced and what it cost."""

    image: Optional[Path]
    modules: Optional[Path]
    source: Path
    how: str  # "cached" | "incremental" | "full"
    seconds: float
    log: Optional[Path] = None


class StepBuildError(HarnessError):
    """The commit did not build: the step is skipped with this reason."""


class Builder(Protocol):
    def build(self, commit: str, step_dir: Path) -> BuildInfo: ...


class Runner(Protocol):
    def run(self, build: BuildInfo, run_dir: Path) -> RunResult: ...


def normalize_message(message: str) -> str:
    """The first line of a failure message with numbers and addresses blanked, so reruns compare equal."""
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return _NUMBERS.sub("N", first)[:200]


def failure_keys(case_id: str, message: str, splats: Sequence[str]) -> list[str]:
    if splats:
        return [f"{case_id}  splat:{splat_key(s)}" for s in splats]
    return [f"{case_id}  msg:{normalize_message(message)}"]


def result_from_junit(path: Path, exit_status: int, seconds: float, run_dir: Path) -> RunResult:
    """Read a run's JUnit into a RunResult; exit status 0/1 are test outcomes, anything else infrastructure.

    One exception: exit 2 because the selected selftests do not build at this commit is their failure
    (the selftest build is part of what is bisected), when that is the only thing that went wrong.
    """
    infra = RunResult("infra", reason=f"infrastructure error (exit status {exit_status})", seconds=seconds,
                      directory=str(run_dir))
    try:
        report = read_junit(path)
    except JUnitError as err:
        if exit_status not in (0, 1):
            return infra
        return RunResult("infra", reason=f"no usable JUnit: {err}", seconds=seconds, directory=str(run_dir))
    if exit_status not in (0, 1) and not _only_selftest_build_failed(report):
        return infra
    result = RunResult("pass", seconds=seconds, directory=str(run_dir))
    infra = [c for c in report.cases.values() if c.classname.startswith("kvmh.infrastructure")]
    if infra:
        result.status, result.reason = "infra", f"{infra[0].name}: {infra[0].message}"
        return result
    for value in report.suite_properties.get("session_splat", []):
        result.splats.append(value)
    for case in report.cases.values():
        result.splats.extend(case.splats)
        if case.outcome == PASS:
            result.passed += 1
        elif case.outcome == SKIP:
            result.skipped += 1
        elif case.outcome in (FAIL, ERROR):
            result.failures.extend(failure_keys(case.id, case.message, case.splats))
    if not report.cases:
        result.status, result.reason = "infra", "the selection ran no test (check its name)"
    elif result.failures or exit_status == 1:
        result.status = "fail"
        if not result.failures:
            result.failures.append("<run>  msg:exit status 1")
    return result


def _only_selftest_build_failed(report: JUnitReport) -> bool:
    failed = [c for c in report.cases.values() if c.outcome in (FAIL, ERROR)]
    return bool(failed) and all(SETUP_FAILED in c.message for c in failed)


@dataclass(frozen=True)
class SplatFilter:
    """The splat a bisect is about (``--splat FINGERPRINT`` and/or ``--splat-kind KIND``)."""

    fingerprint: str = ""
    kind: str = ""

    def __bool__(self) -> bool:
        return bool(self.fingerprint or self.kind)

    def matches(self, value: str) -> bool:
        kind, _, fp = value.partition(": ")
        fp = fp or value
        if self.fingerprint and fp.strip() != self.fingerprint.strip():
            return False
        return not self.kind or kind.strip() == self.kind.strip()


def run_verdict(result: RunResult, reference: Sequence[str], splat: SplatFilter) -> tuple[str, str]:
    """The verdict of one run, with its reason."""
    if result.status == "infra":
        return SKIPPED, result.reason or "infrastructure error"
    if splat:
        seen = [s for s in result.splats if splat.matches(s)]
        if seen:
            return BAD, f"splat {seen[0]}"
        if result.status == "pass":
            return GOOD, _passed(result)
        return UNTESTABLE, f"fails without the splat under bisect: {result.failures[0]}"
    if result.status == "pass":
        return GOOD, _passed(result)
    same = [f for f in result.failures if f in set(reference)]
    if same:
        return BAD, same[0]
    return UNTESTABLE, f"fails differently from --bad: {result.failures[0]}"


def _passed(result: RunResult) -> str:
    return f"{result.passed} passed, {result.skipped} skipped"


def combine(verdicts: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """Several runs of one step: the first non-good verdict decides; good only when every run was good."""
    for verdict, reason in verdicts:
        if verdict != GOOD:
            return verdict, reason
    return (GOOD, verdicts[-1][1]) if verdicts else (SKIPPED, "no run")


@dataclass
class StepRecord:
    """One row of the bisect table."""

    n: int
    commit: str
    subject: str
    role: str  # "bad endpoint" | "good endpoint" | "bisect"
    outcome: str = ""
    reason: str = ""
    build_how: str = ""
    build_s: float = 0.0
    run_s: float = 0.0
    wall_s: float = 0.0
    runs: list[str] = field(default_factory=list)  # per-run verdicts, e.g. ["good", "bad"]
    directory: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class CommandRunner:
    """Runs one selection as a subprocess in its own process group; JUnit at ``run_dir/junit.xml``.

    On Ctrl-C (KeyboardInterrupt) or any exception the child's group gets SIGTERM (kvmh turns it into a
    clean shutdown that stops its QEMU), then SIGKILL after :data:`TERM_GRACE_S`.
    """

    def __init__(self, timeout_s: float = 4 * 3600.0) -> None:
        self.timeout_s = timeout_s

    def argv(self, build: BuildInfo, run_dir: Path) -> list[str]:
        raise NotImplementedError

    def env(self, build: BuildInfo) -> dict[str, str]:
        return dict(os.environ)

    def run(self, build: BuildInfo, run_dir: Path) -> RunResult:
        run_dir.mkdir(parents=True, exist_ok=True)
        argv = self.argv(build, run_dir)
        (run_dir / "command.txt").write_text(" ".join(argv) + "\n")
        started = time.monotonic()
        with open(run_dir / "output.txt", "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env(build), start_new_session=True)
            try:
                status = proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                stop_group(proc)
                return RunResult("infra", reason=f"run did not finish within {self.timeout_s:.0f} s",
                                 seconds=time.monotonic() - started, directory=str(run_dir))
            except BaseException:
                stop_group(proc)
                raise
        return result_from_junit(run_dir / "junit.xml", status, round(time.monotonic() - started, 1), run_dir)


def stop_group(proc: subprocess.Popen, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the child's process group, wait, then SIGKILL whatever is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def python_cli() -> list[str]:
    """How to run kvmh as a child process (the same interpreter and package as this one)."""
    return [sys.executable, "-m", "harness.cli"]
