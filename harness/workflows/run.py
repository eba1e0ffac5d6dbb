"""Workflows behind the CLI: boot-and-run, pytest runs with an artifacts directory, and the main job."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import pytest

from .. import stages
from ..errors import EXIT_INFRA, EXIT_OK, EXIT_TEST_FAILED, EXIT_USAGE, HarnessError, UsageError
from ..session import find_holder
from ..signals import install_sigterm_handler
from ..targets.spec import TargetOptions, parse_target_spec
from ..targets.factory import make_target

log = logging.getLogger(__name__)

DEFAULT_ARTIFACTS_ROOT = Path("kvmh-artifacts")


def new_artifacts_dir(root: Optional[Path], label: str) -> Path:
    """Create and return a fresh per-run artifacts directory under ``root``."""
    root = Path(root) if root is not None else DEFAULT_ARTIFACTS_ROOT
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{slug}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{slug}-{n}"
    path.mkdir(parents=True)
    return path.resolve()


def boot_and_run(spec: str, options: TargetOptions, command: Optional[str], timeout: float) -> int:
    """Boot a target; run one command (streaming its output) and return its status, or attach the console."""
    install_sigterm_handler()
    parse_target_spec(spec)
    if options.artifacts_dir is None:
        options.artifacts_dir = new_artifacts_dir(None, f"boot-{spec}")
    target = make_target(spec, options)
    try:
        target.start()
        facts = target.facts()
        log.info("target %s up: kernel %s, accelerator %s", spec, facts.kernel_release, facts.accelerator)
        if command is None:
            interact = getattr(target, "interact", None)
            if interact is None:
                print(f"kvmh: {spec} is up (kernel {facts.kernel_release}); pass --run CMD to run a command",
                      file=sys.stderr)
                return EXIT_OK
            print(f"kvmh: console of {spec} (kernel {facts.kernel_release}, {facts.accelerator}); "
                  "Ctrl-] leaves", file=sys.stderr)
            interact()
            return EXIT_OK

        def stream(name: str, text: str) -> None:
            out = sys.stdout if name == "stdout" else sys.stderr
            out.write(text)
            out.flush()

        result = target.run(command, timeout=timeout, on_output=stream)
        if result.timed_out:
            print(f"kvmh: error: command {command!r} outlived its {timeout:g} s timeout and was killed",
                  file=sys.stderr)
            return EXIT_INFRA
        return result.exit_status
    finally:
        target.close()


def dry_run(spec: str, options: TargetOptions) -> int:
    """Print the command that would boot ``spec`` (QEMU targets only)."""
    target = make_target(spec, options)
    command = getattr(target, "dry_run_command", None)
    if command is None:
        raise UsageError(f"--dry-run shows a QEMU command line: target {spec} boots no QEMU")
    print(command())
    return EXIT_OK


class _RunObserver:
    """A pytest plugin object that keeps the config so the CLI can read the run's infrastructure errors."""

    def __init__(self) -> None:
        self.config: Optional[pytest.Config] = None

    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config


