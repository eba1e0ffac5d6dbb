"""Agent: the kernel-log read, the struct a killed PV command leaves in shared memory, the pgste sysctl
put back, and a scenario of any size handed over across the re-exec."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from harness.kvm import agent, uapi

AGENT_DIR = Path(agent.__file__).parent


class ListEmitter:
    def __init__(self) -> None:
        self.records: List[Dict[str, Any]] = []

    def emit(self, record: Dict[str, Any]) -> None:
        self.records.append(record)


def executor() -> agent.Executor:
    return agent.Executor(agent.State(), ListEmitter(), None, {}, 10.0)  # type: ignore[arg-type]


def kmsg(seq: int, text: str) -> bytes:
    return f"4,{seq},{seq * 1000},-;{text}\n SUBSYSTEM=kvm\n".encode()


def test_kernel_log_counts_only_what_was_printed_after_the_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    log = [kmsg(1, "protvirt destroy cpu failed rc 105 rrc 0"), kmsg(2, "kvm: booted")]
    monkeypatch.setattr(agent, "kmsg_chunks", lambda path=agent.KMSG: list(log))
    ex = executor()
    mark = ex.run_step({"op": "kernel_log", "name": "mark", "since": None, "match": []})
    assert mark["data"] == {"seq": 2} and mark["errno"] is None
    log += [kmsg(3, "protvirt destroy leftover vm failed rc 105 rrc 0"), kmsg(4, "WARNING: CPU: 1 PID: 7 at pv.c"),
            b"garbage without a header"]
    check = ex.run_step({"op": "kernel_log", "name": "check", "since": "mark",
                         "match": ["protvirt destroy leftover vm failed", "protvirt destroy cpu failed"]})
    data = check["data"]
    assert data["counts"] == {"protvirt destroy leftover vm failed": 1, "protvirt destroy cpu failed": 0}
    assert data["earlier"] == {"protvirt destroy leftover vm failed": 0, "protvirt destroy cpu failed": 1}
    assert data["lines"] == ["protvirt destroy leftover vm failed rc 105 rrc 0"]
    assert data["complete"] is True and data["since_seq"] == 2


def test_kernel_log_check_needs_an_earlier_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "kmsg_chunks", lambda path=agent.KMSG: [])
    record = executor().run_step({"op": "kernel_log", "name": "check", "since": "nothing", "match": ["x"]})
    assert "not an earlier kernel_log mark" in record["error"]


def test_kernel_log_reads_the_real_dev_kmsg_when_allowed() -> None:
    try:
        chunks = agent.kmsg_chunks()
    except OSError as err:
        pytest.skip(f"/dev/kmsg not readable here: {err}")
    parsed = [agent.parse_kmsg(c) for c in chunks]
    assert all(p is not None for p in parsed)
    seqs = [p[0] for p in parsed if p is not None]
    assert seqs == sorted(seqs)


def test_a_killed_child_leaves_its_pv_struct_for_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's copy-back is simulated by a fake ioctl that writes rc=1 rrc=42 and then blocks."""
    def fake_ioctl(fd: int, request: int, arg: int = 0) -> int:
        if request == uapi.KVM_CREATE_VM:
            return os.open("/dev/null", os.O_RDONLY)
        cmd = uapi.KvmPvCmd.from_address(arg)
        cmd.rc, cmd.rrc = uapi.UVC_RC_EXECUTED, uapi.SET_ASIDE_RRC
        time.sleep(30)
        return 0

    monkeypatch.setattr(agent, "ioctl", fake_ioctl)
    step = {"op": "fork", "name": "victim", "as": "victim", "kill_at": "perform", "kill_after_ms": 200,
            "steps": [{"op": "open_kvm", "name": "open", "as": "kvm", "path": "/dev/null"},
                      {"op": "create_vm", "name": "vm", "kvm": "kvm", "as": "vm", "type": 0},
                      {"op": "pv", "name": "perform", "cmd": 10, "vm": "vm", "flags": 0, "data": 0,
                       "rc": agent.SENTINEL_RC, "rrc": agent.SENTINEL_RRC}]}
    result = agent.fork_steps(executor(), step)
    assert result["killed"] is True and result["killed_in"] == "perform" and result["signal"] == 9
    assert result["kill_pv"] == {"step": "perform", "entered": True, "returned": False, "rc": 1, "rrc": 42}


