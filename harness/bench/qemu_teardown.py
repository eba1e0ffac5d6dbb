"""QEMU's own asynchronous teardown against guest size: quit → QEMU exit, and quit → host memory back.

For each size (GiB) and each variant (``sync``: QEMU's default; ``async``: ``-async-teardown`` or
``-run-with async-teardown=on``, whichever this QEMU offers) a guest boots with that much memory, fills
a tmpfs with most of it, and gets SIGTERM (the quit).  Measured from the signal: the QEMU process's exit
(its pidfd), the exit of any helper process QEMU started (the teardown helper of the asynchronous variant),
and MemAvailable regaining QEMU's anonymous RSS (less a tolerance).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..arch import get_arch
from ..targets.qemu import QemuTarget
from ..targets.spec import TargetOptions
from .guest_fill import fill_guest
from .hostmem import cap_sizes, mem_available_kb, process_rss_kb, wait_memory_back
from .machine import machine_facts
from .output import BenchReport, Metric, Progress
from .process import children, wait_exit
from .qemu_flags import async_teardown_args, detect_flavour

log = logging.getLogger(__name__)

VARIANTS = ("sync", "async")
METRICS = [
    Metric("exit_s", "SIGTERM -> QEMU exit", "ms"),
    Metric("helper_exit_s", "SIGTERM -> teardown helper exit", "ms"),
    Metric("mem_back_s", "SIGTERM -> host memory back", "ms", panel="memory"),
]


class SizedQemuTarget(QemuTarget):
    """A QEMU target whose command line gets extra arguments (here: asynchronous teardown)."""

    def __init__(self, arch: str, options: TargetOptions, extra_args: Sequence[str], **kw: Any) -> None:
        super().__init__(arch, options, **kw)
        self.extra_args = list(extra_args)

    def qemu_argv(self, binary: str, accelerator: str, port: int) -> List[str]:
        return super().qemu_argv(binary, accelerator, port) + self.extra_args


@dataclass
class QemuTeardownConfig:
    arch: str = "s390x"
    sizes_gib: Sequence[float] = (1, 2, 4)
    repeats: int = 3
    fill_fraction: float = 0.75
    accel: str = "auto"
    variants: Sequence[str] = VARIANTS
    memory_timeout_s: float = 30.0
    artifacts: Optional[Path] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def teardown_argv(flavour: Optional[str], variant: str) -> List[str]:
    """The extra QEMU arguments of a variant."""
    return async_teardown_args(flavour, variant == "async")


def measure_quit(pid: int, *, memory_timeout_s: float = 30.0,
                 send: Callable[[int, int], None] = os.kill) -> Dict[str, Any]:
    """SIGTERM ``pid`` and time its exit, its helpers' exit and the return of its anonymous memory."""
    helpers = children(pid)
    rss = process_rss_kb(pid)
    gain = rss.get("RssAnon", rss.get("VmRSS", 0)) + rss.get("RssShmem", 0)
    baseline = mem_available_kb()
    helper_ends: List[Optional[float]] = []
    watchers = [threading.Thread(target=lambda h=h: helper_ends.append(wait_exit(h, memory_timeout_s + 60)),
                                 daemon=True) for h in helpers]
    for watcher in watchers:  # each helper's exit is timed as it happens, not when it is asked for
        watcher.start()
    t0 = time.monotonic()
    send(pid, signal.SIGTERM)
    exited = wait_exit(pid, 60.0)
    memory = wait_memory_back(t0, baseline, gain, timeout_s=memory_timeout_s, interval_s=0.005)
    for watcher in watchers:
        watcher.join(memory_timeout_s + 60)
    helper_end = max((h for h in helper_ends if h is not None), default=None)
    return {
        "qemu_rss_mib": round(rss.get("VmRSS", 0) / 1024),
        "qemu_anon_mib": round(gain / 1024),
        "helpers": len(helpers),
        "exit_s": None if exited is None else exited - t0,
        "helper_exit_s": None if helper_end is None else helper_end - t0,
        "mem_back_s": memory.back_s,
        "mem_tolerance_mib": memory.tolerance_kb // 1024,
        "mem_samples": memory.samples[:: max(1, len(memory.samples) // 50)],
    }


def run_qemu_teardown(config: QemuTeardownConfig, progress: Optional[Progress] = None) -> BenchReport:
    """Measure every (size, variant, repetition); variants alternate so both see the same load."""
    from guest_images import build_image

    spec = get_arch(config.arch)
    binary = spec.qemu_binary
    flavour = detect_flavour(binary)
    variants = [v for v in config.variants if v == "sync" or flavour is not None]
    report = BenchReport(
        bench="qemu-teardown",
        title=f"QEMU teardown of a {config.arch} guest with its memory filled: sync vs async teardown",
        metrics=METRICS, group_key="variant",
        machine=machine_facts([binary]),
        meta={"arch": config.arch, "async_teardown_flavour": flavour, "quit": "SIGTERM",
              "fill_fraction": config.fill_fraction, "repeats": config.repeats},
    )
    if flavour is None:
        report.notes.append(f"{binary} offers no asynchronous teardown: only the sync variant ran")
    sizes, dropped = cap_sizes(config.sizes_gib, mem_available_kb(), factor=1.15)
    if dropped:
        report.notes.append(f"sizes {dropped} GiB left out: not enough free host memory")
    image = build_image(config.arch)
    report.meta["image_hash"] = getattr(image, "image_hash", "")
    progress = progress or Progress(len(sizes) * len(variants) * config.repeats)
    accel = config.accel
    for size in sizes:
        for rep in range(config.repeats):
            for variant in variants:
                sample = _one_run(config, image, size, variant, rep, flavour, accel)
                accel = sample.get("accelerator_used") or accel  # reuse a KVM→TCG fallback's outcome
                report.add(sample)
                progress.step(f"{config.arch} {size:g} GiB {variant} #{rep + 1}: "
                              f"exit {_ms(sample.get('exit_s'))}, memory back {_ms(sample.get('mem_back_s'))}")
    return report


def _one_run(config: QemuTeardownConfig, image: Any, size: float, variant: str, rep: int,
             flavour: Optional[str], accel: str) -> Dict[str, Any]:
    memory_mb = int(size * 1024)
    artifacts = (config.artifacts / f"{config.arch}-{size:g}g-{variant}-{rep}") if config.artifacts else None
    options = TargetOptions(accel=accel, memory_mb=memory_mb, artifacts_dir=artifacts, boot_timeout=600)
    target = SizedQemuTarget(config.arch, options, teardown_argv(flavour, variant), image=image)
    sample: Dict[str, Any] = {"size_gib": size, "variant": variant, "rep": rep}
    try:
        started = time.monotonic()
        target.start()
        sample["boot_s"] = time.monotonic() - started
        sample["accelerator"] = target.accelerator_description
        sample["accelerator_used"] = target.accelerator
        started = time.monotonic()
        sample["filled_mib"] = fill_guest(target, int(memory_mb * config.fill_fraction))
        sample["fill_s"] = time.monotonic() - started
        assert target.console is not None and target.console.pid is not None
        if target.ssh is not None:
            target.ssh.close()
        sample.update(measure_quit(target.console.pid, memory_timeout_s=config.memory_timeout_s))
        sample["qemu_argv_extra"] = target.extra_args
    except Exception as err:  # noqa: BLE001 - one failed run is a sample with its error, the rest go on
        log.warning("%s %g GiB %s #%d failed: %s", config.arch, size, variant, rep, err)
        sample["error"] = str(err)
    finally:
        target.close()
    return sample


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"