def _has_option(args: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


@contextlib.contextmanager
def debug_log(artifacts: Path) -> Iterator[Path]:
    """Keep every log record of the run, debug included, in ``artifacts/kvmh.log`` whatever the console shows."""
    path = artifacts / "kvmh.log"
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        yield path
        return
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level > logging.DEBUG or root.level == logging.NOTSET:
        root.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def only_harness_plugins() -> Iterator[None]:
    """No plugin but the harness's in the main job's pytest run (test extras such as pytest-benchmark stay out)."""
    saved = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
        else:
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = saved


def run_pytest(args: list[str], *, artifacts_root: Optional[Path], target: str,
               artifacts: Optional[Path] = None, quiet: bool = False) -> int:
    """Run pytest in-process with an artifacts dir and JUnit file; map its result to kvmh's exit codes.

    Only the harness's plugin is loaded. With ``quiet`` pytest's own output goes to ``pytest-output.txt``
    in the artifacts and the terminal shows only the harness's summary.
    """
    install_sigterm_handler()
    if artifacts is None:
        artifacts = new_artifacts_dir(artifacts_root, target)
    args = ["-p", "harness.plugin", *args]
    if quiet:
        args.append("--kvm-quiet")
    if not _has_option(args, "--kvm-artifacts"):
        args += ["--kvm-artifacts", str(artifacts)]
    if not _has_option(args, "--junitxml") and not _has_option(args, "--junit-xml"):
        args.append(f"--junitxml={artifacts / 'junit.xml'}")
    args += ["-o", "junit_family=xunit1"]
    observer = _RunObserver()
    with debug_log(artifacts), only_harness_plugins():
        log.debug("pytest %s", " ".join(args))
        if quiet:
            with open(artifacts / "pytest-output.txt", "w") as captured, contextlib.redirect_stdout(captured):
                status = pytest.main(args, plugins=[observer])
        else:
            status = pytest.main(args, plugins=[observer])
    print(f"kvmh: artifacts in {artifacts}")
    return exit_status_for(int(status), observer.config)


def exit_status_for(pytest_status: int, config: Optional[pytest.Config]) -> int:
    """Map a pytest exit status (and any infrastructure error the plugin saw) to kvmh's exit status."""
    infra = getattr(config, "_kvm_infra_error", None) if config is not None else None
    holder = find_holder(config)
    if infra is None and holder is not None:
        infra = holder.error
    if infra is not None:
        print(f"kvmh: infrastructure failure: {infra}", file=sys.stderr)
        return EXIT_INFRA
    if pytest_status == pytest.ExitCode.OK:
        return EXIT_OK
    if pytest_status == pytest.ExitCode.TESTS_FAILED:
        return EXIT_TEST_FAILED
    if pytest_status == pytest.ExitCode.USAGE_ERROR:
        return EXIT_USAGE
    if pytest_status == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("kvmh: no test was collected (check -k / --include selections)", file=sys.stderr)
        return EXIT_TEST_FAILED
    return EXIT_INFRA


def main_job(args: argparse.Namespace, target_args: Callable[[argparse.Namespace], list[str]]) -> int:
    """``kvmh run``: build the series if one is given, boot the target, run every suite, report."""
    install_sigterm_handler()
    stage_mark = stages.mark()
    extra = list(args.pytest_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    parse_target_spec(args.target)
    artifacts = new_artifacts_dir(args.artifacts, args.target)
    with debug_log(artifacts):
        return _main_job_logged(args, target_args, artifacts, extra, stage_mark)


def _main_job_logged(args: argparse.Namespace, target_args: Callable[[argparse.Namespace], list[str]],
                     artifacts: Path, extra: list[str], stage_mark: int) -> int:
    if args.series:
        if args.kernel is not None:
            raise UsageError("--series builds its own kernel: drop --kernel, or drop --series to boot --kernel")
        from .build import build_for_run

        try:
            build = build_for_run(args)
        except HarnessError as err:
            _report_infra_failure(artifacts, args, "kernel build", err)
            raise
        args.kernel = build.image
        args.modules = build.modules_dir
        extra += build.pytest_properties_args()
        if not getattr(args, "quiet", False):
            print(f"kvmh: built {build.arch} kernel {build.release}: {build.image}")
    pytest_args = ["--pyargs", "harness.suites", *target_args(args)]
    if args.tree is not None:
        pytest_args += ["--kvm-tree", str(args.tree)]
    if args.junitxml is not None:
        pytest_args.append(f"--junitxml={args.junitxml}")
    pytest_args += ["-rs", "--kvm-stage-mark", str(stage_mark), *extra]
    return run_pytest(pytest_args, artifacts_root=args.artifacts, target=args.target, artifacts=artifacts,
                      quiet=getattr(args, "quiet", False))


def _report_infra_failure(artifacts: Path, args: argparse.Namespace, stage: str, err: HarnessError) -> None:
    """Leave a JUnit file naming the failed stage, so CI dashboards show why no test ran."""
    from ..results.infra_junit import write_infra_failure

    properties = {"target": args.target, "tree": str(args.tree or "linux-source-6.12"), "series": str(args.series)}
    write_infra_failure(artifacts / "junit.xml", stage, str(err), err.details, properties)
    if args.junitxml is not None:
        write_infra_failure(Path(args.junitxml), stage, str(err), err.details, properties)
    print(f"kvmh: artifacts in {artifacts}", file=sys.stderr)
