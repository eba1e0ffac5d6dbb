"""The agent's ``mem_watch`` step run for real, and the ``kvmh bench`` commands that need no hardware."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.bench.cli import parse_sizes
from harness.cli import main
from harness.kvm import agent

AGENT = Path(agent.__file__)


def _agent(steps: list) -> dict:
    proc = subprocess.run([sys.executable, "-I", "-S", str(AGENT)], input=json.dumps({"steps": steps}).encode(),
                          capture_output=True, timeout=60, cwd="/")
    records = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    return {r["name"]: r for r in records}


def test_mem_watch_samples_until_memory_is_back() -> None:
    records = _agent([{"op": "meminfo", "name": "before"}, {"op": "cgroup_memory", "name": "cg"},
                      {"op": "mem_watch", "name": "watch", "baseline": "before", "cgroup_baseline": "cg",
                       "tolerance_mb": 4096, "interval_ms": 10, "settle_s": 5}])
    assert records["end"]["exit"] == 0
    data = records["watch"]["data"]
    assert data["mem_back_ms"] is not None and data["mem_back_ms"] < 5000
    assert data["samples"] and len(data["samples"][0]) == 3
    before = records["before"]["data"]
    assert "PcpFree" in before  # free pages in per-CPU lists, counted on both sides
    assert data["target_kb"] == before["MemAvailable"] + before["PcpFree"]  # no gain_mb: the reading itself
    if records["cg"].get("error") is None:
        assert data["cgroup_back_ms"] is not None


def test_mem_watch_gives_up_at_its_deadline_and_names_a_bad_baseline() -> None:
    records = _agent([{"op": "meminfo", "name": "before"},
                      {"op": "mem_watch", "name": "never", "baseline": "before", "tolerance_mb": 0,
                       "settle_s": 0.2, "interval_ms": 10},
                      {"op": "mem_watch", "name": "bad", "baseline": "nothing"}])
    never = records["never"]["data"]
    # Memory may rise by chance; either way the step ends by its deadline with samples.
    assert never["samples"] and records["never"]["duration_ns"] < 5e9
    assert "is not an earlier meminfo step" in records["bad"]["error"]


def test_parse_sizes() -> None:
    assert parse_sizes("1,2, 4") == [1.0, 2.0, 4.0]
    import argparse

    for bad in ("", "1,x", "0,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_sizes(bad)


def test_bench_teardown_on_the_model_writes_a_labelled_json(tmp_path: Path, capsys) -> None:
    status = main(["bench", "teardown", "--target", "model", "--sizes", "4,8", "--repeats", "1",
                   "--series", "async-v3", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "[model result (reference model, not a kernel: no timings)]" in out
    files = list(tmp_path.glob("pv-teardown-*.json"))
    assert len(files) == 1 and not list(tmp_path.glob("*.png"))
    data = json.loads(files[0].read_text())
    assert data["meta"]["series"] == "async-v3" and len(data["samples"]) == 4


def test_bench_reboot_dry_run_prints_the_commands(tmp_path: Path, capsys) -> None:
    status = main(["bench", "reboot", "--dry-run", "--sizes", "4", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "s390-pv-guest,id=pv0" in out and "pvimg create" in out
    assert "no host-key document: pass --host-key-doc" in out


def test_bench_without_an_action_is_a_usage_error(capsys) -> None:
    assert main(["bench"]) == 3
    assert "qemu-teardown" in capsys.readouterr().out


def test_mem_watch_gain_raises_the_target_above_the_reading() -> None:
    records = _agent([{"op": "meminfo", "name": "filled"},
                      {"op": "mem_watch", "name": "watch", "baseline": "filled", "gain_mb": 1 << 20,
                       "tolerance_mb": 0, "settle_s": 0.2, "interval_ms": 10}])
    data = records["watch"]["data"]
    filled = records["filled"]["data"]
    assert data["target_kb"] == filled["MemAvailable"] + filled["PcpFree"] + (1 << 30)
    assert data["mem_back_ms"] is None  # a TiB more than is free never comes back
