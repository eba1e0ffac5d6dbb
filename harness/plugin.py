"""pytest plugin: target options, the session ``kvm_target`` fixture, the target's facts as JUnit properties,
per-test kernel log windows (a splat fails the test that caused it), flaky-test retries and the run summary."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from .results import workers
from .results.junit_hook import junit_writer, suite_property
from . import __version__, parallel, progress, stages
from .errors import HarnessError
from .results.window import KernelLogWindow, can_read_kernel_log, splat_failure_message
from .session import SessionTarget, find_holder, holder_of, install_holder
from .signals import install_sigterm_handler
from .targets.base import Target
from .targets.spec import DEFAULT_TARGET

log = logging.getLogger(__name__)

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvm-harness", "KVM harness: target under test")
    group.addoption("--kvm-target", default=DEFAULT_TARGET, action=parallel.TargetsAction,
                    help="qemu:s390x (default), qemu:x86_64, local, model or ssh://user@host[:port]; "
                         "repeat it to give each pytest-xdist worker its own target")
    group.addoption("--kvm-kernel", type=Path, default=None, help="boot this kernel image instead of the image's")
    group.addoption("--kvm-modules", type=Path, default=None,
                    help="modules staging dir (INSTALL_MOD_PATH) for --kvm-kernel")
    group.addoption("--kvm-accel", default="auto", choices=("auto", "kvm", "tcg"), help="QEMU accelerator")
    group.addoption("--kvm-boot-timeout", type=float, default=300.0, help="seconds until the target must be up")
    group.addoption("--kvm-artifacts", type=Path, default=None,
                    help="directory for console logs, dmesg and other evidence")
    group.addoption("--kvm-ssh-key", type=Path, default=None, help="private key for ssh:// targets")
    group.addoption("--kvm-known-hosts", type=Path, default=None, help="known_hosts file for ssh:// targets")
    group.addoption("--kvm-accept-new-host-key", action="store_true",
                    help="trust an ssh:// target's host key on first contact")
    group.addoption("--kvm-retry-failed", action="store_true",
                    help="retry a failed test once; a pass on retry is reported as flaky")
    group.addoption("--kvm-stage-mark", type=int, default=None, help=argparse.SUPPRESS)
    group.addoption("--kvm-quiet", action="store_true", default=False, help=argparse.SUPPRESS)
    group.addoption("--kvm-property", action="append", default=[], metavar="NAME=VALUE",
                    help="extra JUnit testsuite property (series, base commit, ...)")
    from .selftests.pytest_items import add_options as add_selftest_options

    add_selftest_options(group)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvm_pv: needs protected virtualization on the target")
    config.addinivalue_line(
        "markers", "kvm_expected_splat(*kinds): the test provokes kernel splats of these kinds on purpose")
    parallel.configure(config)  # xdist: this worker's target and artifacts, serial groups, worker in JUnit
    if workers.in_worker(config):
        config.pluginmanager.register(_WorkerExport(), "kvm_harness_worker_export")
    else:
        config.pluginmanager.register(workers.ControllerRelay(config), "kvm_harness_worker_relay")
    install_holder(config)
    install_sigterm_handler()
    _progress_through_capture(config)
    _junit_keeps_kernel_log(config)
    from .selftests import pytest_items

    if not config.pluginmanager.is_registered(pytest_items):
        config.pluginmanager.register(pytest_items, "kvm_harness_selftests")


class _WorkerExport:
    """In an xdist worker: hand the target's facts to the controller once everything else has finished."""

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from .results.summary import CAPS_KEY

        workers.export(session.config, session.config.stash.get(CAPS_KEY, None))


def _progress_through_capture(config: pytest.Config) -> None:
    """Let the progress display write while pytest captures output (collection builds, fixture boots)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None or progress.current() is None:
        return

    def sink(text: str) -> None:
        with capman.global_and_fixture_disabled():
            sys.stderr.write(text)
            sys.stderr.flush()

    progress.set_sink(sink)


def _junit_keeps_kernel_log(config: pytest.Config) -> None:
    """Unless the user chose otherwise, put each test's kernel log excerpt into its JUnit system-out."""
    xml = junit_writer(config)
    if xml is not None and getattr(xml, "logging", None) == "no":
        xml.logging = "system-out"


