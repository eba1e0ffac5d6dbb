"""``kvmh bisect``: find the commit that broke a selection, stepping ``git bisect`` with real builds and runs.

The driver keeps its state in its artifacts directory (``state.json``, ``bisect-log.txt``, one directory per
step), so an interrupted bisect resumes from there (``--resume DIR``). Ctrl-C stops the running step (its
QEMU with it) and ends the bisect in the cache worktree before the interrupt goes on.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import EXIT_INFRA, EXIT_OK, EXIT_TEST_FAILED, HarnessError, InfrastructureError, UsageError
from ..locks import file_lock
from .bisect_git import BisectWorktree, MarkResult
from .bisect_output import step_table, write_junit
from .bisect_steps import (BAD, GIT_VERDICT, GOOD, SKIPPED, UNTESTABLE, Builder, RunResult, Runner, SplatFilter,
                           StepBuildError, StepRecord, combine, run_verdict)

log = logging.getLogger(__name__)

STATE = "state.json"
LOG = "bisect-log.txt"


@dataclass
class BisectRequest:
    """Everything a bisect needs to start, or to resume (stored in ``state.json``)."""

    tree: str
    good: str
    bad: str
    selection: str
    target: str
    runs: int = 1
    splat_fingerprint: str = ""
    splat_kind: str = ""
    check_good: bool = True
    extra: dict = field(default_factory=dict)  # builder/runner settings the CLI needs to rebuild them

    @property
    def splat(self) -> SplatFilter:
        return SplatFilter(self.splat_fingerprint, self.splat_kind)


@dataclass
class BisectResult:
    first_bad: Optional[str] = None
    subject: str = ""
    author: str = ""
    candidates: list[str] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    log: str = ""
    directory: Path = Path()

    @property
    def exit_status(self) -> int:
        return EXIT_OK if self.first_bad else EXIT_TEST_FAILED


class Bisect:
    """One bisect, new or resumed, writing into ``out_dir``."""

    def __init__(self, request: BisectRequest, builder: Builder, runner: Runner, out_dir: Path,
                 echo: Callable[[str], None] = print) -> None:
        if request.runs < 1:
            raise UsageError(f"--runs {request.runs} is not a positive count: pass --runs 1 or more")
        self.request, self.builder, self.runner, self.out = request, builder, runner, Path(out_dir)
        self.echo = echo
        self.steps: list[StepRecord] = []
        self.reference: list[str] = []
        self.good_checked = False
        self.wt = BisectWorktree.open(Path(request.tree))

    # ------------------------------------------------------------ state

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {"request": asdict(self.request), "reference": self.reference, "good_checked": self.good_checked,
                "steps": [s.to_dict() for s in self.steps]}
        tmp = self.out / (STATE + ".partial")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.out / STATE)

    @staticmethod
    def load_request(out_dir: Path) -> BisectRequest:
        path = Path(out_dir) / STATE
        if not path.is_file():
            raise UsageError(f"{out_dir} holds no {STATE}: pass the artifacts directory of an earlier kvmh bisect "
                             "to --resume")
        return BisectRequest(**json.loads(path.read_text())["request"])

    def _restore(self) -> None:
        data = json.loads((self.out / STATE).read_text())
        self.reference = list(data.get("reference", []))
        self.good_checked = bool(data.get("good_checked"))
        self.steps = [StepRecord(**s) for s in data.get("steps", []) if s.get("outcome") != "aborted"]

    # ------------------------------------------------------------ driver

    def run(self, resume: bool = False) -> BisectResult:
        req = self.request
        good = self.wt.resolve(req.good, "--good")
        bad = self.wt.resolve(req.bad, "--bad")
        if not self.wt.is_ancestor(good, bad):
            raise UsageError(f"--good {req.good} is not an ancestor of --bad {req.bad}: pick a --good commit "
                             "that --bad descends from")
        if good == bad or self.wt.count(good, bad) == 0:
            raise UsageError(f"--good {req.good} and --bad {req.bad} leave nothing to bisect: pick an older --good")
        if resume:
            self._restore()
        self.out.mkdir(parents=True, exist_ok=True)
        with file_lock(self.wt.lock_path, what=f"the bisect worktree of {req.tree}"):
            self.wt.ensure(bad)
            try:
                return self._drive(good, bad, resume)
            except KeyboardInterrupt:
                self._save_log()
                self.save()
                self.echo(f"kvmh bisect: interrupted; resume with: kvmh bisect --resume {self.out}")
                raise
            finally:
                self._save_log()
                self.save()
                self.wt.reset()

    def _drive(self, good: str, bad: str, resume: bool) -> BisectResult:
        req = self.request
        total = self.wt.count(good, bad)
        self.echo(f"kvmh bisect: {total} commits in {good[:12]}..{bad[:12]}, selection {req.selection!r}, "
                  f"{req.runs} run(s) per step, artifacts {self.out}")
        if not self.reference:
            self._check_bad(bad)
        if req.check_good and not self.good_checked:
            self._check_good(good)
        log_file = self.out / LOG
        if resume and log_file.is_file() and log_file.read_text().strip():
            mark = self.wt.replay(log_file)
            self.echo(f"kvmh bisect: resumed from {log_file}")
        else:
            mark = self.wt.start(good, bad)
        self._save_log()
        while not mark.done:
            if mark.next_commit is None:
                raise InfrastructureError(f"git bisect gave no commit to test: {mark.output.strip()[-200:]}")
            record = self._step(mark.next_commit, "bisect")
            mark = self.wt.mark(record.commit, GIT_VERDICT[record.outcome])
            self._save_log()
            self.save()
        return self._finish(mark)

    def _check_bad(self, bad: str) -> None:
        record = self._step(bad, "bad endpoint")
        if record.outcome == SKIPPED:
            raise InfrastructureError(f"--bad {bad[:12]} could not be tested ({record.reason}): fix that first")
        if record.outcome != BAD:
            what = "shows no splat matching --splat/--splat-kind" if self.request.splat else "passes"
            raise UsageError(f"the selection {what} at --bad {bad[:12]} ({record.reason}): pick a --bad commit "
                             "where it fails")

    def _check_good(self, good: str) -> None:
        record = self._step(good, "good endpoint")
        if record.outcome == SKIPPED:
            raise InfrastructureError(f"--good {good[:12]} could not be tested ({record.reason}): fix that first")
        if record.outcome != GOOD:
            raise UsageError(f"the selection fails at --good {good[:12]} too ({record.reason}): pick an older --good")
        self.good_checked = True
        self.save()

    def _step(self, commit: str, role: str) -> StepRecord:
        subject, _ = self.wt.describe(commit)
        n = len(self.steps) + 1
        step_dir = self.out / "steps" / f"{n:02d}-{commit[:12]}"
        step_dir.mkdir(parents=True, exist_ok=True)
        record = StepRecord(n=n, commit=commit, subject=subject, role=role, directory=str(step_dir))
        self.steps.append(record)
        started = time.monotonic()
        self.echo(f"[{n}] {commit[:12]} {subject[:70]} ({role}): building")
        try:
            self._build_and_run(record, step_dir, started)
        except KeyboardInterrupt:
            record.outcome, record.reason = "aborted", "interrupted (Ctrl-C)"
            record.wall_s = round(time.monotonic() - started, 1)
            raise
        record.wall_s = round(time.monotonic() - started, 1)
        self.echo(f"[{n}] {commit[:12]} -> {record.outcome}: {record.reason} (build {record.build_how} "
                  f"{record.build_s:.0f}s, run {record.run_s:.0f}s, wall {record.wall_s:.0f}s)")
        self.save()
        return record

    def _build_and_run(self, record: StepRecord, step_dir: Path, started: float) -> None:
        req = self.request
        try:
            build = self.builder.build(record.commit, step_dir)
        except (StepBuildError, HarnessError) as err:
            record.outcome, record.reason = SKIPPED, str(err)
            record.build_how, record.build_s = "failed", round(time.monotonic() - started, 1)
            (step_dir / "build-error.txt").write_text(f"{err}\n{getattr(err, 'details', '')}\n")
            return
        record.build_how, record.build_s = build.how, build.seconds
        verdicts = []
        reference = self.reference
        for k in range(1, req.runs + 1):
            result: RunResult = self.runner.run(build, step_dir / f"run-{k}")
            record.run_s = round(record.run_s + result.seconds, 1)
            if record.role == "bad endpoint" and result.status == "fail" and not reference:
                reference = self.reference = list(result.failures)
            verdict = run_verdict(result, reference, req.splat)
            verdicts.append(verdict)
            record.runs.append(verdict[0])
            if req.runs > 1:
                self.echo(f"    run {k}/{req.runs}: {verdict[0]} ({verdict[1]})")
            if verdict[0] != GOOD:
                break
        record.outcome, record.reason = combine(verdicts)

    def _save_log(self) -> None:
        text = self.wt.log_text()
        if text:
            (self.out / LOG).write_text(text)

    def _finish(self, mark: MarkResult) -> BisectResult:
        result = BisectResult(steps=self.steps, log=(self.out / LOG).read_text() if (self.out / LOG).exists() else "",
                              directory=self.out)
        if mark.first_bad:
            result.first_bad = mark.first_bad
            result.subject, result.author = self.wt.describe(mark.first_bad)
        else:
            result.candidates = mark.candidates
        self._report(result)
        return result

    def _report(self, result: BisectResult) -> None:
        req = self.request
        if result.first_bad:
            verdict = (f"first bad commit: {result.first_bad}\n  subject: {result.subject}\n"
                       f"  author:  {result.author}")
        else:
            verdict = ("inconclusive: only skipped or untestable commits are left; the first bad commit is one of:\n"
                       + "\n".join(f"  {c}" for c in result.candidates))
        untestable = [s for s in self.steps if s.outcome == UNTESTABLE]
        table = step_table(self.steps)
        text = f"{verdict}\n\ngit bisect log:\n{result.log}\nsteps:\n{table}\n"
        if untestable:
            text += f"\n{len(untestable)} untestable step(s): they fail differently from --bad and were skipped.\n"
        (self.out / "summary.txt").write_text(text)
        props = {"tree": req.tree, "good": req.good, "bad": req.bad, "selection": req.selection,
                 "target": req.target, "runs": str(req.runs), "first_bad_commit": result.first_bad or ""}
        write_junit(self.out / "junit.xml", self.steps, {k: v for k, v in props.items() if v}, verdict,
                    bool(result.first_bad))
        self.echo(text + f"JUnit: {self.out / 'junit.xml'}\nartifacts: {self.out}")


def run_bisect(request: BisectRequest, builder: Builder, runner: Runner, out_dir: Path, resume: bool = False,
               echo: Callable[[str], None] = print) -> BisectResult:
    """Run (or resume) a bisect; HarnessError subclasses carry the exit status of a failure."""
    return Bisect(request, builder, runner, out_dir, echo).run(resume=resume)


def exit_status(result: Optional[BisectResult]) -> int:
    return result.exit_status if result is not None else EXIT_INFRA
