"""Time the kernel builder: first build, no-op rebuild, rebuild after a one-line change to the series.

Run: ``python tests/bench/bench_kernel_build.py [--arch s390x] [--jobs N] [--keep-cache]``. By default the
builds go to a fresh temporary cache (the Debian source tree is taken from the normal cache), so the first
build really is a first build: import of the tree into git, worktree, config, full make.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUBJECT = "init: print a benchmark banner"


def make_series(tree: Path, work: Path, text: str) -> Path:
    """A one-patch series adding a late_initcall banner to init/main.c, as an mbox."""
    repo = work / "series-repo"
    if repo.exists():
        shutil.rmtree(repo)
    (repo / "init").mkdir(parents=True)
    shutil.copyfile(tree / "init/main.c", repo / "init/main.c")

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=Bench", "-c", "user.email=bench@example.org",
                        *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", "init/main.c")
    git("commit", "-qm", "base")
    main_c = repo / "init/main.c"
    main_c.write_text(main_c.read_text() + f"""
static int __init kvmh_bench_banner(void)
{{
	pr_info("{text}\\n");
	return 0;
}}
late_initcall(kvmh_bench_banner);
""")
    git("commit", "-qam", SUBJECT)
    mbox = work / f"series-{abs(hash(text))}.mbox"
    mbox.write_bytes(subprocess.run(["git", "-C", str(repo), "format-patch", "--stdout", "HEAD~1..HEAD"],
                                    check=True, capture_output=True).stdout)
    return mbox


def timed(label: str, fn):
    started = time.monotonic()
    result = fn()
    took = time.monotonic() - started
    how = "cached" if result.cached else ("incremental" if result.incremental else "full")
    print(f"{label:<28} {took:8.1f} s   ({how}, {result.warnings} warnings, {result.release})", flush=True)
    return result, took


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="s390x", choices=("s390x", "x86_64"))
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--keep-cache", action="store_true", help="build in the normal cache (may be warm)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    from harness.kernel.source import linux_source

    tree = linux_source()
    work = Path(tempfile.mkdtemp(prefix="kvmh-bench-"))
    if not args.keep_cache:
        os.environ["KVMH_CACHE"] = str(work / "cache")
    from harness.kernel.build import build_kernel
    from harness.kernel.config import ConfigRequest
    from harness.kernel.series import load_series

    config = ConfigRequest.for_arch(args.arch)
    print(f"tree {tree}, arch {args.arch}, -j{args.jobs}, cache {os.environ.get('KVMH_CACHE', '(default)')}")
    try:
        first = load_series(make_series(tree, work, "kvmh-bench: first"))
        timed("first build", lambda: build_kernel(tree, first, args.arch, config, jobs=args.jobs,
                                                  compare_with_base=False))
        timed("no-op rebuild", lambda: build_kernel(tree, first, args.arch, config, jobs=args.jobs))
        changed = load_series(make_series(tree, work, "kvmh-bench: one line changed"))
        timed("one-line-change rebuild", lambda: build_kernel(tree, changed, args.arch, config, jobs=args.jobs,
                                                              compare_with_base=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
