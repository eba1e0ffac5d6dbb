"""Boot and command latency of the QEMU target against bare QEMU and the ``ssh`` client.

A thin wrapper: the measuring lives in ``harness.bench.harness_figures`` (``kvmh bench harness --parts
boot,roundtrip`` prints the same figures and writes JSON and a plot).  Run
``python tests/bench/bench_boot.py [--arch s390x] [--boots 3] [--commands 30]``.
"""

from __future__ import annotations

import argparse
import sys

from harness.bench.harness_figures import HarnessBenchConfig, run_harness_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="s390x")
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--commands", type=int, default=30)
    args = parser.parse_args(argv)
    report = run_harness_bench(HarnessBenchConfig(arch=args.arch, boots=args.boots, commands=args.commands,
                                                  parts=("boot", "roundtrip")))
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
