"""Parallel guests with pytest-xdist: one target per worker, each test naming its worker and target.

- ``--kvm-target`` may be given several times; worker ``gwN`` takes target ``N mod len(targets)``.
- Each worker starts its own target in its own session: a QEMU guest gets its own free SSH port and its own
  artifacts directory (``<artifacts>/gwN``: console log, QEMU command, pid file), while the guest image
  (kernel and initramfs) is only read, so every worker shares it.
- Tests marked ``kvm_serial`` (optionally ``kvm_serial("group")``) stay together on one worker
  (xdist ``loadgroup`` distribution).
- Every test's JUnit record carries ``worker`` and ``target`` properties; xdist merges the workers' reports
  into the one JUnit file.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest

from .errors import UsageError

log = logging.getLogger(__name__)

SERIAL_MARK = "kvm_serial"


class TargetsAction(argparse.Action):
    """``--kvm-target`` repeated: all of them in ``kvm_targets``, the first in ``kvm_target``."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Optional[str] = None
                 ) -> None:
        given = list(getattr(namespace, "kvm_targets", None) or [])
        given.append(values)
        namespace.kvm_targets = given
        setattr(namespace, self.dest, given[0])


def worker_id(config: pytest.Config) -> Optional[str]:
    """``gw0``, ``gw1``, ... in an xdist worker; None in the controller or without xdist."""
    workerinput = getattr(config, "workerinput", None)
    return workerinput.get("workerid") if workerinput else None


def worker_count(config: pytest.Config) -> int:
    """In an xdist worker, how many workers the run has (each with its own target); 1 anywhere else."""
    workerinput = getattr(config, "workerinput", None)
    return max(1, int(workerinput.get("workercount", 1))) if workerinput else 1


def targets_of(config: pytest.Config) -> list[str]:
    given = getattr(config.option, "kvm_targets", None)
    return list(dict.fromkeys(given)) if given else [config.option.kvm_target]


def configure(config: pytest.Config) -> None:
    """Choose this worker's target and artifacts directory; keep ``kvm_serial`` tests on one worker."""
    config.addinivalue_line("markers", f"{SERIAL_MARK}(group='kvm-serial'): keep these tests together on one "
                                       "xdist worker (they must not share a target with other workers' tests)")
    config.pluginmanager.register(_ParallelPlugin(config), "kvm_harness_parallel")
    targets = targets_of(config)
    worker = worker_id(config)
    if worker is None:
        if len(targets) > 1 and not _xdist_workers(config):
            raise pytest.UsageError(f"{len(targets)} --kvm-target given but no pytest-xdist workers: pass -n "
                                    f"{len(targets)} (pytest-xdist) so each target has a worker")
        return
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    config.option.kvm_target = targets[index % len(targets)]
    artifacts = config.option.kvm_artifacts
    if artifacts is not None:
        config.option.kvm_artifacts = Path(artifacts) / worker
    log.info("xdist worker %s: target %s", worker, config.option.kvm_target)


def _xdist_workers(config: pytest.Config) -> int:
    value = getattr(config.option, "numprocesses", None)
    if value in (None, 0):
        return 0
    if isinstance(value, str):  # "auto" / "logical"
        return os.cpu_count() or 1
    return int(value)


class _ParallelPlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.worker = worker_id(config)

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            mark = item.get_closest_marker(SERIAL_MARK)
            if mark is not None:
                item.add_marker(pytest.mark.xdist_group(mark.args[0] if mark.args else "kvm-serial"))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if self.worker is None and len(targets_of(self.config)) == 1:
            return
        item.user_properties.append(("worker", self.worker or "controller"))
        item.user_properties.append(("target", self.config.option.kvm_target))


def xdist_args(jobs: int, targets: Sequence[str] = ()) -> list[str]:
    """pytest arguments for ``kvmh run -j N`` (and ``--also-target``): N workers, serial groups kept together."""
    if jobs < 1:
        raise UsageError(f"-j {jobs} is not a worker count: pass -j 1 or more")
    if len(targets) + 1 > jobs:
        raise UsageError(f"{len(targets) + 1} targets need at least as many workers: pass -j {len(targets) + 1}")
    if jobs == 1 and not targets:
        return []
    if importlib.util.find_spec("xdist") is None:
        raise UsageError("-j needs pytest-xdist: pip install 'kvm-harness[parallel]'")
    out = ["-p", "xdist.plugin", "-n", str(jobs), "--dist", "loadgroup"]
    for target in targets:
        out += ["--kvm-target", target]
    return out
