"""A benchmark's results: every sample as JSON, a terminal table of medians and spread, a PNG plot.

The JSON and the table need nothing beyond the standard library; the plot needs matplotlib (the
``bench`` extra) and is skipped with a log line when it is missing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO, Tuple

from .stats import Summary, summarize

log = logging.getLogger(__name__)

MEASURED = "measured"
MODEL = "model result (reference model, not a kernel: no timings)"
DRY_RUN = "dry run (nothing was started)"
SKIPPED = "skipped (nothing was measured)"


@dataclass(frozen=True)
class Metric:
    """One measured quantity of each sample: stored in seconds under ``key``, shown in ``unit``."""

    key: str
    label: str
    unit: str = "ms"
    panel: str = "latency"  # "latency" or "memory": memory-return times get their own panel
    plot: bool = True  # False: in the table and JSON only (e.g. a setup time that would dwarf the curve)

    @property
    def scale(self) -> float:
        return {"s": 1.0, "ms": 1e3, "us": 1e6}[self.unit]


@dataclass
class BenchReport:
    """Samples of one benchmark, keyed by ``x_key`` (guest size) and optionally ``group_key`` (variant)."""

    bench: str
    title: str
    metrics: List[Metric]
    x_key: str = "size_gib"
    x_label: str = "guest memory (GiB)"
    group_key: Optional[str] = None
    result_source: str = MEASURED
    machine: Dict[str, Any] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    samples: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def add(self, sample: Dict[str, Any]) -> None:
        self.samples.append(sample)

    def skip(self, reason: str) -> "BenchReport":
        """Mark the report as skipped for ``reason`` (kept in ``meta`` and the notes)."""
        self.result_source = SKIPPED
        self.meta["skip_reason"] = reason
        self.notes.append(f"skipped: {reason}")
        return self

    # -- summaries ---------------------------------------------------------------------------------

    def cells(self) -> List[Tuple[Any, Any, List[Dict[str, Any]]]]:
        """(group, x, samples) in the order they were first measured."""
        order: Dict[Tuple[Any, Any], List[Dict[str, Any]]] = {}
        for sample in self.samples:
            key = (sample.get(self.group_key) if self.group_key else None, sample.get(self.x_key))
            order.setdefault(key, []).append(sample)
        return [(group, x, items) for (group, x), items in order.items()]

    def summaries(self) -> List[Dict[str, Any]]:
        """One row per (group, x): the summary of every metric."""
        rows = []
        for group, x, items in self.cells():
            row: Dict[str, Any] = {"group": group, "x": x, "samples": len(items)}
            for metric in self.metrics:
                row[metric.key] = summarize(s.get(metric.key) for s in items).as_dict()
            rows.append(row)
        return rows

    # -- renderings --------------------------------------------------------------------------------

    def table(self) -> str:
        """A fixed-width table: median [low–high] per metric and cell, in each metric's unit."""
        if not self.samples:
            return "\n".join([f"{self.title} [{self.result_source}]", *(f"note: {n}" for n in self.notes)])
        timed = self.result_source == MEASURED
        head = ([self.group_key] if self.group_key else []) + [self.x_key, "n"]
        head += [f"{m.label} ({m.unit})" for m in self.metrics] if timed else ["step outcomes", "agrees with model"]
        lines = [head]
        for group, x, items in self.cells():
            row = ([str(group)] if self.group_key else []) + [_fmt_x(x), str(len(items))]
            if timed:
                for metric in self.metrics:
                    row.append(_fmt_summary(summarize(s.get(metric.key) for s in items), metric.scale))
            else:
                row.append(_fmt_outcomes(items[0].get("outcomes") or {}))
                agree = {s.get("agrees_with_model") for s in items}
                row.append("yes" if agree == {True} else "NO" if False in agree else "-")
            lines.append(row)
        widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
        out = [f"{self.title} [{self.result_source}]"]
        labels = len(head) - len(self.metrics) - 1 if timed else len(head) - 3  # group and x columns
        for index, row in enumerate(lines):
            out.append("  ".join(c.rjust(w) if index and (i >= labels or _is_number(c)) else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(row, widths))))
            if index == 0:
                out.append("  ".join("-" * w for w in widths))
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)

    def as_json(self) -> Dict[str, Any]:
        return {
            "bench": self.bench,
            "title": self.title,
            "result_source": self.result_source,
            "machine": self.machine,
            "meta": self.meta,
            "metrics": [asdict(m) for m in self.metrics],
            "x_key": self.x_key,
            "group_key": self.group_key,
            "units": "seconds (every *_s field); sizes in GiB",
            "samples": self.samples,
            "summary": self.summaries(),
            "notes": self.notes,
        }

    def write_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=2, sort_keys=False, default=str) + "\n")
        return path

    def plot(self, path: Path) -> Optional[Path]:
        """Write a PNG of each metric's median (bars: low–high) against x; None without matplotlib or data."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.warning("matplotlib is not installed (pip install 'kvm-harness[bench]'): no plot")
            return None
        if self.samples and not any(isinstance(x, (int, float)) for _, x, _ in self.cells()):
            return self._plot_bars(plt, path)
        panels = [p for p in ("latency", "memory") if any(m.panel == p and m.plot for m in self.metrics)]
        series = self._series()
        if not any(points for _, _, points in series):
            return None
        fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False)
        for axis, panel in zip(axes[0], panels):
            for metric, group, points in series:
                if metric.panel != panel or not points or not metric.plot:
                    continue
                xs = [p[0] for p in points]
                med = [p[1].median * metric.scale for p in points]
                low = [(p[1].median - p[1].low) * metric.scale for p in points]
                high = [(p[1].high - p[1].median) * metric.scale for p in points]
                label = metric.label if group is None else f"{metric.label}, {group}"
                axis.errorbar(xs, med, yerr=[low, high], marker="o", capsize=4, label=label)
            unit = next(m.unit for m in self.metrics if m.panel == panel and m.plot)
            axis.set_xlabel(self.x_label)
            axis.set_ylabel(f"{'time to memory back' if panel == 'memory' else 'latency'} ({unit})")
            axis.set_ylim(bottom=0)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8)
        where = self.machine.get("summary", "")
        fig.suptitle(f"{self.title}\n{where} — median, bars: min–max", fontsize=9)
        return _save(plt, fig, path)

    def _plot_bars(self, plt: Any, path: Path) -> Optional[Path]:
        """Horizontal bars (median, min–max whiskers) for reports keyed by a label rather than a size."""
        metric = self.metrics[0]
        rows = [(str(x), summarize(s.get(metric.key) for s in items)) for _, x, items in self.cells()]
        rows = [(label, s) for label, s in rows if s.median is not None]
        if not rows:
            return None
        fig, axis = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
        labels = [label for label, _ in rows][::-1]
        med = [s.median * metric.scale for _, s in rows][::-1]
        err = [[(s.median - s.low) * metric.scale for _, s in rows][::-1],
               [(s.high - s.median) * metric.scale for _, s in rows][::-1]]
        axis.barh(labels, med, xerr=err, capsize=3, color="tab:blue", alpha=0.8)
        axis.set_xscale("log")
        axis.set_xlabel(f"{metric.label} ({metric.unit}, log scale)")
        for y, (value, above) in enumerate(zip(med, err[1])):
            axis.text((value + above) * 1.08, y, _num(value), va="center", fontsize=8)
        axis.grid(True, axis="x", alpha=0.3)
        fig.suptitle(f"{self.title}\n{self.machine.get('summary', '')} — median, whiskers: min–max", fontsize=9)
        return _save(plt, fig, path)

    def _series(self) -> List[Tuple[Metric, Any, List[Tuple[float, Summary]]]]:
        groups = list(dict.fromkeys(g for g, _, _ in self.cells()))
        out = []
        for metric in self.metrics:
            for group in groups:
                points = []
                for g, x, items in self.cells():
                    if g != group or not isinstance(x, (int, float)):
                        continue
                    summary = summarize(s.get(metric.key) for s in items)
                    if summary.median is not None:
                        points.append((float(x), summary))
                out.append((metric, group, sorted(points, key=lambda p: p[0])))
        return out

    def write(self, out_dir: Path, stem: Optional[str] = None, plot: bool = True) -> Dict[str, Optional[Path]]:
        """Write ``<stem>.json`` and (when possible) ``<stem>.png`` under ``out_dir``; return their paths."""
        stem = stem or f"{self.bench}-{time.strftime('%Y%m%d-%H%M%S')}"
        paths: Dict[str, Optional[Path]] = {"json": self.write_json(out_dir / f"{stem}.json"), "png": None}
        if plot and self.result_source == MEASURED:
            paths["png"] = self.plot(out_dir / f"{stem}.png")
        return paths


def _fmt_outcomes(outcomes: Dict[str, Any]) -> str:
    """``prepare=0 rc=1 rrc=42, perform=EINVAL``: what each timed step returned."""
    parts = []
    for name, out in outcomes.items():
        result = out.get("errno") or out.get("ret")
        text = f"{name}={result}"
        if out.get("rc") is not None:
            text += f" rc={out['rc']:#x} rrc={out.get('rrc', 0):#x}"
        parts.append(text)
    return ", ".join(parts) or "-"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _fmt_x(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _fmt_summary(summary: Summary, scale: float) -> str:
    if summary.median is None:
        return "-"
    med = summary.median * scale
    text = _num(med)
    if summary.n > 1:
        text += f" [{_num(summary.low * scale)}–{_num(summary.high * scale)}]"  # type: ignore[operator]
    if summary.missing:
        text += f" ({summary.missing} missing)"
    return text


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


class Progress:
    """Progress lines for long runs: ``[k/n] what (elapsed)`` on stderr."""

    def __init__(self, total: int, stream: Optional[TextIO] = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        print(f"[{self.done}/{self.total}] {what} ({elapsed:.0f} s elapsed)", file=self.stream, flush=True)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
