"""What ``kvmh build`` and ``kvmh run --series`` call: build a tree + series and report the result."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import HarnessError
from ..kernel.build import KernelBuild, build_kernel, host_arch
from ..kernel.config import ConfigRequest
from ..kernel.series import load_series
from ..kernel.worktree import checked_tree

log = logging.getLogger(__name__)


def _default_tree(tree: Optional[Path]) -> Path:
    if tree is not None:
        return checked_tree(Path(tree))
    from ..kernel.source import linux_source

    return linux_source()


def build(tree: Optional[Path], series: Optional[str] = None, arch: str = "s390x", config: Optional[Path] = None,
          fragments: Sequence[Path] = (), debug: bool = False, base: Optional[str] = None,
          jobs: Optional[int] = None, in_place: bool = False) -> KernelBuild:
    """Load the series, make the config request and build; raises HarnessError subclasses."""
    tree_path = _default_tree(tree)
    patches = load_series(series, tree=tree_path)
    request = ConfigRequest.for_arch(arch, start=str(config) if config else None, user_fragments=fragments,
                                     debug=debug)
    return build_kernel(tree_path, patches, arch, request, base=base, jobs=jobs, in_place=in_place)


def build_main(tree: Union[Path, argparse.Namespace, None] = None, series: Optional[str] = None,
               arch: str = "s390x", config: Optional[Path] = None, fragments: Sequence[Path] = (),
               debug: bool = False, base: Optional[str] = None, in_place: bool = False,
               jobs: Optional[int] = None) -> int:
    """``kvmh build``: print the image path and kernel release; also accepts the parsed argparse namespace."""
    if isinstance(tree, argparse.Namespace):
        args = tree
        tree, series, arch = args.tree, args.series, getattr(args, "arch", "s390x")
        config, debug = getattr(args, "config", None), getattr(args, "debug", False)
        fragments, base = getattr(args, "config_fragment", []) or [], getattr(args, "base", None)
        in_place, jobs = getattr(args, "in_place", False), getattr(args, "jobs", None)
    try:
        result = build(tree, series, arch, config, fragments, debug, base=base, jobs=jobs, in_place=in_place)
    except HarnessError as err:
        print(f"kvmh build: {err}", file=sys.stderr)
        return err.exit_status
    print_build(result)
    return 0


def print_build(b: KernelBuild) -> None:
    print(f"image:          {b.image}")
    print(f"kernel release: {b.release}")
    print(f"modules:        {b.modules_dir or '(none: CONFIG_MODULES is off)'}")
    print(f"config:         {b.config}")
    print(f"base:           {b.base}")
    for i, subject in enumerate(b.series_subjects, 1):
        print(f"patch {i:>2}:       {subject}")
    new = "" if b.new_warnings is None else f" ({b.new_warnings} new with the series)"
    print(f"warnings:       {b.warnings}{new}")
    for line in b.new_warning_lines[:20]:
        print(f"  new: {line}")
    how = "cached, nothing to do" if b.cached else ("incremental" if b.incremental else "full")
    print(f"build:          {how}, {b.duration_s:.0f} s, log {b.log}")


def arch_of_target(spec: str) -> str:
    """The architecture a target spec boots (qemu:ARCH; local is this machine; others default to s390x)."""
    from ..targets.spec import parse_target_spec

    parsed = parse_target_spec(spec)
    if parsed.kind == "qemu":
        return parsed.arch
    if parsed.kind == "local":
        return host_arch()
    return "s390x"


def build_for_run(args: Union[argparse.Namespace, None] = None, *, tree: Optional[Path] = None,
                  series: Optional[str] = None, arch: Optional[str] = None, fragments: Sequence[Path] = (),
                  config: Optional[Path] = None, debug: bool = False, base: Optional[str] = None) -> KernelBuild:
    """Build the kernel ``kvmh run --tree T --series S`` boots; raises HarnessError (exit 2) on failure."""
    if args is not None:
        tree = getattr(args, "tree", tree)
        series = getattr(args, "series", series)
        fragments = getattr(args, "config_fragment", None) or fragments
        config = getattr(args, "config", None) or config
        debug = getattr(args, "debug", False) or debug
        base = getattr(args, "base", None) or base
        arch = arch or getattr(args, "arch", None) or arch_of_target(getattr(args, "target", "qemu:s390x"))
    result = build(tree, series, arch or "s390x", config, fragments, debug, base=base)
    log.info("built %s kernel %s: %s", result.arch, result.release, result.image)
    return result
