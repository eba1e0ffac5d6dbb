"""Boot and command latency of the QEMU target against bare QEMU and the ``ssh`` client.

Run ``python tests/bench/bench_boot.py [--arch s390x] [--boots 3] [--commands 30]``.  It prints:

* bare QEMU (same command line, stdout on a pipe, no harness): seconds from start to the kernel's
  ``Run /init`` line, to the init's first line and to its ``KVMH-READY`` line (network and SSH
  server up: what the harness waits for);
* the harness: seconds from ``QemuTarget.start()`` to SSH ready (image cached), and the ratio to
  bare QEMU's ``KVMH-READY`` (target <= 1.2);
* the median round trip of ``true`` over the harness's SSH connection against spawning the ``ssh``
  client for each command (target: harness >= 10x faster), and over the serial console.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from guest_images import build_image
from harness.targets.qemu import QemuTarget
from harness.targets.spec import TargetOptions

PRINTK = re.compile(rb"^\[\s*\d+\.\d+\]")

def bare_boot(argv: list[str], timeout: float = 300.0) -> tuple[float, float, float]:
    """Start QEMU without the harness; return seconds to the kernel's ``Run /init``, to the init's
    first console line and to its ``KVMH-READY``."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    init_at = first_at = ready_at = float("nan")
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            now = time.monotonic() - start
            if b"Run /init as init process" in raw:
                init_at = now
            elif init_at == init_at and first_at != first_at and not PRINTK.match(raw):
                first_at = now
            if b"KVMH-READY" in raw:
                ready_at = now
                break
            if now > timeout:
                break
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    return init_at, first_at, ready_at


def harness_boot(arch: str, image, artifacts: Path) -> tuple[float, QemuTarget]:
    target = QemuTarget(arch, TargetOptions(artifacts_dir=artifacts, accel="tcg"), image=image)
    start = time.monotonic()
    target.start()
    return time.monotonic() - start, target


def median_time(action: Callable[[], object], count: int) -> float:
    samples = []
    for _ in range(count):
        start = time.monotonic()
        action()
        samples.append(time.monotonic() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="s390x")
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--commands", type=int, default=30)
    args = parser.parse_args()

    image = build_image(args.arch)
    work = Path(tempfile.mkdtemp(prefix="kvmh-bench-"))
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; guest {args.arch} under TCG")

    bare_init, bare_first, bare_ready, harness_ready = [], [], [], []
    for i in range(args.boots):  # one guest at a time, alternating, so both see the same load
        seconds, booted = harness_boot(args.arch, image, work / f"harness-{i}")
        booted.close()
        harness_ready.append(seconds)
        argv = booted.qemu_argv(shutil.which(booted.arch_spec.qemu_binary) or "", "tcg", 0)
        argv[argv.index("-netdev") + 1] = "user,id=n0,restrict=on"
        init_at, first_at, ready_at = bare_boot(argv)
        bare_init.append(init_at)
        bare_first.append(first_at)
        bare_ready.append(ready_at)

    _, target = harness_boot(args.arch, image, work / "harness-latency")
    try:
        ready_ratio = statistics.median(harness_ready) / statistics.median(bare_ready)
        print(f"bare QEMU start -> kernel runs /init : {statistics.median(bare_init):6.2f} s (median of {args.boots})")
        print(f"bare QEMU start -> init's 1st line  : {statistics.median(bare_first):6.2f} s")
        print(f"bare QEMU start -> KVMH-READY       : {statistics.median(bare_ready):6.2f} s")
        print(f"harness start() -> SSH ready        : {statistics.median(harness_ready):6.2f} s")
        print(f"ratio harness SSH-ready / bare KVMH-READY      : {ready_ratio:.2f} (target <= 1.2)")
        print(f"ratio harness SSH-ready / bare init's 1st line : "
              f"{statistics.median(harness_ready) / statistics.median(bare_first):.2f}")

        known_hosts = work / "known_hosts"
        known_hosts.write_text(target.image.known_hosts_line("127.0.0.1", target.port) + "\n")
        ssh = ["ssh", "-i", str(target.image.ssh_key), "-p", str(target.port), "-o", "BatchMode=yes",
               "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
               "-o", "ControlMaster=no", "-o", "ControlPath=none", "root@127.0.0.1", "true"]
        harness_rt = median_time(lambda: target.run("true", timeout=60), args.commands)
        print(f"harness SSH `true` round trip       : {harness_rt * 1000:6.0f} ms (median of {args.commands})")
        console_rt = median_time(lambda: target.console_run("true", timeout=60), args.commands)
        print(f"harness console `true` round trip   : {console_rt * 1000:6.0f} ms")
        if shutil.which("ssh"):
            spawn_rt = median_time(lambda: subprocess.run(ssh, check=True, capture_output=True),
                                   max(5, args.commands // 3))
            print(f"ssh client spawned per command      : {spawn_rt * 1000:6.0f} ms")
            print(f"speed-up of the harness over ssh    : {spawn_rt / harness_rt:.1f}x (target >= 10x)")
        else:
            print("ssh client not installed (Debian package openssh-client): no comparison")
    finally:
        target.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
