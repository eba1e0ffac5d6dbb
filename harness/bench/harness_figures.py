"""The harness's own figures in one report: boot, command round trip, selftest build, kernel build, suite time.

* boot: bare QEMU (same command line, stdout on a pipe, no harness) from start to the kernel's ``Run /init``,
  the init's first line and its ``KVMH-READY``; against ``QemuTarget.start()`` to SSH ready;
* round trip: ``true`` over the harness's SSH connection and over the serial console, against an ``ssh``
  client process per command;
* selftests: build into an empty cache (cold), then again (cached);
* kernel: first build of a one-patch series in an empty cache, then the no-op rebuild;
* suite: wall time of ``kvmh test`` (the shipped suites) on the QEMU target.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import UsageError
from .machine import machine_facts
from .output import BenchReport, Metric, Progress
from .stats import summarize

log = logging.getLogger(__name__)

PRINTK = re.compile(rb"^\[\s*\d+\.\d+\]")
PARTS = ("boot", "roundtrip", "selftests", "kernel", "suite")
SERIES_SUBJECT = "init: print a benchmark banner"


@dataclass
class HarnessBenchConfig:
    arch: str = "s390x"
    boots: int = 3
    commands: int = 30
    parts: Sequence[str] = PARTS
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)


# -- boot and round trip ---------------------------------------------------------------------------------


def bare_boot(argv: List[str], timeout: float = 300.0) -> Tuple[float, float, float]:
    """Start QEMU without the harness; seconds to the kernel's ``Run /init``, the init's first line, ``KVMH-READY``."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    nan = float("nan")
    init_at = first_at = ready_at = nan
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


def harness_boot(arch: str, image: Any, artifacts: Path, accel: str = "tcg") -> Tuple[float, Any]:
    """Seconds from ``QemuTarget.start()`` to SSH ready, and the started target."""
    from ..targets.qemu import QemuTarget
    from ..targets.spec import TargetOptions

    target = QemuTarget(arch, TargetOptions(artifacts_dir=artifacts, accel=accel), image=image)
    start = time.monotonic()
    target.start()
    return time.monotonic() - start, target


def timed_samples(action: Callable[[], object], count: int) -> List[float]:
    """Seconds of ``count`` runs of ``action``."""
    samples = []
    for _ in range(count):
        start = time.monotonic()
        action()
        samples.append(time.monotonic() - start)
    return samples


def bare_argv(target: Any) -> List[str]:
    """The started target's QEMU command line without the SSH forward (nothing connects to it)."""
    argv = target.qemu_argv(shutil.which(target.arch_spec.qemu_binary) or "", "tcg", 0)
    argv[argv.index("-netdev") + 1] = "user,id=n0,restrict=on"
    return argv


