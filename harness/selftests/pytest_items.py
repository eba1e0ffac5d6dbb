"""pytest collection of the C KVM selftests: one item per program, one report per subtest.

A marker file (``harness/suites/kvm_selftests.kvmh``, any ``*.kvmh`` whose ``suite`` line says
``kvm-selftests``) expands into one item per built program, named like the program
(``s390x/memop``) so ``-k memop`` selects it. Collection builds the tree's selftests for the
target's architecture (cached, so an unchanged tree builds nothing). Running an item runs the
program on the session's target; each KTAP subtest is reported as ``…::program::subtest`` with its
own outcome, so JUnit shows every subtest's skip reason or failure message.

The harness plugin registers this module as a plugin and calls ``add_options``.

Why one module of this size: it is pytest's side of the selftests (collection, items, subtest reports,
the per-session state they share); the verdicts are ``expectations.py`` and ``verdict.py``.
"""

from __future__ import annotations

import logging
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import pytest
from _pytest._code.code import ReprFileLocation, TerminalRepr

from ..results.junit_hook import junit_writer
from ..errors import HarnessError
from ..parallel import worker_id
from ..stages import stage
from .build import SelftestBuild, build_selftests, harness_arch
from .expectations import (
    PROP_HARNESS_SKIP,
    PROP_OUTCOME,
    PROP_PROGRAM,
    PROP_REASON,
    PROP_SUBTEST,
    Expectation,
    Expectations,
    ResultRecord,
    Verdict,
    headline as _headline,
    judge,
    write_results,
)
from .ktap import TestResult
from .runner import ProgramRun, RunOptions, SelftestRunner, select_programs

log = logging.getLogger(__name__)

_PROGS_LINE = re.compile(r"^TEST_GEN_PROGS_(\w+)\s*\+?=\s*(.*)$")
SUITE_NAME = "kvm-selftests"
SETUP_FAILED = "the KVM selftest build failed"
"""How an item of a suite whose build failed begins its error message (a bisect reads it as the test failing)."""
MARKER_SUFFIX = ".kvmh"
OUTPUT_LIMIT = 200_000
REASON_LIMIT = 2000
_STATE = pytest.StashKey["_SessionState"]()


def add_options(group: Any) -> None:
    """Add the selftest options to the plugin's option group."""
    group.addoption("--kvm-tree", type=Path, default=None,
                    help="kernel tree whose KVM selftests to build (default: Debian's linux-source-6.12)")
    group.addoption("--kvm-selftest-arch", default=None, choices=("s390x", "x86_64"),
                    help="architecture to build the selftests for (default: the target's; s390x for ssh://)")
    group.addoption("--selftest-timeout-factor", type=float, default=None,
                    help="multiply each program's settings timeout (default 1, or 4 under QEMU TCG)")
    group.addoption("--selftest-budget", type=float, default=None, metavar="SECONDS",
                    help="time budget for all selftest programs; programs past it are skipped")
    group.addoption("--selftest-include", action="append", default=[], metavar="GLOB",
                    help="only run selftest programs matching this glob (repeatable)")
    group.addoption("--selftest-exclude", action="append", default=[], metavar="GLOB",
                    help="never run selftest programs matching this glob (repeatable)")
    group.addoption("--kvm-expectations", type=Path, default=None, metavar="FILE",
                    help="per-host expectations: known failures become xfail, changes fail")
    group.addoption("--kvm-write-expectations", type=Path, default=None, metavar="FILE",
                    help="write the expectations this run's selftest results describe to FILE")


def _opt(config: pytest.Config, name: str, default: Any = None) -> Any:
    try:
        return config.getoption(name)
    except ValueError:
        return default


# -- marker files --------------------------------------------------------------------------------

def read_marker(path: Path) -> Optional[dict[str, str]]:
    """The ``key = value`` settings of a marker file, or None if it is not a kvm-selftests marker."""
    settings: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings if settings.get("suite") == SUITE_NAME else None


