"""The benchmark report: statistics, table, JSON with every sample, PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.bench.output import DRY_RUN, MEASURED, MODEL, BenchReport, Metric, Progress
from harness.bench.stats import summarize


def test_summarize_ignores_missing_values_and_counts_them() -> None:
    summary = summarize([0.3, None, 0.1, float("nan"), 0.2, "x"])
    assert (summary.n, summary.missing) == (3, 3)
    assert summary.median == pytest.approx(0.2)
    assert (summary.low, summary.high) == (0.1, 0.3)
    assert summary.spread == pytest.approx(0.2)
    assert summarize([None]).median is None


def _report(source: str = MEASURED) -> BenchReport:
    report = BenchReport(bench="demo", title="demo teardown", group_key="variant", result_source=source,
                         metrics=[Metric("exit_s", "quit -> exit", "ms"),
                                  Metric("mem_back_s", "quit -> memory back", "ms", panel="memory")],
                         machine={"summary": "2 cores, 24 GiB"})
    for size, base in ((1, 0.010), (2, 0.020)):
        for rep in range(3):
            report.add({"size_gib": size, "variant": "sync", "rep": rep, "exit_s": base + rep * 0.001,
                        "mem_back_s": base * 2})
            report.add({"size_gib": size, "variant": "async", "rep": rep, "exit_s": 0.002,
                        "mem_back_s": None if rep == 2 else base * 3})
    return report


def test_table_shows_median_and_range_per_variant_and_size() -> None:
    table = _report().table()
    lines = table.splitlines()
    assert lines[0] == "demo teardown [measured]"
    assert "quit -> exit (ms)" in lines[1] and "variant" in lines[1]
    sync_1 = next(line for line in lines if line.split()[:2] == ["sync", "1"])
    assert "11.0 [10.0–12.0]" in sync_1
    async_2 = next(line for line in lines if line.split()[:2] == ["async", "2"])
    assert "(1 missing)" in async_2


def test_json_holds_every_sample_and_the_summary(tmp_path: Path) -> None:
    paths = _report().write(tmp_path, "demo", plot=False)
    data = json.loads(paths["json"].read_text())
    assert len(data["samples"]) == 12
    assert data["result_source"] == MEASURED
    row = next(r for r in data["summary"] if r["group"] == "sync" and r["x"] == 2)
    assert math.isclose(row["exit_s"]["median"], 0.021)
    assert paths["png"] is None


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (the bench extra) is not installed")
    path = _report().plot(tmp_path / "demo.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_label_keyed_report_plots_bars(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (the bench extra) is not installed")
    report = BenchReport(bench="h", title="harness", metrics=[Metric("value_s", "time", "s")], x_key="figure")
    report.add({"figure": "boot", "value_s": 4.0})
    report.add({"figure": "round trip", "value_s": 0.006})
    path = report.plot(tmp_path / "h.png")
    assert path is not None and path.stat().st_size > 1000


def test_model_and_dry_run_reports_claim_no_timings(tmp_path: Path) -> None:
    report = BenchReport(bench="pv", title="pv", metrics=[Metric("prepare_s", "PREPARE")], group_key="variant",
                         result_source=MODEL)
    report.add({"size_gib": 4, "variant": "async", "agrees_with_model": True,
                "outcomes": {"prepare": {"ret": 0, "errno": None, "rc": 1, "rrc": 42}}})
    table = report.table()
    assert "reference model, not a kernel" in table.splitlines()[0]
    assert "prepare=0 rc=0x1 rrc=0x2a" in table and "PREPARE (ms)" not in table
    assert report.write(tmp_path, "m")["png"] is None
    assert BenchReport(bench="d", title="d", metrics=[], result_source=DRY_RUN).write(tmp_path, "d")["png"] is None


def test_progress_counts_steps() -> None:
    class Sink:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    sink = Sink()
    progress = Progress(2, stream=sink)  # type: ignore[arg-type]
    progress.step("first")
    progress.step("second")
    assert sink.text.startswith("[1/2] first (") and "[2/2] second" in sink.text


def test_a_skipped_report_says_so_and_keeps_the_reason(tmp_path: Path) -> None:
    report = BenchReport(bench="pv", title="pv teardown", metrics=[Metric("prepare_s", "PREPARE")])
    report.skip("not an s390x host: protected virtualization needs IBM Z (this is x86_64)")
    assert report.table().splitlines() == [
        "pv teardown [skipped (nothing was measured)]",
        "note: skipped: not an s390x host: protected virtualization needs IBM Z (this is x86_64)"]
    data = json.loads(report.write(tmp_path, "s")["json"].read_text())
    assert data["meta"]["skip_reason"].startswith("not an s390x host") and data["samples"] == []


def test_harness_figures_refuse_unknown_parts_and_shape_commands(tmp_path: Path) -> None:
    from harness.bench.harness_figures import HarnessBenchConfig, bare_argv, run_harness_bench, ssh_argv
    from harness.errors import UsageError
    from harness.targets.qemu import QemuTarget

    with pytest.raises(UsageError, match="unknown parts \\['warp'\\]"):
        run_harness_bench(HarnessBenchConfig(parts=["boot", "warp"]))

    class Image:
        kernel, initrd, ssh_key = "/k", "/i", "/key"

    target = QemuTarget("s390x", image=Image())
    target.port = 2222
    argv = bare_argv(target)
    assert argv[argv.index("-netdev") + 1] == "user,id=n0,restrict=on"  # nothing forwarded
    ssh = ssh_argv(target, tmp_path / "known_hosts")
    assert ssh[-2:] == ["root@127.0.0.1", "true"] and "StrictHostKeyChecking=yes" in ssh and "2222" in ssh
