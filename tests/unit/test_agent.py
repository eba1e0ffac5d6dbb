"""The scenario agent run locally as the target runs it: one python3 process, JSON in, JSON lines out."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from harness.kvm import agent, bundle

AGENT = Path(agent.__file__)


def run_agent(doc: Any, *, bundle_path: Path = None, timeout: float = 60,
              python: str = sys.executable) -> Tuple[int, List[Dict[str, Any]], str, float]:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    # -I -S: no site-packages, no PYTHONPATH: the agent must not need the harness package
    cmd = [python, "-I", "-S", str(bundle_path or AGENT)]
    start = time.monotonic()
    proc = subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=timeout, cwd="/")
    elapsed = time.monotonic() - start
    records = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    return proc.returncode, records, proc.stderr.decode(), elapsed


def by_name(records: List[Dict[str, Any]], name: str) -> Dict[str, Any]:
    matches = [r for r in records if r.get("name") == name]
    assert len(matches) == 1, f"{len(matches)} records named {name!r} in {records}"
    return matches[0]


def test_malformed_json_is_an_error_record_not_a_traceback() -> None:
    code, records, stderr, _ = run_agent('{"steps": [')
    assert code == agent.EXIT_BAD_INPUT
    assert records[0]["name"] == "<input>"
    assert "malformed scenario JSON" in records[0]["error"]
    assert records[-1] == {"name": "end", "op": "end", "ok": False, "exit": 2, "error": records[0]["error"]}
    assert "Traceback" not in stderr


def test_unknown_step_is_named_and_nothing_runs() -> None:
    code, records, stderr, _ = run_agent({"steps": [{"op": "sleep", "ms": 1, "name": "fine"},
                                                    {"op": "reboot_host", "name": "bad_one"}]})
    assert code == 2
    assert records[0]["name"] == "bad_one"
    assert "unknown step op 'reboot_host' in step 'bad_one'" in records[0]["error"]
    assert not any(r.get("name") == "fine" for r in records), "validation must happen before any step runs"
    assert "Traceback" not in stderr


@pytest.mark.parametrize("steps, message", [
    ([{"op": "pv", "name": "p"}], "step 'p' (pv) lacks cmd"),
    ([{"op": "sleep", "ms": 1, "name": "s", "colour": "red"}], "unknown keys colour"),
    ([{"op": "sleep", "ms": 1, "name": "s"}, {"op": "sleep", "ms": 1, "name": "s"}], "used twice"),
    ([{"op": "thread", "name": "t", "steps": [{"op": "nope", "name": "inner"}]}], "in step 'inner'"),
    ([{"op": "pv", "cmd": "reboot", "name": "p"}], "unknown PV command"),
    ([42], "is not an object"),
    ({"stepz": []}, "'steps' list"),
])
def test_invalid_scenarios_are_rejected_with_the_step(steps: Any, message: str) -> None:
    code, records, _, _ = run_agent(steps if isinstance(steps, dict) else {"steps": steps})
    assert code == 2
    assert message in records[0]["error"]


def test_a_hanging_step_is_killed_at_its_deadline_and_named() -> None:
    code, records, stderr, elapsed = run_agent({"steps": [
        {"op": "sleep", "ms": 1, "name": "quick"},
        {"op": "sleep", "ms": 60000, "name": "hang", "timeout_s": 0.5},
        {"op": "sleep", "ms": 1, "name": "never"},
    ]})
    assert code == agent.EXIT_TIMEOUT
    assert elapsed < 10
    hang = by_name(records, "hang")
    assert hang["timed_out"] is True and "'hang' (sleep) timed out" in hang["error"]
    assert by_name(records, "quick")["ret"] == 0
    assert not any(r.get("name") == "never" for r in records)
    assert records[-1]["op"] == "end" and records[-1]["exit"] == 3 and "hang" in records[-1]["error"]
    assert "Traceback" not in stderr


def test_a_blocked_thread_is_reported_with_its_thread_label() -> None:
    code, records, _, elapsed = run_agent({"steps": [
        {"op": "thread", "name": "t", "steps": [{"op": "wait_event", "event": "never", "name": "stuck",
                                                 "timeout_s": 0.5}]},
        {"op": "join", "thread": "t", "name": "join_t", "timeout_s": 30},
    ]})
    assert code == 3 and elapsed < 10
    stuck = by_name(records, "stuck")
    assert stuck["timed_out"] and stuck["thread"] == "t"


def test_the_total_deadline_ends_the_scenario() -> None:
    code, records, _, elapsed = run_agent({"total_timeout_s": 0.5, "steps": [
        {"op": "sleep", "ms": 20000, "name": "long", "timeout_s": 60}]})
    assert code == 3 and elapsed < 10
    assert records[-2]["name"] == "<scenario>" and records[-2]["timed_out"]


def test_threads_events_and_step_order() -> None:
    code, records, _, _ = run_agent({"steps": [
        {"op": "thread", "name": "t", "steps": [
            {"op": "wait_event", "event": "go", "name": "t_wait"},
            {"op": "sleep", "ms": 30, "name": "t_work"}]},
        {"op": "set_event", "event": "go", "name": "go"},
        {"op": "wait_step", "step": "t_work", "name": "saw_t_work"},
        {"op": "join", "thread": "t", "name": "join_t"},
    ]})
    assert code == 0
    names = [r["name"] for r in records]
    assert names.index("t_work") < names.index("join_t")
    assert by_name(records, "t_work")["thread"] == "t"
    assert by_name(records, "join_t")["duration_ns"] > 0
    assert records[-1] == {"name": "end", "op": "end", "ok": True, "exit": 0}


def test_fork_child_killed_during_a_step() -> None:
    code, records, _, _ = run_agent({"steps": [{"op": "fork", "name": "child", "kill_at": "spin",
                                                "kill_after_ms": 50, "steps": [
        {"op": "sleep", "ms": 1, "name": "before"},
        {"op": "loop", "count": None, "name": "spin", "steps": [{"op": "sleep", "ms": 1, "name": "tick"}]},
        {"op": "sleep", "ms": 1, "name": "after"}]}]})
    assert code == 0
    child = by_name(records, "child")["data"]
    assert child["killed"] is True and child["killed_in"] == "spin" and child["signal"] == 9
    assert by_name(records, "before")["proc"] == "child"
    assert not any(r.get("name") in ("spin", "after", "tick") for r in records)


def test_fork_child_that_exits_reports_its_steps() -> None:
    code, records, _, _ = run_agent({"steps": [{"op": "fork", "name": "child", "steps": [
        {"op": "read_file", "path": "/nonexistent/kvmh", "name": "missing"},
        {"op": "meminfo", "name": "mem"}]}]})
    assert code == 0
    assert by_name(records, "child")["data"] == {"pid": by_name(records, "child")["data"]["pid"], "killed": False,
                                                 "killed_in": None, "steps_done": 2, "exit_status": 0}
    assert by_name(records, "missing")["errno"] == "ENOENT"
    assert by_name(records, "mem")["data"]["MemAvailable"] > 0


def test_loop_summarises_inner_failures() -> None:
    code, records, _, _ = run_agent({"steps": [{"op": "loop", "count": 3, "name": "l", "steps": [
        {"op": "read_file", "path": "/nonexistent/kvmh", "name": "r"}]}]})
    data = by_name(records, "l")["data"]
    assert code == 0 and data["iterations"] == 3 and data["failed"] == 3
    assert data["failures"][0] == {"iteration": 0, "step": "r", "errno": "ENOENT", "error": None}
    assert not any(r.get("name") == "r" for r in records)


def test_missing_handle_is_a_step_error_and_the_agent_goes_on() -> None:
    code, records, _, _ = run_agent({"steps": [
        {"op": "pv", "cmd": "prepare", "name": "no_vm"},
        {"op": "sleep", "ms": 1, "name": "next"}]})
    assert code == 0
    assert "no open handle 'vm'" in by_name(records, "no_vm")["error"]
    assert by_name(records, "next")["ret"] == 0


def test_mem_settle_needs_a_meminfo_baseline() -> None:
    _, records, _, _ = run_agent({"steps": [{"op": "mem_settle", "baseline": "nothing", "name": "s"}]})
    assert "not an earlier meminfo step" in by_name(records, "s")["error"]


def test_the_bundle_runs_standalone_and_is_reproducible(tmp_path: Path) -> None:
    path = bundle.write_bundle(tmp_path)
    assert bundle.bundle_bytes.__wrapped__() == bundle.bundle_bytes.__wrapped__()
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["__main__.py", "agent.py", "arch_aliases.py", "steps.py", "uapi.py"]
        assert zf.read("uapi.py") == Path(agent.__file__).with_name("uapi.py").read_bytes()
    code, records, stderr, _ = run_agent({"steps": [{"op": "sleep", "ms": 1, "name": "s"}]}, bundle_path=path)
    assert code == 0 and by_name(records, "s")["ret"] == 0, stderr
    assert records[0]["op"] == "agent" and records[0]["data"]["python"]
    assert bundle.remote_path() == path.name  # relative: the target's private working directory


@pytest.mark.skipif(not hasattr(sys, "stdlib_module_names"), reason="needs Python 3.10+ to list stdlib modules")
def test_agent_source_is_python39_syntax_and_imports_only_the_stdlib() -> None:
    shipped_files = (AGENT, AGENT.with_name("uapi.py"), AGENT.with_name("steps.py"),
                     AGENT.parents[1] / "arch" / "aliases.py")
    for path in shipped_files:
        tree = ast.parse(path.read_text(), feature_version=(3, 9))
        for node in ast.walk(tree):
            shipped = ("uapi", "steps", "arch_aliases", "aliases")  # the bundle's own modules
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in (*sys.stdlib_module_names, *shipped), node.module
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name in sys.stdlib_module_names or alias.name in shipped, alias.name


def _find_python(version: str) -> Optional[str]:
    """A runnable interpreter of that version: on PATH, or a pyenv installation."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    for python in filter(None, candidates):
        probe = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return python
    return None


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_agent_runs_on_other_pythons(version: str, tmp_path: Path) -> None:
    python = _find_python(version)
    if python is None:
        pytest.skip(f"no runnable python{version} here")
    code, records, stderr, _ = run_agent({"steps": [
        {"op": "fork", "name": "child", "steps": [{"op": "sleep", "ms": 1, "name": "s"}]},
        {"op": "thread", "name": "t", "steps": [{"op": "sleep", "ms": 1, "name": "ts"}]},
        {"op": "join", "thread": "t", "name": "j"}]}, bundle_path=bundle.write_bundle(tmp_path), python=python)
    assert code == 0, stderr
    assert stderr == ""  # e.g. no fork-with-threads DeprecationWarning on 3.12+
    assert records[0]["data"]["python"].startswith(version)


def test_the_step_schema_imports_without_the_agent() -> None:
    """The host validates step lists with the schema alone: importing it loads no libc and not the agent."""
    code = ("import sys; import harness.kvm.steps as s; "
            "assert 'harness.kvm.agent' not in sys.modules, 'the agent was imported'; "
            "print(len(s.OPS))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20
