"""Time the kernel builder: first build, no-op rebuild, rebuild after a one-line change to the series.

A thin wrapper over ``harness.bench.harness_figures.kernel_builds`` (``kvmh bench harness --parts kernel``
gives the first and no-op figures with JSON).  Run:
``python tests/bench/bench_kernel_build.py [--arch s390x] [--jobs N] [--keep-cache]``.  By default the builds
go to a fresh temporary cache (the Debian source tree is taken from the normal cache), so the first build
really is a first build: import of the tree into git, worktree, config, full make.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from harness.bench.harness_figures import kernel_builds


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="s390x", choices=("s390x", "x86_64"))
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--keep-cache", action="store_true", help="build in the normal cache (may be warm)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="kvmh-bench-"))
    try:
        for row in kernel_builds(args.arch, args.jobs, work, one_line_change=True, keep_cache=args.keep_cache):
            print(f"{row['figure']:<40} {row['value_s']:8.1f} s   ({row['how']}, {row['warnings']} warnings, "
                  f"{row['release']})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
