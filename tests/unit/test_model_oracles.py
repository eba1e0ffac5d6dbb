"""Model oracles: the side-effect-free protection probe, fix-pinned expectations, the interrupted PERFORM,
and the WARNs each step may or must not produce."""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import pytest

from harness.kvm import uapi
from harness.kvm.agent import SENTINEL_RC, SENTINEL_RRC, normalise_steps
from harness.kvm.caps import Capabilities, model_host_caps
from harness.kvm.compare import compare
from harness.kvm.model import ANY, Model
from harness.kvm.runner import ScenarioResult, run_agent, run_scenario
from harness.kvm.scenarios import (
    GIB, PV_SCENARIOS, SCENARIOS, is_protected, kernel_log_mark, memslot, no_protvirt_warns, open_kvm, pv,
    pv_guest, create_vm, vcpu,
)
from harness.kvm.warns import PROTVIRT_WARNS
from harness.targets.factory import make_target

PREPARE, PERFORM = "ASYNC_CLEANUP_PREPARE", "ASYNC_CLEANUP_PERFORM"
PV_612 = model_host_caps()
SLOW = model_host_caps(destroy_fast=False)


def expect(caps: Capabilities, steps: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    normalise_steps(steps, set(), "")
    (records,) = Model(caps).expect(steps)
    return {r["name"]: r for r in records}


def answer(record: Dict[str, Any]) -> tuple:
    """(errno, rc, rrc, protected) with the model's wildcards refused: every field must be exact."""
    values = (record["errno"], record.get("rc"), record.get("rrc"), (record.get("data") or {}).get("protected"))
    assert all(v is not ANY for v in values), record
    return values


# --- the protection probe -----------------------------------------------------------------------------------


def test_probe_answers_without_side_effects_through_the_life_of_a_vm() -> None:
    r = expect(PV_612, pv_guest() + [
        is_protected("fresh"), pv("ENABLE", "enable"), is_protected("enabled"), is_protected("enabled_twice"),
        pv(PREPARE, "prepare"), is_protected("prepared"), pv(PERFORM, "perform"), is_protected("performed")])
    unchanged = (SENTINEL_RC, SENTINEL_RRC)
    assert answer(r["fresh"]) == ("EINVAL", *unchanged, False)
    assert answer(r["enabled"]) == ("EFAULT", *unchanged, True)
    assert answer(r["enabled_twice"]) == ("EFAULT", *unchanged, True)  # the probe changed nothing
    assert answer(r["prepared"]) == ("EINVAL", *unchanged, False)
    assert answer(r["performed"]) == ("EINVAL", *unchanged, False)
    assert r["prepare"]["ret"] == 0  # PREPARE still found the VM protected after two probes


def test_probe_sees_the_vm_still_protected_after_a_refused_prepare() -> None:
    r = expect(PV_612, pv_guest(limit=2 * GIB) + [pv("ENABLE", "enable"), pv(PREPARE, "prepare"),
                                                  is_protected("after_refusal")])
    assert answer(r["after_refusal"]) == ("EFAULT", SENTINEL_RC, SENTINEL_RRC, True)


def test_raw_set_sec_parms_with_a_null_pointer_is_efault_on_a_protected_vm() -> None:
    r = expect(PV_612, pv_guest() + [pv("ENABLE", "enable"), pv("SET_SEC_PARMS", "null_parms", data=0)])
    assert (r["null_parms"]["errno"], r["null_parms"]["rc"]) == ("EFAULT", SENTINEL_RC)
    assert r["null_parms"]["errno"] is not ANY


def test_probe_on_other_hosts() -> None:
    not_pv = expect(model_host_caps(prot_virt_host=0), pv_guest() + [is_protected("p")])
    assert answer(not_pv["p"]) == ("EINVAL", SENTINEL_RC, SENTINEL_RRC, False)
    x86 = expect(Capabilities(arch="x86_64", kernel_release="6.12.0", has_kvm=True), pv_guest() + [is_protected("p")])
    assert x86["p"]["errno"] == "ENOTTY"


@pytest.mark.parametrize("name", ["pv_prepare_perform", "pv_double_prepare", "pv_small_vm", "pv_disable_after_prepare"])
def test_scenarios_state_protection_with_the_probe(name: str) -> None:
    steps = SCENARIOS[name].steps
    probes = [s["name"] for s in steps if s["op"] == "pv_protected"]
    assert probes, f"{name} states protection but never probes it"
    assert "disable_unprotected" not in [s["name"] for s in steps]
    assert "enable_still_protected" not in [s["name"] for s in steps]


# --- fixes --------------------------------------------------------------------------------------------------


def _accepting_small_vm(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """What a kernel without fix 292a7d6fca33 prints for pv_small_vm: PREPARE succeeds."""
    wrong = copy.deepcopy(records)
    for record in wrong:
        if record.get("name") == "prepare":
            record.update(ret=0, errno=None, rc=1, rrc=42)
        if record.get("name") == "still_protected":
            record.update(errno="EINVAL", data={"protected": False})
    return wrong


@pytest.mark.parametrize("release, verdict", [
    ("6.3.2-200.fc38.s390x", "kernel 6.3.2-200.fc38.s390x predates it"),
    ("6.2.0-1-s390x", "kernel 6.2.0-1-s390x predates it"),
    ("6.3.3-s390x", "kernel 6.3.3-s390x should have it by its release number"),
    ("6.12.9-s390x", "kernel 6.12.9-s390x should have it by its release number"),
])
def test_a_small_vm_prepare_that_succeeds_names_the_missing_fix(release: str, verdict: str) -> None:
    target = make_target("model")
    target.start()
    sc = SCENARIOS["pv_small_vm"]
    caps = Capabilities(**{**PV_612.__dict__, "kernel_release": release})
    observed = _accepting_small_vm(run_agent(target, sc.document()).records)
    result = ScenarioResult(sc, "ssh://root@lpar", caps, run_agent(target, sc.document()),
                            compare(Model(caps).expect(sc.normalised_steps()), observed))
    assert not result.ok
    text = result.report()
    first = text.splitlines()[1]
    assert first.startswith('this kernel lacks fix 292a7d6fca33 ("KVM: s390: pv: fix asynchronous teardown for '
                            'small VMs"; first in v6.4, backported to 6.3.3): PREPARE accepted a VM of ≤ 2 GiB')
    assert first.endswith(verdict) or verdict in first


def test_a_failing_scenario_that_pins_a_fix_names_it_even_without_a_pinned_step() -> None:
    target = make_target("model")
    target.start()
    sc = SCENARIOS["lifecycle_exit"]
    caps = Capabilities(**{**PV_612.__dict__, "kernel_release": "6.4.7-s390x"})
    run = run_agent(target, sc.document())
    truncated = [r for r in run.records if r.get("name") != "exit3"]
    result = ScenarioResult(sc, "ssh://root@lpar", caps, run, compare(Model(caps).expect(sc.normalised_steps()),
                                                                     truncated))
    lines = result.fix_lines()
    assert lines == ['this scenario pins fix 5ff92181577a ("KVM: s390: pv: simplify shutdown and fix race"; '
                     'first in v6.5, backported to 6.4.8); kernel 6.4.7-s390x predates it']
    assert lines[0] in result.report()


def test_capabilities_keep_the_full_release() -> None:
    caps = Capabilities(arch="s390x", kernel_release="6.3.2-arch1", has_kvm=True)
    assert caps.version == (6, 3) and caps.full_version == (6, 3, 2)
    assert caps.has_fix("292a7d6fca33") is False
    assert Capabilities(arch="s390x", kernel_release="6.3.3", has_kvm=True).has_fix("292a7d6fca33") is True
    assert Capabilities(arch="s390x", kernel_release="weird", has_kvm=True).has_fix("292a7d6fca33") is None
    assert caps.full_version == (6, 3, 2)


# --- the interrupted PERFORM --------------------------------------------------------------------------------


def _fork_data(records: List[Dict[str, Any]], name: str = "victim") -> Dict[str, Any]:
    return next(r for r in records if r.get("name") == name)["data"]


def test_interrupted_perform_is_an_observable_model_result() -> None:
    sc = SCENARIOS["pv_fatal_signal_in_perform"]
    alternatives = Model(PV_612).expect(sc.normalised_steps())
    target = make_target("model")
    target.start()
    observed = run_agent(target, sc.document()).records
    kill_pv = _fork_data(observed)["kill_pv"]
    assert kill_pv == {"step": "v_perform", "entered": True, "returned": False, "rc": 1, "rrc": 42}
    assert not any(r.get("name") == "v_perform" for r in observed)  # the killed child never printed it
    assert compare(alternatives, observed).ok

    def with_kill_pv(value: Dict[str, Any]) -> List[Dict[str, Any]]:
        changed = copy.deepcopy(observed)
        _fork_data(changed)["kill_pv"] = value
        return changed

    assert compare(alternatives, with_kill_pv({"step": "v_perform", "entered": False})).ok
    assert compare(alternatives, with_kill_pv(
        {"step": "v_perform", "entered": True, "returned": True, "rc": SENTINEL_RC, "rrc": SENTINEL_RRC})).ok
    eio = compare(alternatives, with_kill_pv({"step": "v_perform", "entered": True, "rc": 0x105, "rrc": 0}))
    assert [(d.step, d.field) for d in eio.deviations] == [("victim", "data")]


def test_notes_say_whether_the_interrupted_path_ran() -> None:
    target = make_target("model")
    target.start()
    result = run_scenario(target, SCENARIOS["pv_fatal_signal_in_perform"], PV_612)
    assert any("cut short by SIGKILL and reported rc=1 rrc=42" in n for n in result.notes)
    sc = SCENARIOS["pv_fatal_signal_in_perform"]
    missed = [{"name": "victim", "op": "fork", "data": {"killed_in": "v_perform", "kill_pv": {
        "step": "v_perform", "entered": True, "returned": True, "rc": SENTINEL_RC, "rrc": SENTINEL_RRC}}}]
    assert any("not interrupted inside the kernel" in n for n in sc.notes(missed))


# --- WARNs --------------------------------------------------------------------------------------------------


def test_model_states_which_warns_each_step_must_not_produce() -> None:
    steps = [kernel_log_mark()] + pv_guest() + [
        pv("ENABLE", "enable"), pv(PREPARE, "prepare"), pv(PERFORM, "perform"), pv("ENABLE", "enable_2"),
        pv("DISABLE", "disable"), no_protvirt_warns()]
    normalise_steps(steps, set(), "")
    sites = {(s.step, s.function, s.verdict) for s in Model(SLOW).warn_sites(steps)}
    assert ("perform", "kvm_s390_pv_dispose_one_leftover", "must not") in sites
    assert ("disable", "kvm_s390_pv_deinit_vm", "must not") in sites
    assert ("prepare", "kvm_s390_pv_destroy_cpu", "must not") in sites
    fast_sites = {(s.step, s.function) for s in Model(PV_612).warn_sites(steps)}
    assert ("prepare", "kvm_s390_pv_deinit_vm_fast") in fast_sites
    assert ("perform", "kvm_s390_pv_dispose_one_leftover") not in fast_sites  # nothing left for the Ultravisor
    (records,) = Model(SLOW).expect(steps)
    check = next(r for r in records if r["name"] == "no_protvirt_warns")
    assert check["data"] == {"counts": {message: 0 for message in PROTVIRT_WARNS}}


def test_a_warn_the_model_cannot_rule_out_is_allowed_but_only_that_one() -> None:
    steps = [kernel_log_mark(), open_kvm(), create_vm(), vcpu(0), pv("ENABLE", "enable_without_memory"),
             memslot(64), no_protvirt_warns()]
    normalise_steps(steps, set(), "")
    (records,) = Model(PV_612).expect(steps)
    counts = next(r for r in records if r["name"] == "no_protvirt_warns")["data"]["counts"]
    assert counts["protvirt destroy vm failed"] is ANY
    leftover = counts["protvirt destroy leftover vm failed"]
    assert leftover == 0 and leftover is not ANY


@pytest.mark.parametrize("name", ["pv_fatal_signal_in_perform", "pv_destroy_vm_with_set_aside"])
def test_no_warn_scenarios_check_the_kernel_log_explicitly(name: str) -> None:
    steps = SCENARIOS[name].steps
    checks = [s for s in steps if s["op"] == "kernel_log" and s.get("since")]
    assert checks and checks[-1]["match"] == list(PROTVIRT_WARNS)
    assert steps[0]["op"] == "kernel_log" and "since" not in steps[0]


def test_a_warn_in_the_kernel_log_fails_the_scenario_and_the_model_target_labels_its_check() -> None:
    target = make_target("model")
    target.start()
    sc = SCENARIOS["pv_destroy_vm_with_set_aside"]
    good = run_scenario(target, sc, SLOW)
    assert good.ok
    assert good.warn_check().startswith("protvirt destroy WARNs (model result): found none; must not fire at: ")
    assert "kvm_s390_pv_dispose_one_leftover at" in good.warn_check()
    warned = copy.deepcopy(good.run.records)
    check = next(r for r in warned if r.get("name") == "no_protvirt_warns")
    check["data"]["counts"]["protvirt destroy leftover vm failed"] = 1
    comparison = compare(Model(SLOW).expect(sc.normalised_steps()), warned)
    assert [(d.step, d.field) for d in comparison.deviations] == [("no_protvirt_warns", "data")]


def test_every_pv_scenario_still_agrees_with_the_model_without_destroy_fast() -> None:
    for sc in PV_SCENARIOS:
        slow_target = make_target("model")
        slow_target.caps = SLOW  # type: ignore[attr-defined]
        result = run_scenario(slow_target, sc, SLOW)
        assert result.ok, result.report()
    assert uapi.SET_ASIDE_RRC == 42