def test_a_child_that_finished_its_pv_step_reports_the_returned_struct(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_ioctl(fd: int, request: int, arg: int = 0) -> int:
        if request == uapi.KVM_CREATE_VM:
            return os.open("/dev/null", os.O_RDONLY)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(agent, "ioctl", fake_ioctl)
    step = {"op": "fork", "name": "victim", "as": "victim", "kill_at": "perform", "kill_after_ms": 5000,
            "steps": [{"op": "open_kvm", "name": "open", "as": "kvm", "path": "/dev/null"},
                      {"op": "create_vm", "name": "vm", "kvm": "kvm", "as": "vm", "type": 0},
                      {"op": "pv", "name": "perform", "cmd": 10, "vm": "vm", "flags": 0, "data": 0,
                       "rc": agent.SENTINEL_RC, "rrc": agent.SENTINEL_RRC}]}
    result = agent.fork_steps(executor(), step)
    assert result["killed"] is False and result["exit_status"] == 0
    assert result["kill_pv"] == {"step": "perform", "entered": True, "returned": True, "rc": agent.SENTINEL_RC,
                                 "rrc": agent.SENTINEL_RRC, "errno": "EINVAL", "ret": None}


def test_pv_cell_reports_a_call_that_returned() -> None:
    cell = agent.PvCell("perform")
    try:
        assert cell.read() == {"step": "perform", "entered": False}
        cmd = cell.struct()
        cmd.rc, cmd.rrc = 0xDEAD, 0xBEEF
        cell.entered()
        cell.returned(None, 22)
        assert cell.read() == {"step": "perform", "entered": True, "returned": True, "rc": 0xDEAD, "rrc": 0xBEEF,
                               "errno": "EINVAL", "ret": None}
    finally:
        cell.close()


def test_protection_probe_reads_efault_as_protected(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    answers = iter([errno.EFAULT, errno.EINVAL])
    seen: List[Dict[str, int]] = []

    def fake_ioctl(fd: int, request: int, arg: int = 0) -> int:
        cmd = uapi.KvmPvCmd.from_address(arg)
        seen.append({"request": request, "cmd": cmd.cmd, "data": cmd.data, "flags": cmd.flags})
        err = next(answers)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(agent, "ioctl", fake_ioctl)
    ex = executor()
    ex.state.fds["vm"], ex.state.kinds["vm"] = 99, "vm"
    step = {"op": "pv_protected", "name": "p", "vm": "vm", "rc": agent.SENTINEL_RC, "rrc": agent.SENTINEL_RRC}
    yes = ex.run_step(step)
    no = ex.run_step(dict(step, name="q"))
    assert (yes["errno"], yes["data"], yes["rc"]) == ("EFAULT", {"protected": True}, agent.SENTINEL_RC)
    assert (no["errno"], no["data"]) == ("EINVAL", {"protected": False})
    assert seen[0] == {"request": uapi.KVM_S390_PV_COMMAND, "cmd": int(uapi.PvCmd.KVM_PV_SET_SEC_PARMS),
                       "data": 0, "flags": 0}


# --- vm.allocate_pgste and the re-exec ------------------------------------------------------------------------

SHIM = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {agent_dir!r})
    import agent, platform
    agent.PGSTE_SYSCTL = os.environ["TEST_PGSTE_FILE"]
    platform.machine = lambda: "s390x"
    sys.exit(agent.main(sys.argv[1:]))
""")


def _run_shim(tmp_path: Path, doc: Dict[str, Any], sysctl: str) -> tuple:
    pgste = tmp_path / "allocate_pgste"
    pgste.write_text(sysctl)
    shim = tmp_path / "shim.py"
    shim.write_text(SHIM.format(agent_dir=str(AGENT_DIR)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMH")}
    env["TEST_PGSTE_FILE"] = str(pgste)
    proc = subprocess.run([sys.executable, str(shim)], input=json.dumps(doc).encode(), capture_output=True,
                          env=env, timeout=60, cwd=str(tmp_path))
    records = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    return proc.returncode, records, proc.stderr.decode(), pgste.read_text()


def test_reexec_hands_over_a_scenario_above_128_kib_and_restores_the_sysctl(tmp_path: Path) -> None:
    big_name = "s" + "x" * (160 * 1024)
    doc = {"steps": [{"op": "sleep", "ms": 0, "name": big_name},
                     {"op": "create_vm", "name": "vm_without_kvm"}]}
    assert len(json.dumps(doc)) > 128 * 1024
    code, records, stderr, sysctl = _run_shim(tmp_path, doc, "0\n")
    assert "Argument list too long" not in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert code == 0, stderr[-2000:]
    agent_record = records[0]
    assert agent_record["op"] == "agent"
    assert agent_record["data"]["pgste"] == ("vm.allocate_pgste=1 for this process (set by the agent, "
                                             "host value restored to 0)")
    assert [r["name"] for r in records[1:3]] == [big_name, "vm_without_kvm"]
    assert sysctl.strip() == "0"  # the host-wide setting is back
    assert records[-1] == {"name": "end", "op": "end", "ok": True, "exit": 0}
    assert not list(tmp_path.glob("kvmh-agent-*"))


def test_no_reexec_and_no_change_when_the_sysctl_is_already_set(tmp_path: Path) -> None:
    code, records, _, sysctl = _run_shim(tmp_path, {"steps": [{"op": "create_vm", "name": "c"}]}, "1\n")
    assert code == 0 and records[0]["data"]["pgste"] == "vm.allocate_pgste=1"
    assert sysctl == "1\n"


def test_a_failed_reexec_restores_the_sysctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pgste = tmp_path / "allocate_pgste"
    pgste.write_text("0\n")
    monkeypatch.setattr(agent, "PGSTE_SYSCTL", str(pgste))

    def refuse(path: str, argv: List[str]) -> None:
        raise OSError(7, "Argument list too long")

    monkeypatch.setattr(agent.os, "execv", refuse)
    message = agent.reexec('{"steps": []}', "0")
    assert "re-executing with vm.allocate_pgste=1 failed: Argument list too long" in message
    assert pgste.read_text() == "0\n"


def test_the_private_file_handoff_is_0600_in_a_0700_dir_and_removed_once_read(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(agent.os, "memfd_create", raising=False)
    monkeypatch.setattr(agent.tempfile, "tempdir", str(tmp_path))
    text = json.dumps({"steps": [], "pad": "y" * 200_000})
    args = agent.handoff_args(text)
    assert args[0] == "--scenario-file"
    path = Path(args[1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert agent.read_input(agent.parse_args(args)) == text
    assert not path.exists() and not path.parent.exists()


def test_the_memfd_handoff_survives_exec_and_reads_back() -> None:
    if not hasattr(os, "memfd_create"):
        pytest.skip("no memfd_create here")
    text = json.dumps({"steps": [], "pad": "z" * 200_000})
    args = agent.handoff_args(text)
    assert args[0] == "--scenario-fd"
    fd = int(args[1])
    assert os.get_inheritable(fd)
    assert agent.read_input(agent.parse_args(args)) == text


def test_unknown_arguments_are_input_errors() -> None:
    with pytest.raises(ValueError, match="unknown or incomplete argument '--bogus'"):
        agent.parse_args(["--bogus", "1"])
