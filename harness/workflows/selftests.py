"""What ``kvmh selftests`` runs: pytest on the kvm-selftests marker file, with the selftest options."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)


def marker_file() -> Path:
    """The marker file that expands into one pytest item per KVM selftest program."""
    # A data file of the shipped suites (found by path: the suites are pytest modules, above this layer).
    return Path(__file__).resolve().parents[1] / "suites" / "kvm_selftests.kvmh"


def selftest_pytest_args(
    *,
    tree: Optional[Path] = None,
    expectations: Optional[Path] = None,
    write_expectations: Optional[Path] = None,
    timeout_factor: Optional[float] = None,
    budget: Optional[float] = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    keyword: Optional[str] = None,
    junitxml: Optional[Path] = None,
    arch: Optional[str] = None,
) -> list[str]:
    """pytest arguments that run the KVM selftests with these settings (the target options are separate)."""
    args = [str(marker_file()), "-rsxX"]
    if tree is not None:
        args += ["--kvm-tree", str(tree)]
    if arch:
        args += ["--kvm-selftest-arch", arch]
    if expectations is not None:
        args += ["--kvm-expectations", str(expectations)]
    if write_expectations is not None:
        args += ["--kvm-write-expectations", str(write_expectations)]
    if timeout_factor is not None:
        args += ["--selftest-timeout-factor", str(timeout_factor)]
    if budget is not None:
        args += ["--selftest-budget", str(budget)]
    for pattern in include:
        args += ["--selftest-include", pattern]
    for pattern in exclude:
        args += ["--selftest-exclude", pattern]
    if keyword:
        args += ["-k", keyword]
    if junitxml is not None:
        args.append(f"--junitxml={junitxml}")
    return args


def selftests_pytest_args(args: argparse.Namespace) -> list[str]:
    """The same from the ``kvmh selftests`` argparse namespace (missing attributes mean 'not given')."""
    return selftest_pytest_args(
        tree=getattr(args, "tree", None),
        expectations=getattr(args, "expectations", None),
        write_expectations=getattr(args, "write_expectations", None),
        timeout_factor=getattr(args, "timeout_factor", None),
        budget=getattr(args, "budget", None),
        include=getattr(args, "include", None) or (),
        exclude=getattr(args, "exclude", None) or (),
        keyword=getattr(args, "keyword", None),
        junitxml=getattr(args, "junitxml", None),
        arch=getattr(args, "selftest_arch", None),
    )

