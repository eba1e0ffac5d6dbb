"""Markers of the benchmark items, which run only when ``-m`` names them (they take minutes to hours)."""

from __future__ import annotations

from typing import List

import pytest

BENCH_MARKERS = {
    "pv_bench": "PV teardown latency against guest size (DISABLE vs PREPARE + PERFORM, memory return)",
    "pv_qemu": "Secure Execution guests under QEMU on a PV host: reboot timing, SIGKILL during PERFORM",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in BENCH_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}; runs only when selected with -m {name}")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Deselect the benchmark items unless the ``-m`` expression names their marker."""
    expression = config.getoption("markexpr", "") or ""
    keep, drop = [], []
    for item in items:
        names = [m for m in BENCH_MARKERS if item.get_closest_marker(m) is not None]
        (drop if names and not any(n in expression for n in names) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
