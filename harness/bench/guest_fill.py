"""Make a booted guest touch most of its memory: a tmpfs filled with ``dd`` (kept until the guest stops)."""

from __future__ import annotations

import re
from typing import Any

FILL_DIR = "/run/kvmh-fill"
GUEST_RESERVE_MIB = 160  # left to the guest kernel and the SSH server


def fill_command(want_mib: int, reserve_mib: int = GUEST_RESERVE_MIB) -> str:
    """Shell code that fills a tmpfs with up to ``want_mib`` MiB, capped by MemAvailable less a reserve."""
    return (
        "set -e; "
        "avail=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo); "
        f"want={int(want_mib)}; cap=$((avail - {int(reserve_mib)})); "
        "[ \"$want\" -gt \"$cap\" ] && want=$cap; [ \"$want\" -gt 0 ]; "
        f"mkdir -p {FILL_DIR}; mountpoint -q {FILL_DIR} || mount -t tmpfs -o size=${{want}}m tmpfs {FILL_DIR}; "
        f"dd if=/dev/zero of={FILL_DIR}/fill bs=1M count=$want 2>/dev/null; "
        "echo KVMH-FILLED $want"
    )


def parse_filled(stdout: str) -> int:
    """The MiB the fill command reports (0 when it reported nothing)."""
    match = re.search(r"KVMH-FILLED (\d+)", stdout)
    return int(match.group(1)) if match else 0


def fill_guest(target: Any, want_mib: int, timeout: float = 900.0) -> int:
    """Run the fill on ``target``; return the MiB filled; raise RuntimeError with the output otherwise."""
    result = target.run(fill_command(want_mib), timeout=timeout)
    filled = parse_filled(result.stdout)
    if not result.ok or filled <= 0:
        raise RuntimeError(f"filling guest memory failed (exit {result.exit_status}): "
                           f"{(result.stderr or result.stdout).strip()[-300:]}")
    return filled
