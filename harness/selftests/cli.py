"""What ``kvmh selftests`` and ``kvmh source get`` run: pytest on the kvm-selftests marker file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)


def marker_file() -> Path:
    """The marker file that expands into one pytest item per KVM selftest program."""
    from .. import suites

    return Path(suites.__file__).resolve().parent / "kvm_selftests.kvmh"


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


def selftests_main(
    target: str,
    *,
    tree: Optional[Path] = None,
    junitxml: Optional[Path] = None,
    expectations: Optional[Path] = None,
    write_expectations: Optional[Path] = None,
    keyword: Optional[str] = None,
    timeout_factor: Optional[float] = None,
    budget: Optional[float] = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    artifacts_root: Optional[Path] = None,
    extra: Sequence[str] = (),
) -> int:
    """Run the KVM selftests on ``target``; return kvmh's exit status (0 ok, 1 test failed, 2 infra, 3 usage)."""
    from ..run import run_pytest

    args = selftest_pytest_args(tree=tree, expectations=expectations, write_expectations=write_expectations,
                                timeout_factor=timeout_factor, budget=budget, include=include,
                                exclude=exclude, keyword=keyword, junitxml=junitxml)
    args += ["--kvm-target", target, *extra]
    return run_pytest(args, artifacts_root=artifacts_root, target=target)


def source_get_main(package: Optional[str] = None) -> int:
    """``kvmh source get``: fetch Debian's linux-source once and print the tree's path."""
    from ..kernel.source import DEFAULT_SOURCE_PACKAGE, linux_source

    print(linux_source(package or DEFAULT_SOURCE_PACKAGE))
    return 0
