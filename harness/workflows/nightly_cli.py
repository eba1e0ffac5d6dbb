"""The ``kvmh nightly`` and ``kvmh history`` command lines."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ..errors import EXIT_OK, UsageError
from .history import History
from .nightly import NightlyRequest, run_nightly

DEFAULT_HISTORY = Path("kvmh-history")


def add_nightly_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("nightly", help="update a tree, build, run every suite on each target, compare, keep history")
    p.add_argument("--tree", required=True, help="git URL or path of the tree (a linux-next remote, any git tree)")
    p.add_argument("--branch", help="branch to test (default: the remote's HEAD)")
    p.add_argument("--history", type=Path, default=DEFAULT_HISTORY, help="history directory (default ./kvmh-history)")
    p.add_argument("--target", action="append", default=[], help="target spec (repeatable; default qemu:s390x)")
    p.add_argument("--night", help="name of this night (default: today's date, YYYY-MM-DD)")
    build = p.add_mutually_exclusive_group()
    build.add_argument("--no-build", action="store_true", help="build nothing: boot each target's own kernel")
    build.add_argument("--build-command", metavar="CMD",
                       help="build with this shell command in the checkout instead of a kernel build; "
                            "it may write the kernel to $KVMH_BUILD_OUT/image")
    p.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"), help="QEMU accelerator")
    p.add_argument("--boot-timeout", type=float, default=300.0, help="seconds until a target must be up")
    p.add_argument("--bisect", action="store_true", help="on a regression, bisect between the last good and this tip")
    p.add_argument("--bisect-budget", type=float, default=3 * 3600.0, metavar="SECONDS",
                   help="stop the bisect after this long (default 3 h)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="-- then extra pytest arguments for every run; {tree} stands for the checked-out tip")
    return p


def nightly_main(args: argparse.Namespace) -> int:
    words = [w for w in (args.pytest_args or [])]
    if words and words[0] == "--":
        words = words[1:]
    if args.bisect_budget <= 0:
        raise UsageError(f"--bisect-budget {args.bisect_budget:g} is not positive: pass a number of seconds")
    request = NightlyRequest(
        tree=args.tree, branch=args.branch, history=args.history, targets=args.target or ["qemu:s390x"],
        night=args.night, build="none" if args.no_build else "command" if args.build_command else "auto",
        build_command=args.build_command or "", suite_args=words,
        target_args=["--accel", args.accel, "--boot-timeout", str(args.boot_timeout)],
        bisect=args.bisect, bisect_budget=args.bisect_budget)
    return run_nightly(request)


def add_history_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("history", help="ask the nightly history: when did a test start failing, flaky tests, "
                                       "new splats")
    p.add_argument("--history", type=Path, default=DEFAULT_HISTORY, help="history directory (default ./kvmh-history)")
    p.add_argument("--test", help="when did this test start failing, and on which tip (id, name or substring)")
    p.add_argument("--flaky", action="store_true", help="tests that alternate between pass and fail")
    p.add_argument("--last", type=int, default=14, help="nights --flaky looks at (default 14)")
    p.add_argument("--new-splats", action="store_true", help="splat fingerprints no earlier night had")
    p.add_argument("--night", help="the night --new-splats looks at (default: the latest)")
    p.add_argument("--html", action="store_true", help="(re)write the HTML report and print its path")
    p.add_argument("--json", action="store_true", help="answer in JSON")
    return p


def history_main(args: argparse.Namespace) -> int:
    with History(args.history, create=False) as history:
        if not history.nights():
            raise UsageError(f"{history.root} holds no nights yet: run kvmh nightly --history {args.history} first")
        everything = not (args.test or args.flaky or args.new_splats or args.html)
        answer: dict = {}
        if args.test:
            pairs = history.tests(args.test)
            if not pairs:
                raise UsageError(f"no test matches {args.test!r} in {history.root}: pass a test id or name "
                                 "from its junit.xml files")
            answer["failing_since"] = [asdict(history.failure_start(t, target)) for t, target in pairs]
        if args.flaky or everything:
            answer["flaky"] = [asdict(f) for f in history.flaky(args.last)]
        if args.new_splats or everything:
            answer["new_splats"] = [asdict(s) for s in history.new_splats(args.night)]
        if everything:
            answer["nights"] = [asdict(n) for n in history.nights()]
        if args.html:
            from .history_html import write_report

            answer["report"] = str(write_report(history))
    print(json.dumps(answer, indent=1) if args.json else format_answer(answer, args.last))
    return EXIT_OK


def format_answer(answer: dict, last: int) -> str:
    out: list[str] = []
    if "nights" in answer:
        out.append(f"nights ({len(answer['nights'])}):")
        out += [f"  {n['night']}  {n['target']:<12} {n['tip']:<16} {n['status']}"
                + (f" ({n['regressions']} regressions)" if n["regressions"] else "") for n in answer["nights"]]
    for f in answer.get("failing_since", []):
        if not f["failing"]:
            out.append(f"{f['test']} on {f['target']}: not failing in the latest night")
            continue
        line = f"{f['test']} on {f['target']}: failing since {f['first_bad_night']} (tip {f['first_bad_tip']}, " \
               f"{f['first_bad_commit'][:12]})"
        if f["last_good_night"]:
            line += f"; last good {f['last_good_night']} (tip {f['last_good_tip']}, {f['last_good_commit'][:12]})"
        else:
            line += "; never passed in the history"
        out.append(line + (f": {f['message']}" if f["message"] else ""))
    if "flaky" in answer:
        out.append(f"flaky over the last {last} nights ({len(answer['flaky'])}):")
        out += [f"  {f['test']} on {f['target']}: rate {f['rate']:.2f} ({f['changes']} changes in {f['runs']} runs: "
                f"{' '.join(f['outcomes'])})" for f in answer["flaky"]]
    if "new_splats" in answer:
        out.append(f"new splat fingerprints ({len(answer['new_splats'])}):")
        out += [f"  {s['fingerprint']}  first on {s['night']} {s['target']} (tip {s['tip']}) in {', '.join(s['tests'])}"
                for s in answer["new_splats"]]
    if "report" in answer:
        out.append(f"report: {answer['report']}")
    return "\n".join(out)


def add_fleet_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``kvmh nightly``, ``kvmh history`` and ``kvmh ci emit|merge|lava-cases`` on the CLI's subcommands."""
    from .ci_emit import add_ci_parser
    from .ci_emit_lava import add_lava_parsers

    add_nightly_parser(sub).set_defaults(func=nightly_main)
    add_history_parser(sub).set_defaults(func=history_main)
    add_lava_parsers(add_ci_parser(sub))  # ci_emit_lava imports ci_emit, so the LAVA parts are added here