def pytest_unconfigure(config: pytest.Config) -> None:
    mark = getattr(config, "_kvm_stage_mark", None)
    if mark is not None:
        stages.forget_since(mark)
    holder = find_holder(config)
    if holder is not None:
        holder.close()


def _artifacts(config: pytest.Config) -> Optional[Path]:
    path = config.getoption("--kvm-artifacts")
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def kvm_target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """The started target under test, shared by the whole session."""
    config = request.config
    holder = holder_of(config)
    target = holder.get()
    suite_property(config, "harness_version", __version__)
    for item in config.getoption("--kvm-property"):
        name, _, value = item.partition("=")
        suite_property(config, name, value)
    try:
        facts = target.facts()
    except HarnessError as err:
        log.warning("could not read the target's facts: %s", err)
    else:
        for name, value in facts.as_properties().items():
            suite_property(config, name, value)
        artifacts = _artifacts(request.config)
        if artifacts is not None:
            (artifacts / "facts.json").write_text(json.dumps(facts.as_properties(), indent=2) + "\n")
    yield target


def _target_of(item: pytest.Item) -> Optional[Target]:
    """The target a test item runs against: its ``kvm_target`` argument, or the one it says it uses."""
    funcargs = getattr(item, "funcargs", None) or {}
    target = funcargs.get("kvm_target") or getattr(item, "kvm_target", None)
    return target if isinstance(target, Target) else None


