"""What ``kvmh bisect`` calls: turn the command line (or a resumed state) into a bisect and run it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import UsageError
from .bisect import Bisect, BisectRequest, run_bisect
from .bisect_kvmh import KernelStepBuilder, KvmhRunner, parse_selection


def _target_args(extra: dict) -> list[str]:
    args = ["--target", extra["target"], "--accel", extra.get("accel", "auto"),
            "--boot-timeout", str(extra.get("boot_timeout", 300.0))]
    for flag in ("ssh_key", "known_hosts"):
        if extra.get(flag):
            args += [f"--{flag.replace('_', '-')}", extra[flag]]
    return args


def _request(args: argparse.Namespace) -> BisectRequest:
    words = list(getattr(args, "pytest_args", []) or [])
    missing = [flag for flag, value in (("--tree", args.tree), ("--good", args.good), ("--bad", args.bad))
               if not value]
    if missing:
        raise UsageError(f"kvmh bisect needs {', '.join(missing)} (or --resume DIR of an earlier bisect)")
    selection = parse_selection(words)
    extra = {"target": args.target, "accel": args.accel, "boot_timeout": args.boot_timeout,
             "ssh_key": str(args.ssh_key or ""), "known_hosts": str(args.known_hosts or ""),
             "config": str(args.config or ""), "config_fragment": [str(f) for f in args.config_fragment],
             "debug": args.debug, "selection_words": [w for w in words if w != "--"]}
    return BisectRequest(tree=str(Path(args.tree).expanduser().resolve()), good=args.good, bad=args.bad,
                         selection=selection.text, target=args.target, runs=args.runs,
                         splat_fingerprint=args.splat or "", splat_kind=args.splat_kind or "",
                         check_good=not args.no_check_good, extra=extra)


def bisect_main(args: argparse.Namespace) -> int:
    from .build import arch_of_target
    from ..kernel.config import ConfigRequest
    from .run import new_artifacts_dir
    from ..signals import install_sigterm_handler

    install_sigterm_handler()
    if args.resume is not None:
        out = Path(args.resume).resolve()
        request = Bisect.load_request(out)
    else:
        request = _request(args)
        out = new_artifacts_dir(args.artifacts, f"bisect-{request.target}")
    extra = request.extra
    selection = parse_selection(extra.get("selection_words") or request.selection.split())
    arch = arch_of_target(request.target)
    config = ConfigRequest.for_arch(arch, start=extra.get("config") or None,
                                    user_fragments=[Path(f) for f in extra.get("config_fragment", [])],
                                    debug=bool(extra.get("debug")))
    builder = KernelStepBuilder(Path(request.tree), arch, config, jobs=getattr(args, "jobs", None))
    runner = KvmhRunner(selection, _target_args(extra))
    started = time.monotonic()
    result = run_bisect(request, builder, runner, out, resume=args.resume is not None)
    print(f"kvmh bisect: {len(result.steps)} steps in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return result.exit_status


def add_bisect_parser(sub: argparse._SubParsersAction, add_target_args) -> argparse.ArgumentParser:
    p = sub.add_parser("bisect", help="find the commit that broke a selection (git bisect with real builds and boots)")
    add_target_args(p)
    p.add_argument("--tree", type=Path, help="git kernel tree holding --good and --bad")
    p.add_argument("--good", help="a commit where the selection passes")
    p.add_argument("--bad", help="a commit where it fails")
    p.add_argument("--runs", type=int, default=1, help="runs per step: bad if any fails, good only if all pass")
    p.add_argument("--splat", metavar="FINGERPRINT", help="bisect this splat: its appearance makes a step bad")
    p.add_argument("--splat-kind", metavar="KIND", help="bisect splats of this kind (warning, kasan, oops, ...)")
    p.add_argument("--no-check-good", action="store_true", help="do not test --good before bisecting")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the bisect whose artifacts are in DIR")
    p.add_argument("--config", type=Path, help="start the kernel config from this .config")
    p.add_argument("--config-fragment", type=Path, action="append", default=[], help="extra kernel config")
    p.add_argument("--debug", action="store_true", help="add the debug config fragment")
    p.add_argument("--jobs", "-j", type=int, help="parallel make jobs")
    p.add_argument("--artifacts", type=Path, help="artifacts root (default ./kvmh-artifacts)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="-- then the selection")
    return p