def ssh_argv(target: Any, known_hosts: Path) -> List[str]:
    return ["ssh", "-i", str(target.image.ssh_key), "-p", str(target.port), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ControlMaster=no", "-o", "ControlPath=none", "root@127.0.0.1", "true"]


def measure_boot(report: BenchReport, config: HarnessBenchConfig, work: Path, progress: Progress) -> None:
    from guest_images import build_image

    image = build_image(config.arch)
    for i in range(config.boots):  # alternate, so both see the same load
        seconds, booted = harness_boot(config.arch, image, work / f"harness-{i}")
        booted.close()
        report.add({"figure": "harness start() -> SSH ready", "rep": i, "value_s": seconds})
        init_at, first_at, ready_at = bare_boot(bare_argv(booted))
        report.add({"figure": "bare QEMU -> kernel runs /init", "rep": i, "value_s": init_at})
        report.add({"figure": "bare QEMU -> init's first line", "rep": i, "value_s": first_at})
        report.add({"figure": "bare QEMU -> KVMH-READY", "rep": i, "value_s": ready_at})
        progress.step(f"boot {i + 1}/{config.boots}: harness {seconds:.2f} s, bare KVMH-READY {ready_at:.2f} s")
    harness = summarize(s["value_s"] for s in report.samples if s["figure"] == "harness start() -> SSH ready")
    bare = summarize(s["value_s"] for s in report.samples if s["figure"] == "bare QEMU -> KVMH-READY")
    if harness.median and bare.median:
        report.meta["ratio_ssh_ready_to_bare_ready"] = round(harness.median / bare.median, 3)


def measure_roundtrip(report: BenchReport, config: HarnessBenchConfig, work: Path, progress: Progress) -> None:
    from guest_images import build_image

    _, target = harness_boot(config.arch, build_image(config.arch), work / "harness-latency")
    try:
        for value in timed_samples(lambda: target.run("true", timeout=60), config.commands):
            report.add({"figure": "`true` over the harness's SSH", "value_s": value})
        for value in timed_samples(lambda: target.console_run("true", timeout=60), config.commands):
            report.add({"figure": "`true` over the serial console", "value_s": value})
        if shutil.which("ssh"):
            known_hosts = work / "known_hosts"
            known_hosts.write_text(target.image.known_hosts_line("127.0.0.1", target.port) + "\n")
            argv = ssh_argv(target, known_hosts)
            for value in timed_samples(lambda: subprocess.run(argv, check=True, capture_output=True),
                                       max(5, config.commands // 3)):
                report.add({"figure": "`true` via an ssh process per command", "value_s": value})
        else:
            report.notes.append("ssh client not installed (Debian package openssh-client): no comparison")
    finally:
        target.close()
    ours = summarize(s["value_s"] for s in report.samples if s["figure"] == "`true` over the harness's SSH")
    spawned = summarize(s["value_s"] for s in report.samples
                        if s["figure"] == "`true` via an ssh process per command")
    if ours.median and spawned.median:
        report.meta["speedup_harness_ssh_over_ssh_process"] = round(spawned.median / ours.median, 1)
    progress.step(f"round trips: harness {(ours.median or 0) * 1000:.0f} ms, ssh process "
                  f"{(spawned.median or 0) * 1000:.0f} ms")


# -- builds ------------------------------------------------------------------------------------------------


def selftest_builds(arch: str, cache_root: Optional[Path] = None, tree: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Two builds of the KVM selftests into ``cache_root`` (cold when it is empty, then cached)."""
    from ..kernel.source import linux_source
    from ..selftests.build import build_selftests

    tree = tree or linux_source()
    rows = []
    for label in ("cold", "cached"):
        start = time.monotonic()
        build = build_selftests(tree, arch, cache_root=cache_root)
        rows.append({"figure": f"selftests build {arch}, {label}", "value_s": time.monotonic() - start,
                     "cached": build.cached, "programs": len(build.programs)})
    return rows


def measure_selftests(report: BenchReport, config: HarnessBenchConfig, progress: Progress) -> None:
    with tempfile.TemporaryDirectory(prefix="kvmh-bench-") as tmp:
        for row in selftest_builds(config.arch, Path(tmp)):
            report.add(row)
    progress.step("selftests build: cold and cached")


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
    git("commit", "-qam", SERIES_SUBJECT)
    mbox = work / f"series-{abs(hash(text))}.mbox"
    mbox.write_bytes(subprocess.run(["git", "-C", str(repo), "format-patch", "--stdout", "HEAD~1..HEAD"],
                                    check=True, capture_output=True).stdout)
    return mbox


def kernel_builds(arch: str, jobs: int, work: Path, one_line_change: bool = False,
                  keep_cache: bool = False) -> List[Dict[str, Any]]:
    """First build (a fresh cache unless ``keep_cache``), no-op rebuild, optionally a one-line-change rebuild."""
    from ..kernel.source import linux_source

    tree = linux_source()
    previous = os.environ.get("KVMH_CACHE")
    if not keep_cache:
        os.environ["KVMH_CACHE"] = str(work / "cache")
    try:
        from ..kernel.build import build_kernel
        from ..kernel.config import ConfigRequest
        from ..kernel.series import load_series

        config = ConfigRequest.for_arch(arch)
        rows = []

        def timed(label: str, fn: Callable[[], Any]) -> None:
            started = time.monotonic()
            result = fn()
            how = "cached" if result.cached else ("incremental" if result.incremental else "full")
            rows.append({"figure": f"kernel build {arch}, {label}", "value_s": time.monotonic() - started,
                         "how": how, "warnings": result.warnings, "release": result.release})

        first = load_series(make_series(tree, work, "kvmh-bench: first"))
        timed("first", lambda: build_kernel(tree, first, arch, config, jobs=jobs, compare_with_base=False))
        timed("no-op", lambda: build_kernel(tree, first, arch, config, jobs=jobs))
        if one_line_change:
            changed = load_series(make_series(tree, work, "kvmh-bench: one line changed"))
            timed("one-line change", lambda: build_kernel(tree, changed, arch, config, jobs=jobs,
                                                          compare_with_base=False))
        return rows
    finally:
        if previous is None:
            os.environ.pop("KVMH_CACHE", None)
        else:
            os.environ["KVMH_CACHE"] = previous


def measure_kernel(report: BenchReport, config: HarnessBenchConfig, work: Path, progress: Progress) -> None:
    for row in kernel_builds(config.arch, config.jobs, work):
        report.add(row)
    progress.step("kernel build: first and no-op")


def measure_suite(report: BenchReport, config: HarnessBenchConfig, work: Path, progress: Progress) -> None:
    argv = [sys.executable, "-m", "harness.cli", "test", "--target", f"qemu:{config.arch}",
            "--artifacts", str(work / "suite-artifacts"), "-q", "-p", "no:cacheprovider"]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=work)  # no project conftest from the cwd
    report.add({"figure": f"default suites on qemu:{config.arch} (kvmh test)", "value_s": time.monotonic() - start,
                "exit_status": proc.returncode})
    progress.step(f"default suites: exit {proc.returncode}")


def run_harness_bench(config: HarnessBenchConfig, progress: Optional[Progress] = None) -> BenchReport:
    """Measure the selected parts (``config.parts``) in the order of ``PARTS``."""
    unknown = set(config.parts) - set(PARTS)
    if unknown:
        raise UsageError(f"unknown parts {sorted(unknown)}: choose from {', '.join(PARTS)}")
    report = BenchReport(bench="harness", title=f"the harness's own figures ({config.arch} guest)",
                         metrics=[Metric("value_s", "time", "s")], x_key="figure", x_label="",
                         machine=machine_facts([f"qemu-system-{config.arch}"]),
                         meta={"arch": config.arch, "boots": config.boots, "commands": config.commands})
    steps = {"boot": config.boots, "roundtrip": 1, "selftests": 1, "kernel": 1, "suite": 1}
    progress = progress or Progress(sum(steps[p] for p in config.parts))
    work = Path(tempfile.mkdtemp(prefix="kvmh-bench-"))
    try:
        for part in PARTS:
            if part not in config.parts:
                continue
            if part == "boot":
                measure_boot(report, config, work, progress)
            elif part == "roundtrip":
                measure_roundtrip(report, config, work, progress)
            elif part == "selftests":
                measure_selftests(report, config, progress)
            elif part == "kernel":
                measure_kernel(report, config, work, progress)
            else:
                measure_suite(report, config, work, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for key in ("ratio_ssh_ready_to_bare_ready", "speedup_harness_ssh_over_ssh_process"):
        if key in report.meta:
            report.notes.append(f"{key.replace('_', ' ')}: {report.meta[key]}")
    return report
