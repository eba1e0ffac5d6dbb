"""Benchmark: ``kvmh run -j N`` against ``-j 1`` on one target, and whether both give the same results.

Run by hand: ``python tests/bench/bench_parallel.py [--target qemu:s390x] [--jobs 1 2] [--repeat 2]``.
Each run is ``kvmh run -q --target T -j N`` with the cached image and selftests (a first run warms the
caches and is not timed). Prints the wall time of each run and, per worker count, the JUnit test cases by
outcome; then whether every worker count gave the same (test case, outcome) set. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from harness.results.junit_read import read_junit


def outcomes(junit: Path) -> dict[str, str]:
    """{classname::name: outcome} of every test case in a JUnit file."""
    return {case_id: case.outcome for case_id, case in read_junit(junit).cases.items()}


def run(target: str, jobs: int, work: Path, extra: list[str]) -> tuple[float, int, dict[str, str]]:
    junit = work / f"junit-j{jobs}-{time.monotonic_ns()}.xml"
    argv = [sys.executable, "-m", "harness.cli", "run", "-q", "--target", target, "-j", str(jobs),
            "--artifacts", str(work / "artifacts"), "--junitxml", str(junit), *(["--", *extra] if extra else [])]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    elapsed = time.monotonic() - started
    if not junit.exists():
        sys.exit(f"kvmh run -j {jobs} wrote no JUnit file (exit {proc.returncode}): {proc.stderr[-500:]}")
    return elapsed, proc.returncode, outcomes(junit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qemu:s390x")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per worker count (default 2)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kvmh-bench-parallel-") as tmp:
        work = Path(tmp)
        run(args.target, 1, work, args.pytest_args)  # warm the caches: image, selftest build
        results: dict[int, dict[str, str]] = {}
        medians: dict[int, float] = {}
        for jobs in args.jobs:
            times = []
            for _ in range(args.repeat):
                elapsed, status, cases = run(args.target, jobs, work, args.pytest_args)
                times.append(elapsed)
                results[jobs] = cases
            medians[jobs] = statistics.median(times)
            counts = Counter(results[jobs].values())
            print(f"-j {jobs}: median {medians[jobs]:6.1f} s over {args.repeat} runs "
                  f"({', '.join(f'{t:.1f}' for t in times)}); exit {status}; {len(results[jobs])} test cases: "
                  + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        base = args.jobs[0]
        for jobs in args.jobs[1:]:
            same = results[jobs] == results[base]
            print(f"-j {jobs} vs -j {base}: speed-up {medians[base] / medians[jobs]:.2f}x; "
                  f"results {'identical' if same else 'DIFFER'}")
            if not same:
                for name in sorted(set(results[jobs]) ^ set(results[base]))[:10]:
                    print(f"  only in one: {name}")
                for name in sorted(set(results[jobs]) & set(results[base])):
                    if results[jobs][name] != results[base][name]:
                        print(f"  {name}: {results[base][name]} vs {results[jobs][name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
