"""Benchmark: KVM selftest build time (cold and cached) and run time.

Run by hand: ``python tests/bench/bench_selftests.py [--arch s390x|x86_64] [--run] [--cold]``.  The build
timing is ``harness.bench.harness_figures.selftest_builds`` (also in ``kvmh bench harness``).
``--cold`` builds into an empty temporary cache (the real cache is left alone); ``--run`` runs the
build on this machine (x86_64 on the local target, s390x under qemu-user with /dev hidden).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="s390x", choices=("s390x", "x86_64"))
    parser.add_argument("--tree", type=Path, default=None)
    parser.add_argument("--cold", action="store_true", help="also time a build into an empty cache")
    parser.add_argument("--run", action="store_true", help="also time running every program here")
    args = parser.parse_args(argv)

    from harness.bench.harness_figures import selftest_builds
    from harness.kernel.source import linux_source
    from harness.selftests.build import build_selftests

    tree = args.tree or linux_source()
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="kvmh-bench-") as tmp:
            for row in selftest_builds(args.arch, Path(tmp), tree):
                print(f"{row['figure']:<36} {row['value_s']:7.2f} s  ({row['programs']} programs, "
                      f"{os.cpu_count()} cores)")
    for row in selftest_builds(args.arch, None, tree):  # the real cache: a hit once it is warm
        print(f"{row['figure'].replace('cold', 'first'):<36} {row['value_s']:7.2f} s  "
              f"({'hit' if row['cached'] else 'miss'})")
    build = build_selftests(tree, args.arch)

    if args.run:
        from harness.selftests.runner import RunOptions, RunSummary, SelftestRunner

        if args.arch == "x86_64" and platform.machine() == "x86_64":
            from harness.targets.local import LocalTarget

            runner = SelftestRunner(LocalTarget(), build, RunOptions())
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
            from test_selftests_s390x import QemuUserTarget

            class InPlace(SelftestRunner):
                @property
                def local(self) -> bool:
                    return True

            runner = InPlace(QemuUserTarget(), build, RunOptions(capture_dmesg=False, exclude=["rseq_test"]))
        start = time.monotonic()
        runs = runner.run_all()
        print(f"run          {args.arch}: {time.monotonic() - start:7.1f} s  {RunSummary.of(runs).line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
