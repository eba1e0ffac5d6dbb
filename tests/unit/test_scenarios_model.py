"""Every scenario against the model target; deviations are reported side by side; probe and runner logic."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import List, Optional

import pytest

from harness.errors import HarnessError, InfrastructureError
from harness.kvm import runner as runner_mod
from harness.kvm.caps import Capabilities, destroy_fast_from_facilities, model_host_caps
from harness.kvm.compare import compare
from harness.kvm.model import Model
from harness.kvm.probe import caps_from_records, probe, probe_steps, pv_skip_reason
from harness.kvm.runner import AgentRunner, ScenarioResult, run_agent, run_scenario
from harness.kvm.scenarios import LIFECYCLE_SCENARIOS, PV_SCENARIOS, SCENARIOS, scenario
from harness.targets.base import CommandResult, Target
from harness.targets.model import ModelTarget
from harness.targets.factory import make_target


@pytest.fixture
def model_target() -> ModelTarget:
    target = make_target("model")
    assert isinstance(target, ModelTarget)
    target.start()
    return target


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_passes_on_the_model_target(name: str, model_target: ModelTarget) -> None:
    result = run_scenario(model_target, SCENARIOS[name], probe(model_target))
    assert result.model_result
    assert result.ok, result.report()
    assert "(reference model, not a kernel)" in result.report()
    assert len(result.run.records) > 2


def test_scenario_catalogue() -> None:
    assert {s.name for s in LIFECYCLE_SCENARIOS} == {n for n in SCENARIOS if "lifecycle" in n}
    assert all("lifecycle" not in s.name for s in PV_SCENARIOS)
    assert all(s.needs in ("kvm", "s390_kvm", "pv_host", "async") for s in SCENARIOS.values())
    assert all(s.needs == "kvm" for s in LIFECYCLE_SCENARIOS)
    with pytest.raises(KeyError, match="unknown scenario 'nope'"):
        scenario("nope")


def _prepare_deviation(records: List[dict]) -> List[dict]:
    wrong = copy.deepcopy(records)
    for record in wrong:
        if record.get("name") == "prepare":
            record.update(ret=None, errno="EINVAL", rc=0xDEAD, rrc=0xBEEF)
    return wrong


def test_a_wrong_observation_is_a_deviation_with_a_side_by_side_table(model_target: ModelTarget) -> None:
    sc = SCENARIOS["pv_prepare_perform"]
    caps = probe(model_target)
    observed = run_agent(model_target, sc.document()).records
    alternatives = Model(caps).expect(sc.normalised_steps())
    assert compare(alternatives, observed).ok
    comparison = compare(alternatives, _prepare_deviation(observed))
    assert not comparison.ok
    assert {(d.step, d.field) for d in comparison.deviations} == {
        ("prepare", "ret"), ("prepare", "errno"), ("prepare", "rc"), ("prepare", "rrc")}
    table = comparison.table().splitlines()
    assert table[0].split() == ["step", "op", "expected", "(model)", "observed", "(target)"]
    row = next(line for line in table if line.startswith("prepare "))
    assert "ret=0 rc=0x1 rrc=0x2a" in row and "EINVAL rc=0xdead rrc=0xbeef" in row
    assert row.rstrip().endswith("<-- ret, errno, rc, rrc")
    assert row.index("ret=0 rc=0x1") < row.index("EINVAL")  # expected left, observed right
    unmarked = [line for line in table if line.startswith("enable ")]
    assert unmarked and "<--" not in unmarked[0]


def test_scenario_result_assertion_carries_the_table(model_target: ModelTarget) -> None:
    sc = SCENARIOS["pv_prepare_perform"]
    caps = probe(model_target)
    good = run_scenario(model_target, sc, caps)
    bad = ScenarioResult(sc, "model", caps, good.run,
                         compare(Model(caps).expect(sc.normalised_steps()), _prepare_deviation(good.run.records)))
    with pytest.raises(AssertionError) as info:
        bad.assert_ok()
    text = str(info.value)
    assert "scenario pv_prepare_perform on model" in text
    assert "<-- ret, errno, rc, rrc" in text


def test_missing_extra_and_truncated_records_are_deviations(model_target: ModelTarget) -> None:
    sc = SCENARIOS["pv_disable_after_prepare"]
    observed = run_agent(model_target, sc.document()).records
    alternatives = Model(probe(model_target)).expect(sc.normalised_steps())
    without_perform = [r for r in observed if r.get("name") != "perform"]
    result = compare(alternatives, without_perform)
    assert [(d.step, d.field) for d in result.deviations] == [("perform", "record")]
    extra = observed[:-1] + [{"name": "surprise", "op": "sleep", "ret": 0, "errno": None}, observed[-1]]
    assert [(d.step, d.field) for d in compare(alternatives, extra).deviations] == [("surprise", "record")]
    truncated = [r for r in observed if r.get("op") != "end"]
    assert [(d.step, d.field) for d in compare(alternatives, truncated).deviations] == [("end", "record")]
    end = {"name": "end", "op": "end", "ok": False, "exit": 3, "error": "step 'enable' timed out"}
    timed_out = observed[:3] + [{"name": "enable", "op": "pv", "ret": None, "errno": None, "timed_out": True,
                                 "error": "step 'enable' (pv) timed out"}, end]
    table = compare(alternatives, timed_out).table()
    assert "TIMED OUT" in table and "failed: step 'enable' timed out" in table


def test_concurrent_performs_accept_either_winner_but_not_two(model_target: ModelTarget) -> None:
    sc = SCENARIOS["pv_concurrent_performs"]
    observed = run_agent(model_target, sc.document()).records
    alternatives = Model(probe(model_target)).expect(sc.normalised_steps())
    assert len(alternatives) == 2
    swapped = copy.deepcopy(observed)
    for r in swapped:
        if r["name"] in ("perform_a", "perform_b"):
            winner = r["errno"] is None
            r.update(ret=None if winner else 0, errno="EINVAL" if winner else None)
    assert compare(alternatives, swapped).ok
    both = copy.deepcopy(observed)
    for r in both:
        if r["name"] in ("perform_a", "perform_b"):
            r.update(ret=0, errno=None)
    assert not compare(alternatives, both).ok


def test_model_target_runs_no_commands(model_target: ModelTarget, tmp_path: Path) -> None:
    for call in (lambda: model_target.run("true"), lambda: model_target.put(tmp_path, "/x"),
                 lambda: model_target.get("/x", tmp_path)):
        with pytest.raises(InfrastructureError, match="the model target runs no commands"):
            call()
    facts = model_target.facts()
    assert (facts.kind, facts.kernel_release, facts.extra["results"]) == (
        "model", "model", "reference model, not a kernel")
    assert model_target.dmesg_since(model_target.dmesg_cursor()) == ""
    caps = probe(model_target)
    assert caps.source == "model" and caps.arch == "s390x" and caps.version == (6, 12)
    assert pv_skip_reason(caps) is None
    model_target.close()


# --- capability probe ------------------------------------------------------------------------------------


def _caps(**kw: object) -> Capabilities:
    base = dict(arch="s390x", kernel_release="6.12.9-s390x", has_kvm=True, caps={180: 1, 217: 1, 224: 1},
                prot_virt_host=1, async_destroy=1, destroy_fast=True, has_sie=True)
    base.update(kw)
    return Capabilities(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("caps, need, reason", [
    (_caps(has_kvm=False, has_sie=False), "async",
     "no /dev/kvm on this target (QEMU TCG has no SIE: the CPU lacks the 'sie' feature)"),
    (_caps(has_kvm=False, has_sie=None), "kvm", "no /dev/kvm on this target (QEMU TCG has no SIE)"),
    (_caps(has_kvm=False, has_sie=False), "kvm", "no /dev/kvm on this target (QEMU TCG has no SIE: the CPU lacks"),
    (_caps(has_kvm=False, arch="x86_64"), "kvm", "no /dev/kvm on this target (x86_64 6.12.9-s390x): load kvm"),
    (_caps(has_kvm=False, has_sie=True), "s390_kvm", "no /dev/kvm on this target although the CPU has SIE"),
    (_caps(arch="x86_64"), "async", "not an s390x host: protected virtualization needs IBM Z"),
    (_caps(arch="x86_64"), "s390_kvm", "not an s390x host"),
    (_caps(prot_virt_host=0), "pv_host", "host is not PV-capable: /sys/firmware/uv/prot_virt_host is 0"),
    (_caps(prot_virt_host=None), "async", "host is not PV-capable: /sys/firmware/uv/prot_virt_host is missing"),
    (_caps(kernel_release="6.1.0-27-s390x", async_destroy=None, caps={224: 0}), "async",
     "kernel 6.1 predates async teardown (capability 224 unknown)"),
    (_caps(async_destroy=0, caps={224: 0}), "async", "kvm.async_destroy=0"),
    (_caps(caps={224: 0}), "async", "capability 224 (KVM_CAP_S390_PROTECTED_ASYNC_DISABLE) reads 0"),
])
def test_skip_reasons(caps: Capabilities, need: str, reason: str) -> None:
    got = pv_skip_reason(caps, need)
    assert got is not None and got.startswith(reason), got


@pytest.mark.parametrize("caps, need", [
    (_caps(), "async"), (_caps(kernel_release="6.1.0"), "pv_host"), (_caps(prot_virt_host=0), "s390_kvm"),
    (_caps(arch="x86_64"), "kvm"),
])
def test_no_skip_when_the_need_is_met(caps: Capabilities, need: str) -> None:
    assert pv_skip_reason(caps, need) is None


def test_caps_from_probe_records() -> None:
    steps = probe_steps()
    assert [s["name"] for s in steps][:4] == ["open", "cap180", "cap217", "cap224"]
    fast = "%x" % (1 << (63 - 23))
    records = [
        {"name": "agent", "op": "agent", "data": {"machine": "s390x", "release": "6.12.9-s390x", "python": "3.13.5"}},
        {"name": "open", "ret": 3, "errno": None},
        {"name": "cap180", "ret": 1, "errno": None}, {"name": "cap217", "ret": 0, "errno": None},
        {"name": "cap224", "ret": 1, "errno": None},
        {"name": "prot_virt_host", "ret": 0, "errno": None, "data": "1"},
        {"name": "async_destroy", "ret": 0, "errno": None, "data": "1"},
        {"name": "facilities", "ret": 0, "errno": None, "data": f"{fast}\n0\n0\n0"},
        {"name": "cpuinfo", "ret": 0, "errno": None, "data": "vendor_id : IBM/S390\nfeatures\t: esan3 zarch sie\n"},
    ]
    caps = caps_from_records(records)
    assert (caps.arch, caps.has_kvm, caps.caps, caps.prot_virt_host, caps.async_destroy) == (
        "s390x", True, {180: 1, 217: 0, 224: 1}, 1, 1)
    assert caps.destroy_fast is True and caps.has_sie is True and caps.predates_async_teardown is False
    tcg = [records[0], {"name": "open", "ret": None, "errno": "ENOENT"},
           {"name": "cap180", "ret": None, "errno": None, "error": "no open handle 'kvm'"},
           {"name": "prot_virt_host", "ret": None, "errno": "ENOENT"},
           {"name": "cpuinfo", "ret": 0, "errno": None, "data": "features\t: esan3 zarch stfle msa\n"}]
    caps = caps_from_records(tcg)
    assert caps.has_kvm is False and caps.caps[180] is None and caps.prot_virt_host is None
    assert caps.has_sie is False
    assert pv_skip_reason(caps).startswith("no /dev/kvm on this target (QEMU TCG has no SIE")


def test_destroy_fast_bit_is_msb0_bit_23_of_word_0() -> None:
    assert destroy_fast_from_facilities("%x\n0\n0\n0\n" % (1 << 40)) is True
    assert destroy_fast_from_facilities("%x\n%x\n0\n0\n" % ((1 << 41) | (1 << 39), 1 << 40)) is False
    assert destroy_fast_from_facilities("") is None and destroy_fast_from_facilities("zz") is None


def test_model_host_variants() -> None:
    old = model_host_caps("6.1.0-27-s390x")
    assert old.caps[224] == 0 and old.async_destroy is None and old.predates_async_teardown
    assert model_host_caps(async_destroy=0).caps[224] == 0


# --- runner ------------------------------------------------------------------------------------------------


class FakeTarget(Target):
    """Answers commands from a script; records what was run and copied."""

    kind = "fake"

    def __init__(self, results: List[CommandResult]) -> None:
        self.spec = "fake"
        self.arch = "s390x"
        self.results = results
        self.commands: List[str] = []
        self.copied: List[str] = []

    def start(self) -> None:
        pass

    def run(self, command: str, timeout: float = 60.0, *, stdin: Optional[bytes] = None,
            on_output: object = None) -> CommandResult:
        self.commands.append(command)
        return self.results.pop(0)

    def put(self, local: Path, remote: str, mode: Optional[int] = None) -> None:
        self.copied.append(remote)

    def get(self, remote: str, local: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _result(status: int, stdout: str = "", stderr: str = "") -> CommandResult:
    return CommandResult("x", status, stdout, stderr, 0.1)


def test_runner_without_python3_is_an_infrastructure_error() -> None:
    target = FakeTarget([_result(127, stderr="sh: python3: not found")])
    with pytest.raises(InfrastructureError) as info:
        AgentRunner(target).run({"steps": []}, timeout=10)
    assert str(info.value) == "target has no python3: the agent needs it (install python3 on the target)"


def test_runner_copies_the_agent_once_and_parses_records() -> None:
    out = '{"name": "agent", "op": "agent", "ret": 0}\nnoise\n{"name": "end", "op": "end", "ok": true, "exit": 0}\n'
    target = FakeTarget([_result(0), _result(0, out), _result(0, out)])
    runner = runner_mod.agent_runner(target)
    assert runner_mod.agent_runner(target) is runner
    first = runner.run({"steps": []}, timeout=10)
    second = runner.run({"steps": []}, timeout=10)
    # A relative name: the bundle goes to the target's private working directory, never to /tmp.
    assert len(target.copied) == 1 and target.copied[0].startswith("kvmh-agent-")
    assert target.commands[1] == f"python3 {target.copied[0]}"
    assert first.end == {"name": "end", "op": "end", "ok": True, "exit": 0} and first.noise == ["noise"]
    assert second.facts == {}


def test_runner_reports_an_agent_that_printed_nothing() -> None:
    target = FakeTarget([_result(0), _result(1, "", "Traceback ...\nSyntaxError: bad")])
    with pytest.raises(InfrastructureError, match="produced no records .*SyntaxError: bad"):
        AgentRunner(target).run({"steps": []}, timeout=10)


def test_runner_refuses_input_the_agent_rejected() -> None:
    out = '{"name": "x", "op": "bogus", "error": "unknown step op"}\n' \
          '{"name": "end", "op": "end", "ok": false, "exit": 2, "error": "unknown step op \'bogus\'"}\n'
    target = FakeTarget([_result(0), _result(2, out)])
    with pytest.raises(HarnessError, match="rejected its input: unknown step op 'bogus'"):
        AgentRunner(target).run({"steps": []}, timeout=10)


def test_kernel_splats_in_a_scenario_log() -> None:
    text = ("kvm: something harmless\n"
            "------------[ cut here ]------------\n"
            "protvirt destroy leftover vm failed rc 105 rrc 0\n"
            "WARNING: CPU: 1 PID: 77 at arch/s390/kvm/pv.c:227 kvm_s390_pv_dispose_one_leftover+0x1a/0x90 [kvm]\n"
            "Call Trace:\n [<000003ff80123456>] kvm_s390_pv_dispose_one_leftover+0x1a/0x90 [kvm]\n"
            " [<000003ff80123999>] kvm_s390_pv_deinit_cleanup_all+0x40/0x100 [kvm]\n"
            "---[ end trace 0000000000000000 ]---\n")
    splats = runner_mod.find_kernel_splats(text)
    assert len(splats) == 1
    assert "pv.c:227" in splats[0] and ("protvirt" in splats[0] or "WARN" in splats[0])
    assert runner_mod.find_kernel_splats("kvm: something harmless\n") == []
