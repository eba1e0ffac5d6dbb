"""Host memory as the benchmarks watch it: /proc/meminfo, a process's RSS, waiting for memory to come back."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

MIB_KB = 1024
GIB_KB = 1 << 20


def read_meminfo(path: str = "/proc/meminfo") -> Dict[str, int]:
    """Every /proc/meminfo field in kB."""
    values: Dict[str, int] = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0])
    return values


def pcp_free_kb(path: str = "/proc/zoneinfo") -> int:
    """Free pages in per-CPU lists, in kB: MemFree and MemAvailable leave them out, and since Linux 6.7
    (PCP high auto-tuning) a large free can sit there for seconds."""
    try:
        with open(path) as f:
            pages = sum(int(line.split()[1]) for line in f if line.lstrip().startswith("count:"))
    except (OSError, ValueError, IndexError):
        return 0
    return pages * (os.sysconf("SC_PAGE_SIZE") // 1024)


def mem_available_kb() -> int:
    """MemAvailable plus the free pages held in per-CPU lists."""
    return read_meminfo()["MemAvailable"] + pcp_free_kb()


def process_rss_kb(pid: int) -> Dict[str, int]:
    """``VmRSS``, ``RssAnon``, ``RssFile``, ``RssShmem`` of ``pid`` in kB (empty when it is gone)."""
    out: Dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def cap_sizes(sizes_gib: Sequence[float], available_kb: int, reserve_gib: float = 2.0,
              factor: float = 1.0) -> Tuple[List[float], List[float]]:
    """Split ``sizes_gib`` into those whose ``factor``-fold memory fits below ``available_kb`` less a reserve."""
    budget_gib = available_kb / GIB_KB - reserve_gib
    kept = [s for s in sizes_gib if s * factor <= budget_gib]
    return kept, [s for s in sizes_gib if s not in kept]


@dataclass
class MemoryReturn:
    """How fast host memory came back: samples of (seconds since t0, MemAvailable kB) and the verdict."""

    baseline_kb: int
    expected_gain_kb: int
    tolerance_kb: int
    back_s: Optional[float] = None
    samples: List[Tuple[float, int]] = field(default_factory=list)

    @property
    def returned(self) -> bool:
        return self.back_s is not None


def wait_memory_back(t0: float, baseline_kb: int, expected_gain_kb: int, *, timeout_s: float = 30.0,
                     interval_s: float = 0.02, tolerance_kb: Optional[int] = None,
                     read: Callable[[], int] = mem_available_kb, max_samples: int = 400) -> MemoryReturn:
    """Sample MemAvailable until it has grown by ``expected_gain_kb`` (less a tolerance) over ``baseline_kb``.

    ``t0`` is the ``time.monotonic()`` the clock starts at (the quit).  The tolerance defaults to the
    larger of 128 MiB and 10 % of the expected gain, since other processes move MemAvailable meanwhile.
    """
    if tolerance_kb is None:
        tolerance_kb = max(128 * MIB_KB, expected_gain_kb // 10)
    result = MemoryReturn(baseline_kb, expected_gain_kb, tolerance_kb)
    deadline = t0 + timeout_s
    every = 1
    while True:
        now = time.monotonic()
        value = read()
        if len(result.samples) < max_samples:
            result.samples.append((round(now - t0, 4), value))
        elif every == 1:
            every = 10
        if value - baseline_kb >= expected_gain_kb - tolerance_kb:
            result.back_s = now - t0
            return result
        if now >= deadline:
            return result
        time.sleep(interval_s * every)
