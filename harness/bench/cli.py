"""``kvmh bench …``: the benchmark commands (parser and handlers; the measuring lives in the other modules)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Callable, List

from ..errors import EXIT_USAGE

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("kvmh-artifacts/bench")


def parse_sizes(text: str) -> List[float]:
    """``"1,2,4"`` -> ``[1.0, 2.0, 4.0]`` (GiB; positive)."""
    try:
        sizes = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be numbers of GiB separated by commas, not {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive GiB values, not {text!r}")
    return sizes


def parse_ints(text: str) -> List[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, not {text!r}") from None


def _common(p: argparse.ArgumentParser, sizes: str, repeats: int) -> None:
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes(sizes), metavar="GIB,…",
                   help=f"guest sizes in GiB (default {sizes}; sizes beyond free memory are left out)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"repetitions per size (default {repeats})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--no-plot", action="store_true", help="write no PNG (the JSON and the table are always made)")


def _emit(report, args: argparse.Namespace) -> int:
    """Print the table, write JSON (and PNG), print their paths; 0 unless a sample failed."""
    print(report.table())
    paths = report.write(args.out, plot=not args.no_plot)
    for kind, path in paths.items():
        if path is not None:
            print(f"{kind}: {path}")
    failed = [s for s in report.samples if s.get("error")]
    if failed:
        print(f"kvmh bench: {len(failed)} of {len(report.samples)} samples failed (see the JSON)")
        return 1
    return 0


def cmd_qemu_teardown(args: argparse.Namespace) -> int:
    from .qemu_teardown import QemuTeardownConfig, run_qemu_teardown

    config = QemuTeardownConfig(arch=args.arch, sizes_gib=args.sizes, repeats=args.repeats,
                                fill_fraction=args.fill, accel=args.accel,
                                artifacts=args.out / f"qemu-{time.strftime('%Y%m%d-%H%M%S')}")
    return _emit(run_qemu_teardown(config), args)


def cmd_local_close(args: argparse.Namespace) -> int:
    from ..targets.local import LocalTarget
    from .local_vm_close import LocalCloseConfig, run_local_close

    target = LocalTarget()
    target.start()
    try:
        return _emit(run_local_close(target, LocalCloseConfig(sizes_gib=args.sizes, repeats=args.repeats)), args)
    finally:
        target.close()


def _started_target(args: argparse.Namespace, options_of: Callable):
    from ..targets.factory import make_target

    target = make_target(args.target, options_of(args))
    target.start()
    return target


def cmd_teardown(args: argparse.Namespace, options_of: Callable) -> int:
    from .teardown import PvTeardownConfig, run_pv_teardown

    target = _started_target(args, options_of)
    try:
        config = PvTeardownConfig(sizes_gib=args.sizes, repeats=args.repeats, series=args.series or "")
        return _emit(run_pv_teardown(target, config), args)
    finally:
        target.close()


def cmd_reboot(args: argparse.Namespace, options_of: Callable) -> int:
    import json

    from .reboot import RebootConfig, dry_run_report, run_reboot

    extra = ["-async-teardown"] if args.qemu_async_teardown else []
    config = RebootConfig(sizes_gib=args.sizes, repeats=args.repeats, async_destroy_values=args.async_destroy,
                          host_key_doc=args.host_key_doc, qemu_extra=extra)
    if args.dry_run:
        report = dry_run_report(config)
        print(json.dumps(report.meta["plan"], indent=2))
        for note in report.notes:
            print(f"note: {note}")
        print(f"json: {report.write(args.out, plot=False)['json']}")
        return 0
    from ..kvm.probe import probe

    target = _started_target(args, options_of)
    try:
        return _emit(run_reboot(target, config, probe(target)), args)
    finally:
        target.close()


def cmd_harness(args: argparse.Namespace) -> int:
    from .harness_figures import HarnessBenchConfig, run_harness_bench

    config = HarnessBenchConfig(arch=args.arch, boots=args.boots, commands=args.commands, parts=args.parts)
    return _emit(run_harness_bench(config), args)


def add_bench_parser(sub: argparse._SubParsersAction, add_target_args: Callable[[argparse.ArgumentParser], None],
                     options_of: Callable) -> None:
    """Add ``kvmh bench`` and its actions to the ``kvmh`` subparsers."""
    p = sub.add_parser("bench", help="measure teardown latency, memory return, reboot, and the harness's own figures")
    bsub = p.add_subparsers(dest="bench_command", metavar="ACTION")

    b = bsub.add_parser("qemu-teardown", help="QEMU's async teardown on/off: quit -> exit, quit -> memory back")
    b.add_argument("--arch", default="s390x", choices=("s390x", "x86_64"))
    b.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    b.add_argument("--fill", type=float, default=0.75, help="fraction of guest memory to fill (default 0.75)")
    _common(b, "1,2,4", 3)
    b.set_defaults(func=cmd_qemu_teardown)

    b = bsub.add_parser("local-close", help="close a VM with a touched N GiB memslot on this machine's /dev/kvm")
    _common(b, "1,2,4", 3)
    b.set_defaults(func=cmd_local_close)

    b = bsub.add_parser("teardown", help="PV host: DISABLE vs PREPARE + PERFORM against guest size, memory return")
    add_target_args(b)
    b.set_defaults(target="local")
    b.add_argument("--series", help="name of the series under test, recorded in the output")
    _common(b, "4,8,16,32", 3)
    b.set_defaults(func=lambda a: cmd_teardown(a, options_of))

    b = bsub.add_parser("reboot", help="PV host: reboot and shutdown of an SE guest under QEMU, async_destroy on/off")
    add_target_args(b)
    b.add_argument("--host-key-doc", type=Path, help="the PV host's host-key document (needed to make the SE image)")
    b.add_argument("--async-destroy", type=parse_ints, default=[1, 0], metavar="1,0",
                   help="kvm.async_destroy values to measure (the kvm module is reloaded to change it)")
    b.add_argument("--qemu-async-teardown", action="store_true", help="also pass QEMU's -async-teardown")
    b.add_argument("--dry-run", action="store_true", help="print the SE image and QEMU commands; start nothing")
    _common(b, "4,8,16", 3)
    b.set_defaults(func=lambda a: cmd_reboot(a, options_of))

    b = bsub.add_parser("harness", help="the harness's own figures: boot, round trip, builds, suite wall time")
    b.add_argument("--arch", default="s390x", choices=("s390x", "x86_64"))
    b.add_argument("--boots", type=int, default=3)
    b.add_argument("--commands", type=int, default=30)
    b.add_argument("--parts", type=lambda t: [x for x in t.split(",") if x],
                   default=["boot", "roundtrip", "selftests", "kernel", "suite"],
                   help="comma-separated subset of boot,roundtrip,selftests,kernel,suite")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT)
    b.add_argument("--no-plot", action="store_true")
    b.set_defaults(func=cmd_harness)

    def no_action(args: argparse.Namespace) -> int:
        p.print_help()
        return EXIT_USAGE

    p.set_defaults(func=no_action)