def collect_selftests_file(file_path: Path, parent: pytest.Collector) -> Optional[pytest.Collector]:
    """The collector for a kvm-selftests marker file, or None for any other file."""
    if file_path.suffix != MARKER_SUFFIX:
        return None
    settings = read_marker(file_path)
    if settings is None:
        return None
    return SelftestFile.from_parent(parent, path=file_path, settings=settings)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Optional[pytest.Collector]:
    return collect_selftests_file(file_path, parent)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvm_selftest: a C KVM selftest program (or one of its subtests)")
    if not _under_xdist(config):
        config.pluginmanager.register(_SubtestRelay(config), "kvm_harness_subtest_relay")


# -- session state -------------------------------------------------------------------------------

@dataclass
class _SessionState:
    build: Optional[SelftestBuild] = None
    runner: Optional[SelftestRunner] = None
    expectations: Expectations = field(default_factory=Expectations)
    records: list[ResultRecord] = field(default_factory=list)
    facts_recorded: bool = False
    build_error: Optional[HarnessError] = None
    planned: list[str] = field(default_factory=list)


def _state(config: pytest.Config) -> _SessionState:
    state = config.stash.get(_STATE, None)
    if state is None:
        state = _SessionState()
        path = _opt(config, "--kvm-expectations")
        if path is not None:
            state.expectations = Expectations.load(path)
        config.stash[_STATE] = state
    return state


def selftest_arch(config: pytest.Config) -> Optional[str]:
    """The architecture to build for: explicit, else the target's (None for the model target)."""
    explicit = _opt(config, "--kvm-selftest-arch")
    if explicit:
        return harness_arch(explicit)
    from ..targets.spec import parse_target_spec

    spec = parse_target_spec(_opt(config, "--kvm-target") or "")
    if spec.kind == "qemu":
        return spec.arch
    if spec.kind == "local":
        return harness_arch(platform.machine())
    if spec.kind == "ssh":
        return "s390x"
    return None


def _tree(config: pytest.Config) -> Path:
    tree = _opt(config, "--kvm-tree")
    if tree is not None:
        return Path(tree)
    from ..kernel.source import linux_source

    return linux_source()


# -- collection ----------------------------------------------------------------------------------