def _expected_splat_kinds(item: pytest.Item) -> list[str]:
    marker = item.get_closest_marker("kvm_expected_splat")
    return list(marker.args) if marker else []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    target = _target_of(item)
    holder = holder_of(item.config)
    window = None
    if target is not None and can_read_kernel_log(target):
        # The cursor where the previous test's window ended starts this one: one kernel log read per test.
        window = KernelLogWindow(target, holder.cursors.get(id(target)))
        if window.start is not None:
            holder.cursors[id(target)] = window.start
    outcome = yield
    skipped = outcome.excinfo is not None and isinstance(outcome.excinfo[1], pytest.skip.Exception)
    if window is not None and not skipped:
        result = window.close(_expected_splat_kinds(item))
        if window.end is not None:
            holder.cursors[id(target)] = window.end
        if result is not None:
            _attach_window(item, holder, result)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Optional[bool]:
    """``--kvm-retry-failed``: a test whose call failed runs once more, set up afresh (function fixtures too).

    A pass on the retry is reported as FLAKY, with the first failure as the ``flaky`` property; a retry that
    fails again (an infrastructure error included) is reported as it is, never swallowed. Failures in setup
    are not retried: they are infrastructure, not the test.
    """
    if not item.config.getoption("--kvm-retry-failed"):
        return None
    from _pytest.runner import runtestprotocol  # the protocol pytest itself runs; there is no public one

    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    # The first attempt tears down the test itself but nothing above it (its module, class, session fixtures).
    reports = runtestprotocol(item, nextitem=item.parent, log=False)  # type: ignore[arg-type]
    call = next((r for r in reports if r.when == "call"), None)
    if call is not None and call.failed and not hasattr(call, "wasxfail"):
        crash = getattr(call.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else call.longreprtext
        first = (text.strip().splitlines() or ["failed"])[0]
        item._kvm_first_failure = first  # type: ignore[attr-defined]
        # runtestprotocol ends by dropping the item's fixture request: the retry sets everything up afresh.
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    elif nextitem is not item:
        item.session._setupstate.teardown_exact(nextitem)  # what the first run left for the next item
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _attach_window(item: pytest.Item, holder: SessionTarget, result: Any) -> None:
    """Keep a test's kernel log in its report (JUnit system-out) and its splats as properties."""
    item._kvm_window = result  # type: ignore[attr-defined]
    if result.text:
        item.add_report_section("call", "stdout", f"--- kernel log during this test ---\n{result.text}\n")
    for splat in result.expected:
        holder.attributed.add(splat.text)
        item.user_properties.append(("expected_splat", f"{splat.kind}: {splat.fingerprint}"))
    for splat in result.splats:
        holder.attributed.add(splat.text)
        item.user_properties.append(("splat", f"{splat.kind}: {splat.fingerprint}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if call.when != "call":
        return
    window = getattr(item, "_kvm_window", None)
    if window is not None and window.splats and report.outcome != "failed":
        report.outcome = "failed"
        report.longrepr = splat_failure_message(window.splats)
        if hasattr(report, "wasxfail"):
            del report.wasxfail
    first = getattr(item, "_kvm_first_failure", None)
    if first is not None and report.passed:
        report.kvm_flaky = True
        item.user_properties.append(("flaky", f"passed on retry; first attempt: {first}"))  # JUnit reads them


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    if report.when == "call" and getattr(report, "kvm_flaky", False):
        return "flaky", "R", ("FLAKY", {"yellow": True})
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Record splats printed outside any test's window, and the session's kernel log, before JUnit is written."""
    _stages_as_properties(session.config)
    from_workers = workers.seen(session.config)
    if from_workers is not None:
        from .results.summary import record_headline

        record_headline(session)  # the suites' conftest records it, but an xdist controller never loads it
        if from_workers.session_splats and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a worker's kernel splatted outside any test
    holder = holder_of(session.config)
    if holder.session_cursor is None or holder.target is None:
        return
    result = holder.session_cursor.close()
    if result is None:
        return
    artifacts = _artifacts(session.config)
    if artifacts is not None:
        (artifacts / "dmesg.txt").write_text(result.text + "\n")
    stray = [s for s in result.splats if s.text not in holder.attributed]
    session.config._kvm_session_splats = stray  # type: ignore[attr-defined]
    if not stray:
        return
    xml = junit_writer(session.config)
    for splat in stray:
        if xml is not None:
            xml.add_global_property("session_splat", f"{splat.kind}: {splat.fingerprint}")
    if exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _stages_as_properties(config: pytest.Config) -> None:
    """The stage timeline as JUnit testsuite properties ``stage:<name>`` = seconds."""
    xml = junit_writer(config)
    if xml is None:
        return
    for record in stages.records(getattr(config, "_kvm_stage_mark", 0)):
        xml.add_global_property(f"stage:{record.name}", f"{record.seconds:.1f}" +
                                ("" if record.outcome == "ok" else " failed"))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from .results.summary import write_summary

    reporter = _EchoToTerminal(terminalreporter) if config.getoption("--kvm-quiet") else terminalreporter
    write_summary(reporter, config)
    _write_timeline(reporter, config)


class _EchoToTerminal:
    """In quiet mode pytest's output goes to a file; the harness's summary also goes to the real stdout."""

    def __init__(self, reporter: Any) -> None:
        self._reporter = reporter
        self.stats = reporter.stats

    def section(self, title: str, sep: str = "=", **kwargs: Any) -> None:
        self._reporter.section(title, sep=sep, **kwargs)
        sys.__stdout__.write(f"{sep * 3} {title} {sep * 3}\n")

    def write_line(self, line: str, **kwargs: Any) -> None:
        self._reporter.write_line(line, **kwargs)
        sys.__stdout__.write(line + "\n")
        sys.__stdout__.flush()


def _write_timeline(terminalreporter: Any, config: pytest.Config) -> None:
    """The stages this run went through (source, build, image, boot, tests) with their wall times."""
    entries = stages.records(getattr(config, "_kvm_stage_mark", 0))
    from_workers = workers.seen(config)
    if from_workers is not None:  # an xdist controller: each worker's stages, named by worker
        entries += [stages.StageRecord(f"{worker}: {r.name}", r.seconds, r.outcome, r.detail)
                    for worker, records in sorted(from_workers.stages.items()) for r in records]
    holder = find_holder(config)
    ran_a_target = from_workers is not None or (
        holder is not None and (holder.target is not None or holder.error is not None))
    if not entries or not (ran_a_target or config.getoption("--kvm-artifacts") is not None):
        return
    started = getattr(config, "_kvm_session_started", None)
    if started is not None:
        entries.append(stages.StageRecord("pytest session (all above)", round(time.monotonic() - started, 2), "ok"))
    terminalreporter.section("kvmh timeline", sep="-")
    for line in stages.timeline_lines(entries):
        terminalreporter.write_line(f"kvmh: {line}")
    artifacts = _artifacts(config)
    if artifacts is not None:
        stages.write_json(artifacts / "stages.json", entries)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._kvm_session_started = time.monotonic()  # type: ignore[attr-defined]
    given = session.config.getoption("--kvm-stage-mark")
    session.config._kvm_stage_mark = stages.mark() if given is None else given  # type: ignore[attr-defined]
