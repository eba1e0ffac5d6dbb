"""The reference model on sequences from the spec (docs/async-destroy-spec.md) and the 6.12 kernel sources."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from harness.kvm import uapi
from harness.kvm.agent import SENTINEL_RC, SENTINEL_RRC, normalise_steps
from harness.kvm.caps import Capabilities, model_host_caps
from harness.kvm.model import ANY, FD, Model, matches
from harness.kvm.scenarios import (
    GIB, check_ext, close, create_vm, fork, mem_limit, memslot, open_kvm, pv, pv_guest, read_file, thread, vcpu,
)

PREPARE, PERFORM = "ASYNC_CLEANUP_PREPARE", "ASYNC_CLEANUP_PERFORM"
UNCHANGED = {"rc": SENTINEL_RC, "rrc": SENTINEL_RRC}


def normalised(steps: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    normalise_steps(steps, set(), "")
    return steps


def expect(caps: Capabilities, steps: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    alternatives = Model(caps).expect(normalised(steps))
    assert len(alternatives) == 1, "a sequential step list must have exactly one outcome"
    return {r["name"]: r for r in alternatives[0]}


def outcome(record: Dict[str, Any]) -> tuple:
    return record["ret"], record["errno"], record.get("rc"), record.get("rrc")


PV_612 = model_host_caps()
PV_612_SLOW = model_host_caps(destroy_fast=False)
PV_61 = model_host_caps("6.1.0-27-s390x")
NO_ASYNC = model_host_caps(async_destroy=0)
NOT_PV = model_host_caps(prot_virt_host=0)


def test_prepare_then_perform_happy_path() -> None:
    r = expect(PV_612, pv_guest() + [
        pv("ENABLE", "enable"), pv(PREPARE, "prepare"), pv("DISABLE", "disable"),
        pv(PERFORM, "perform"), pv("ENABLE", "enable_again")])
    assert outcome(r["enable"]) == (0, None, uapi.UVC_RC_EXECUTED, ANY)
    assert outcome(r["prepare"]) == (0, None, 1, 42)
    # the VM continues non-protected: DISABLE refuses, rc/rrc untouched
    assert outcome(r["disable"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)
    # destroy-fast ran in PREPARE: PERFORM makes no Ultravisor call, rc/rrc stay as passed
    assert outcome(r["perform"]) == (0, None, SENTINEL_RC, SENTINEL_RRC)
    assert outcome(r["enable_again"])[:2] == (0, None)


def test_perform_without_destroy_fast_reports_the_destroy_rc() -> None:
    r = expect(PV_612_SLOW, pv_guest() + [pv("ENABLE", "enable"), pv(PREPARE, "prepare"), pv(PERFORM, "perform")])
    assert outcome(r["perform"]) == (0, None, uapi.UVC_RC_EXECUTED, ANY)


def test_perform_with_unknown_destroy_fast_leaves_rc_open() -> None:
    caps = Capabilities(**{**PV_612.__dict__, "destroy_fast": None})
    r = expect(caps, pv_guest() + [pv("ENABLE", "enable"), pv(PREPARE, "prepare"), pv(PERFORM, "perform")])
    assert r["perform"]["rc"] is ANY and r["perform"]["ret"] == 0


def test_pre_6_2_kernel_has_no_async_commands() -> None:
    r = expect(PV_61, pv_guest() + [
        check_ext(224, "cap224"), read_file("/sys/module/kvm/parameters/async_destroy", "param"),
        pv("ENABLE", "enable"), pv(PREPARE, "prepare"), pv(PERFORM, "perform"), pv("DISABLE", "disable")])
    assert r["cap224"]["ret"] == 0
    assert r["param"]["errno"] == "ENOENT"
    assert outcome(r["prepare"]) == (None, "ENOTTY", SENTINEL_RC, SENTINEL_RRC)
    assert outcome(r["perform"]) == (None, "ENOTTY", SENTINEL_RC, SENTINEL_RRC)
    assert r["disable"]["ret"] == 0  # ENOTTY changed nothing: the VM is still protected


def test_early_failures_come_first_and_leave_rc_rrc_unchanged() -> None:
    not_pv = expect(NOT_PV, pv_guest() + [{"op": "pv", "cmd": 99, "name": "unknown"},
                                          pv("ENABLE", "enable", flags=1)])
    # not a PV host is checked before flags and before the command
    assert outcome(not_pv["unknown"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)
    assert outcome(not_pv["enable"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)
    r = expect(PV_612, pv_guest() + [
        {"op": "pv", "cmd": 99, "flags": 1, "name": "unknown_flags"},
        {"op": "pv", "cmd": 99, "name": "unknown"},
        {"op": "pv", "cmd": 11, "name": "eleven"},
        pv("ENABLE", "enable_flags", flags=1),
        pv("DISABLE", "disable")])
    assert outcome(r["unknown_flags"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)  # flags before command
    assert outcome(r["unknown"]) == (None, "ENOTTY", SENTINEL_RC, SENTINEL_RRC)
    assert outcome(r["eleven"]) == (None, "ENOTTY", SENTINEL_RC, SENTINEL_RRC)
    assert r["disable"]["errno"] == "EINVAL"  # the flagged ENABLE did nothing


def test_custom_sentinels_come_back_unchanged() -> None:
    r = expect(PV_612, pv_guest() + [pv(PERFORM, "perform", rc=0x1234, rrc=0x5678)])
    assert outcome(r["perform"]) == (None, "EINVAL", 0x1234, 0x5678)


def test_second_prepare_while_one_is_set_aside() -> None:
    r = expect(PV_612, pv_guest() + [
        pv("ENABLE", "enable"), pv(PREPARE, "prepare"), pv(PREPARE, "prepare_unprotected"),
        pv("ENABLE", "enable_2"), pv(PREPARE, "prepare_2"), pv("ENABLE", "enable_3"),
        pv("DISABLE", "disable"), pv(PERFORM, "perform"), pv("DISABLE", "disable_again")])
    assert outcome(r["prepare_unprotected"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)
    assert r["enable_2"]["ret"] == 0  # ENABLE is allowed while the old VM is set aside
    assert outcome(r["prepare_2"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)
    assert r["enable_3"]["errno"] == "EINVAL"  # still protected after the refused PREPARE
    assert r["disable"]["ret"] == 0 and r["disable"]["rc"] == 1
    assert outcome(r["perform"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)  # DISABLE took the set-aside VM
    assert r["disable_again"]["errno"] == "EINVAL"


@pytest.mark.parametrize("limit, refused", [(GIB, True), (2 * GIB, True), (2 * GIB + (1 << 20), False), (None, False)])
def test_two_gib_rule(limit: Any, refused: bool) -> None:
    r = expect(PV_612, pv_guest(limit=limit) + [
        pv("ENABLE", "enable"), pv(PREPARE, "prepare"), pv("DISABLE", "disable")])
    if refused:
        assert outcome(r["prepare"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)
        assert r["disable"]["ret"] == 0  # the VM is still protected; DISABLE cleans up
    else:
        assert outcome(r["prepare"]) == (0, None, 1, 42)
        assert r["disable"]["errno"] == "EINVAL"


def test_async_destroy_off() -> None:
    r = expect(NO_ASYNC, pv_guest() + [check_ext(224, "cap224"), pv("ENABLE", "enable"),
                                       pv(PREPARE, "prepare"), pv(PERFORM, "perform")])
    assert r["cap224"]["ret"] == 0
    assert outcome(r["prepare"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)
    assert outcome(r["perform"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)


def test_capabilities_follow_the_host_facts() -> None:
    steps = [open_kvm(), check_ext(180, "c180"), check_ext(217, "c217"), check_ext(224, "c224"),
             check_ext(uapi.KVM_CAP_USER_MEMORY, "cmem"), check_ext(66, "cmax")]
    pv_host = expect(PV_612, [dict(s) for s in steps])
    assert (pv_host["c180"]["ret"], pv_host["c224"]["ret"], pv_host["cmem"]["ret"]) == (1, 1, 1)
    assert pv_host["c217"]["ret"] is ANY and pv_host["cmax"]["ret"] is ANY
    plain = expect(NOT_PV, [dict(s) for s in steps])
    assert (plain["c180"]["ret"], plain["c217"]["ret"], plain["c224"]["ret"]) == (0, 0, 0)
    x86 = Capabilities(arch="x86_64", kernel_release="6.12.0", has_kvm=True)
    on_x86 = expect(x86, [dict(s) for s in steps])
    assert (on_x86["c180"]["ret"], on_x86["c217"]["ret"], on_x86["c224"]["ret"]) == (0, 0, 0)


def test_enable_needs_a_memslot_and_an_unprotected_vm() -> None:
    r = expect(PV_612, [open_kvm(), create_vm(), vcpu(0), pv("ENABLE", "no_memslot"),
                        memslot(256), pv("ENABLE", "enable"), pv("ENABLE", "enable_twice"),
                        memslot(256, "memslot_protected", slot=1, gpa=1 << 30)])
    assert r["no_memslot"]["errno"] == "EIO" and r["no_memslot"]["rc"] is ANY
    assert r["enable"]["ret"] == 0
    assert outcome(r["enable_twice"]) == (None, "EINVAL", SENTINEL_RC, SENTINEL_RRC)
    assert r["memslot_protected"]["errno"] == "EINVAL"  # no memslot changes while protected


def test_memory_limit_rules() -> None:
    r = expect(PV_612, [open_kvm(), create_vm(), mem_limit(4 * GIB, "limit"), mem_limit(8 * GIB, "raise"),
                        mem_limit(0, "zero"), memslot(8192, "too_big"), vcpu(0), mem_limit(GIB, "after_vcpu")])
    assert r["limit"]["ret"] == 0
    assert r["raise"]["errno"] == "E2BIG"
    assert r["zero"]["errno"] == "EINVAL"
    assert r["too_big"]["errno"] == "EINVAL"
    assert r["after_vcpu"]["errno"] == "EBUSY"


def test_two_concurrent_performs_exactly_one_wins() -> None:
    steps = normalised(pv_guest() + [
        pv("ENABLE", "enable"), pv(PREPARE, "prepare"),
        thread("t_a", [{"op": "wait_event", "event": "go", "name": "a_ready"}, pv(PERFORM, "perform_a")]),
        thread("t_b", [{"op": "wait_event", "event": "go", "name": "b_ready"}, pv(PERFORM, "perform_b")]),
        {"op": "set_event", "event": "go", "name": "go"},
        {"op": "join", "thread": "t_a", "name": "ja"}, {"op": "join", "thread": "t_b", "name": "jb"}])
    alternatives = Model(PV_612).expect(steps)
    winners = []
    for records in alternatives:
        by = {r["name"]: r for r in records}
        results = sorted([by["perform_a"]["errno"] or "ok", by["perform_b"]["errno"] or "ok"])
        assert results == ["EINVAL", "ok"]
        winners.append("a" if by["perform_a"]["errno"] is None else "b")
        assert by["perform_a"]["thread"] == "t_a"
    assert sorted(winners) == ["a", "b"]


def test_prepare_is_allowed_once_perform_started() -> None:
    r = expect(PV_612, pv_guest() + [
        pv("ENABLE", "enable"), pv(PREPARE, "prepare_1"), pv("ENABLE", "enable_2"),
        thread("t", [pv(PERFORM, "perform_1")]),
        {"op": "wait_step", "step": "perform_1", "name": "started"},
        pv(PREPARE, "prepare_2"), {"op": "join", "thread": "t", "name": "j"}, pv(PERFORM, "perform_2")])
    assert r["perform_1"]["ret"] == 0
    assert outcome(r["prepare_2"]) == (0, None, 1, 42)
    assert r["perform_2"]["ret"] == 0


def test_fatal_signal_during_perform_queues_the_vm_and_destroy_vm_finishes_it() -> None:
    steps = normalised([fork("victim", pv_guest() + [
        pv("ENABLE", "enable"), pv(PREPARE, "prepare"), pv(PERFORM, "perform"),
        {"op": "sleep", "ms": 1000, "name": "linger"}], kill_at="perform")])
    model = Model(PV_612)
    (records,) = model.expect(steps)
    by = {r["name"]: r for r in records}
    assert by["perform"]["optional"] is True  # the kill may land before or after the ioctl returns
    assert "linger" not in by
    data = by["victim"]["data"]
    assert {k: data[k] for k in ("killed", "signal", "killed_in")} == {"killed": True, "signal": 9, "killed_in": ANY}
    # the interrupted path (0, rc=1 rrc=42) is one allowed observation of the struct the kernel copied back
    assert matches(data["kill_pv"], {"step": "perform", "entered": True, "returned": False, "rc": 1, "rrc": 42})
    events = model.events(steps)
    assert any("queued on need_cleanup" in e for e in events)
    destroy = [e for e in events if e.startswith("kvm_arch_destroy_vm(victim:vm)")]
    assert destroy and "victim:vm#pv1" in destroy[0]


def test_destroy_vm_cleans_current_and_set_aside_configurations() -> None:
    steps = normalised(pv_guest() + [pv("ENABLE", "enable"), pv(PREPARE, "prepare"), pv("ENABLE", "enable_2"),
                                     close("vcpu0"), close("vm"), close("vcpu1")])
    events = Model(PV_612).events(steps)
    destroy = [e for e in events if e.startswith("kvm_arch_destroy_vm")]
    # the VM lives until its last vCPU fd is closed; then both configurations go
    assert destroy == ["kvm_arch_destroy_vm(main:vm): destroys vCPUs, then main:vm#pv2, main:vm#pv1"]


def test_non_s390_and_missing_kvm() -> None:
    x86 = Capabilities(arch="x86_64", kernel_release="6.18.0", has_kvm=True)
    r = expect(x86, pv_guest() + [pv("ENABLE", "enable"), pv(PREPARE, "prepare")])
    assert outcome(r["enable"]) == (None, "ENOTTY", SENTINEL_RC, SENTINEL_RRC)
    assert r["vcpu0"]["ret"] is FD
    none = Capabilities(arch="s390x", kernel_release="6.12.0", has_kvm=False)
    r = expect(none, [open_kvm(), create_vm()])
    assert r["open_kvm"]["errno"] == "ENOENT"
    assert r["create_vm"]["error"] is ANY  # the agent reports the missing handle


def test_simulation_is_concrete_and_matches_the_expectation() -> None:
    steps = normalised(pv_guest() + [pv("ENABLE", "enable"), pv(PREPARE, "prepare"), pv(PERFORM, "perform"),
                                     {"op": "meminfo", "name": "mem"}])
    model = Model(PV_612)
    simulated = model.simulate(steps)
    (expected,) = model.expect(steps)
    for sim, exp in zip(simulated, expected):
        assert sim["name"] == exp["name"]
        for key in ("ret", "errno", "rc", "rrc", "data"):
            assert sim.get(key) is not ANY and sim.get(key) is not FD
            if key in exp:
                assert matches(exp[key], sim.get(key)), (exp["name"], key)
    assert {r["name"]: r for r in simulated}["mem"]["data"]["MemAvailable"] > 0


def test_matchers() -> None:
    assert matches(FD, 0) and matches(FD, 7)
    assert not matches(FD, -1) and not matches(FD, None) and not matches(FD, True)
    assert matches(ANY, None) and matches(ANY, "x")
    assert matches({"a": 1, "b": ANY}, {"a": 1, "b": 2, "c": 3})
    assert not matches({"a": 1}, {"a": 2}) and not matches({"a": 1}, {})