class SelftestFile(pytest.File):
    """A kvm-selftests marker file: builds the selftests and yields one item per program."""

    def __init__(self, *, settings: Optional[dict[str, str]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings or {}

    def collect(self) -> Iterator[pytest.Item]:
        config = self.config
        state = _state(config)
        arch = selftest_arch(config)
        if arch is None:
            yield SelftestPlaceholder.from_parent(self, name="kvm-selftests",
                                                  reason="the model target runs no C selftests")
            return
        if state.build is None and state.build_error is None:
            tree: Optional[Path] = None
            try:
                tree = _tree(config)
                with stage(f"selftests build ({arch})"):
                    state.build = build_selftests(tree, arch)
            except HarnessError as err:
                # The suite's own setup failed: its items error, every other suite still runs, exit 2.
                state.build_error = err
                config._kvm_infra_error = err  # type: ignore[attr-defined]
                state.planned = listed_programs(tree, arch) if tree is not None else []
            else:
                b = state.build
                log.info("KVM selftests %s: %d programs (%s, %.1f s)", arch, len(b.programs),
                         "cached" if b.cached else "built", b.duration_s)
        if state.build_error is not None:
            for name in state.planned or ["kvm-selftests-build"]:
                yield SelftestSetupError.from_parent(self, name=name, error=state.build_error)
            return
        build = state.build
        assert build is not None
        include = self.settings.get("include", "").split() + list(_opt(config, "--selftest-include") or [])
        exclude = self.settings.get("exclude", "").split() + list(_opt(config, "--selftest-exclude") or [])
        for program in select_programs(build.programs, include, exclude):
            yield SelftestItem.from_parent(self, name=program, program=program)
        for name, why in build.omitted.items():
            yield SelftestPlaceholder.from_parent(self, name=name, reason=f"not built: {why}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, HarnessError):
            return f"{self.path.name}: {excinfo.value}"
        return super().repr_failure(excinfo)


class SelftestSetupError(pytest.Item):
    """An item of a suite whose setup (the selftest build) failed: it errors with that failure."""

    def __init__(self, *, error: HarnessError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def setup(self) -> None:
        raise SelftestFailed(f"{SETUP_FAILED}, so {self.name} did not run: {self.error}")

    def runtest(self) -> None:  # pragma: no cover - setup always raises
        raise AssertionError("unreachable")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Union[Path, str], Optional[int], str]:
        return self.path, 0, f"selftest {self.name}"


def _under_xdist(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker process."""
    return worker_id(config) is not None


def listed_programs(tree: Path, arch: str) -> list[str]:
    """The programs the tree's KVM selftest Makefile lists for ``arch`` (read, not built); [] when unknown."""
    kvm_dir = Path(tree) / "tools/testing/selftests/kvm"
    names: list[str] = []
    arch_dirs = {"s390x": ("s390x", "s390"), "x86_64": ("x86_64", "x86")}.get(arch, (arch,))
    for makefile in (kvm_dir / "Makefile.kvm", kvm_dir / "Makefile"):
        try:
            text = makefile.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            match = _PROGS_LINE.match(line)
            if match and match.group(1) in arch_dirs:
                names.extend(match.group(2).split())
        if names:
            break
    return list(dict.fromkeys(names))


class SelftestPlaceholder(pytest.Item):
    """An item that only reports why something was not run."""

    def __init__(self, *, reason: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        raise pytest.skip.Exception(self.reason, _use_item_location=True)

    def reportinfo(self) -> tuple[Union[Path, str], Optional[int], str]:
        return self.path, 0, self.name


class SelftestFailed(Exception):
    """A selftest program (or a judgement on it) failed; the message is shown as is."""


class _SelftestRepr(TerminalRepr):
    """A failure text with a one-line ``reprcrash`` (JUnit's failure message)."""

    def __init__(self, text: str, path: str, headline: str) -> None:
        self.text = text
        self.reprcrash = ReprFileLocation(path, 0, headline)

    def toterminal(self, tw: Any) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text


class SelftestItem(pytest.Item):
    """One selftest program on the session's target."""

    def __init__(self, *, program: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.program = program
        self.add_marker(pytest.mark.kvm_selftest)
        self.kvm_target = None
        self._reported = False
        self.xdist_subtests: list[dict[str, Any]] = []  # in an xdist worker: subtests for the controller

    def setup(self) -> None:
        from ..session import holder_of

        self.kvm_target = holder_of(self.config).get()
        _record_facts_once(self.config, self.kvm_target)

    def reportinfo(self) -> tuple[Union[Path, str], Optional[int], str]:
        return self.path, 0, f"selftest {self.program}"

    def _runner(self) -> SelftestRunner:
        state = _state(self.config)
        assert state.build is not None and self.kvm_target is not None
        if state.runner is None or state.runner.target is not self.kvm_target:
            from ..results.window import can_read_kernel_log

            options = RunOptions(
                timeout_factor=_opt(self.config, "--selftest-timeout-factor"),
                budget_s=_opt(self.config, "--selftest-budget"),
                # The plugin's kernel log window brackets each item already (and fails it on a splat).
                capture_dmesg=not can_read_kernel_log(self.kvm_target),
            )
            state.runner = SelftestRunner(self.kvm_target, state.build, options)
        return state.runner

    def runtest(self) -> None:
        state = _state(self.config)
        run = self._runner().run(self.program)
        expectations = state.expectations
        verdict = judge(run.outcome.value, run.result.reason, expectations.get(self.program),
                        harness_skip=run.harness_skip)
        if not self._reported:
            self._record(state, run)
        if run.output:
            self.add_report_section("call", "stdout selftest", _clip(run.output, OUTPUT_LIMIT))
        # A retry (--kvm-retry-failed) runs the program again; its subtests were reported already.
        sub_verdicts = self._report_subtests(run, expectations, state, emit=not self._reported,
                                             program_expected=verdict.outcome == "xfailed")
        self._reported = True
        verdict = _program_verdict(verdict, run, sub_verdicts, expectations.get(self.program))
        _raise_for(verdict, run)

    def _record(self, state: _SessionState, run: ProgramRun) -> None:
        reason = _clip(run.result.reason, REASON_LIMIT)
        props = [(PROP_PROGRAM, self.program), (PROP_OUTCOME, run.outcome.value), (PROP_REASON, reason),
                 ("selftest_duration_s", f"{run.duration_s:.2f}"), ("selftest_timeout_s", f"{run.timeout_s:g}")]
        if run.exit_status is not None:
            props.append(("selftest_exit_status", str(run.exit_status)))
        if run.harness_skip:
            props.append((PROP_HARNESS_SKIP, "1"))
        self.user_properties.extend(props)
        state.records.append(ResultRecord(self.program, None, run.outcome.value, run.result.reason, run.harness_skip))

    def _report_subtests(self, run: ProgramRun, expectations: Expectations, state: _SessionState,
                         emit: bool = True, program_expected: bool = False) -> list[tuple[TestResult, Verdict]]:
        out: list[tuple[TestResult, Verdict]] = []
        known_failure = program_expected
        for name, sub in _flatten(run.result.subtests):
            own = expectations.get(self.program, name)
            verdict = judge(sub.outcome.value, sub.reason, own)
            if own is None and getattr(sub, "missing", False) and known_failure and verdict.outcome == "failed":
                # Planned but never run because a known failure ended the program: part of that failure.
                verdict = Verdict("xfailed", f"{sub.reason} (after a known failure of {self.program})")
            known_failure = known_failure or (verdict.outcome == "xfailed" and sub.outcome.is_failure)
            out.append((sub, verdict))
            if emit:
                state.records.append(ResultRecord(self.program, name, sub.outcome.value, sub.reason))
                spec = self._subtest_spec(name, sub, verdict)
                if _under_xdist(self.config):
                    # xdist accepts reports only for the items it scheduled: the controller reports them
                    # (the spec rides on this item's call report; see _SubtestRelay).
                    self.xdist_subtests.append(spec)
                else:
                    emit_subtest(self.config, spec)
        return out

    def _subtest_spec(self, name: str, sub: TestResult, verdict: Verdict) -> dict[str, Any]:
        """A subtest's report as plain data (it crosses the xdist wire as it is)."""
        return {
            "nodeid": f"{self.nodeid}::{name}",
            "location": [str(self.location[0]), 0, f"{self.location[2]}::{name}"],
            "fspath": str(self.path),
            "keywords": [name, self.program, "kvm_selftest"],
            "outcome": verdict.outcome,
            "message": verdict.message,
            "failure": _failure_text(verdict.message, sub.log) if verdict.outcome == "failed" else "",
            "properties": [[PROP_PROGRAM, self.program], [PROP_SUBTEST, name], [PROP_OUTCOME, sub.outcome.value],
                           [PROP_REASON, _clip(sub.reason, REASON_LIMIT)]],
        }

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, SelftestFailed):
            text = str(excinfo.value)
            return _SelftestRepr(text, str(self.location[0]), _headline(text))
        if isinstance(excinfo.value, HarnessError):
            text = f"{self.program}: {excinfo.value}"
            return _SelftestRepr(text, str(self.location[0]), text)
        return super().repr_failure(excinfo)


def emit_subtest(config: pytest.Config, spec: dict[str, Any]) -> None:
    """Report one subtest (call and teardown reports) as if it were an item of its own."""
    nodeid, location = spec["nodeid"], tuple(spec["location"])
    keywords = {k: 1 for k in spec["keywords"]}
    now = time.time()
    longrepr: Any = None
    outcome = spec["outcome"]
    if outcome == "skipped":
        longrepr = (spec["fspath"], 1, f"Skipped: {spec['message']}")
    elif outcome == "failed":
        longrepr = _SelftestRepr(spec["failure"], location[0], _headline(spec["message"]))
    report = pytest.TestReport(nodeid, location, keywords, "skipped" if outcome == "xfailed" else outcome,
                               longrepr, "call", sections=[], duration=0.0, start=now, stop=now)
    if outcome == "xfailed":
        report.wasxfail = spec["message"]
    config.hook.pytest_runtest_logreport(report=report)
    _uncount_progress(config, report)
    props = [tuple(p) for p in spec["properties"]]
    teardown = pytest.TestReport(nodeid, location, keywords, "passed", None, "teardown", sections=[],
                                 duration=0.0, user_properties=props, start=now, stop=now)
    config.hook.pytest_runtest_logreport(report=teardown)


def _uncount_progress(config: pytest.Config, report: pytest.TestReport) -> None:
    """Keep pytest's ``[NN%]`` column at items run / items collected: a subtest is not a collected item."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reported = getattr(reporter, "_progress_nodeids_reported", None)
    if isinstance(reported, set):
        reported.discard(getattr(report, "id", report.nodeid))  # pytest 9 keys it by a structured id
        reported.discard(report.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """In an xdist worker, a program's call report carries its subtests to the controller."""
    outcome = yield
    if call.when == "call" and isinstance(item, SelftestItem) and item.xdist_subtests:
        outcome.get_result().kvm_subtests = item.xdist_subtests
        item.xdist_subtests = []


class _SubtestRelay:
    """In the xdist controller: report the subtests a worker's program report carries, as a serial run does."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        placement = [[name, value] for name, value in report.user_properties if name in ("worker", "target")]
        for spec in getattr(report, "kvm_subtests", None) or ():
            emit_subtest(self.config, {**spec, "properties": spec["properties"] + placement})


def _record_facts_once(config: pytest.Config, target: Any) -> None:
    """Put the target's facts into the JUnit testsuite properties (once), as the kvm_target fixture does."""
    state = _state(config)
    if state.facts_recorded:
        return
    state.facts_recorded = True
    xml = junit_writer(config)
    if xml is None:
        return
    try:
        facts = target.facts()
    except HarnessError as err:
        log.warning("could not read the target's facts: %s", err)
        return
    recorded = {name for name, _ in getattr(xml, "global_properties", [])}
    for name, value in facts.as_properties().items():
        if name not in recorded:
            xml.add_global_property(name, value)
    build = state.build
    if build is not None:
        for name, value in (("selftest_tree", str(build.tree)), ("selftest_tree_id", build.tree_id),
                            ("selftest_compiler", build.compiler), ("selftest_build_key", build.key)):
            xml.add_global_property(name, value)


def _flatten(subtests: list[TestResult], prefix: str = "") -> Iterator[tuple[str, TestResult]]:
    """(name, result) for every subtest, nested ones as ``parent::child``; duplicate names numbered."""
    seen: dict[str, int] = {}
    for sub in subtests:
        base = sub.name or f"#{sub.number}"
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base} #{seen[base]}"
        full = f"{prefix}{name}"
        yield full, sub
        if sub.subtests:
            yield from _flatten(sub.subtests, f"{full}::")


def _program_verdict(verdict: Verdict, run: ProgramRun, subs: list[tuple[TestResult, Verdict]],
                     own: Optional[Expectation]) -> Verdict:
    """A failing program whose failures are all expected subtest failures is itself an expected failure."""
    if own is not None or verdict.outcome != "failed" or run.outcome.value != "fail":
        return verdict
    failing = [(s, v) for s, v in subs if s.outcome.is_failure]
    if failing and all(v.outcome == "xfailed" for _, v in failing):
        names = ", ".join(s.name for s, _ in failing)
        return Verdict("xfailed", f"only known subtest failures: {names}")
    return verdict


def _raise_for(verdict: Verdict, run: ProgramRun) -> None:
    if verdict.outcome == "passed":
        return
    if verdict.outcome == "skipped":
        raise pytest.skip.Exception(verdict.message, _use_item_location=True)
    if verdict.outcome == "xfailed":
        pytest.xfail(verdict.message)
    crashed = run.outcome.value in ("crashed", "timeout")
    raise SelftestFailed(_failure_text(f"{run.program}: {verdict.message}", [], run.dmesg if crashed else ""))


def _failure_text(message: str, log_lines: list[str], dmesg: str = "", tail: int = 30) -> str:
    """The message, the test's own output lines (unless the message quotes them) and a kernel log excerpt."""
    parts = [message]
    useful = [line for line in log_lines if line.strip()]
    if useful and "last output" not in message:
        parts += ["", "--- output ---", *useful[-tail:]]
    if dmesg.strip():
        lines = dmesg.strip().splitlines()
        parts += ["", f"--- kernel log while it ran (last {min(tail, len(lines))} lines) ---", *lines[-tail:]]
    return "\n".join(parts)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n[... clipped ...]\n" + text[-limit // 2:]


# -- writing expectations at the end of the session ------------------------------------------------

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = _opt(session.config, "--kvm-write-expectations")
    state = session.config.stash.get(_STATE, None)
    if path is None or state is None:
        return
    count = write_results(state.records, Path(path))
    log.info("wrote %d expectations to %s", count, path)
