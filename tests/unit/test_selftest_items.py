"""Unit tests for the selftest pytest items: a fake target replays recorded program outputs.

Each run is a real pytest session (pytester, in-process) on the kvm-selftests marker file, with
the build replaced by a fixed program list and the target by one that answers from recordings
(outputs of the real programs: s390x under TCG, x86_64 on this host's /dev/kvm).
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from harness.selftests import verdict as ktap_mod
from harness.selftests import runner as sr
from harness.selftests.build import SelftestBuild
from harness.selftests.ktap import Outcome
from harness.targets.base import CommandResult, Target, TargetFacts

junitparser = pytest.importorskip("junitparser")

pytest_plugins = ["pytester"]

NO_KVM = "1..0 # SKIP - Cannot open /dev/kvm: No such file or directory"

UCONTROL = textwrap.dedent("""\
    Random seed: 0x6b8b4567
    TAP version 13
    1..2
    # Starting 2 tests from 2 test cases.
    #  RUN           global.uc_cap_hpage ...
    1..0 # SKIP - Cannot open /dev/kvm: No such file or directory
    #            OK  global.uc_cap_hpage
    ok 1 global.uc_cap_hpage # SKIP unknown
    #  RUN           uc_kvm.uc_gprs ...
    1..0 # SKIP - Cannot open /dev/kvm: No such file or directory
    #            OK  uc_kvm.uc_gprs
    ok 2 uc_kvm.uc_gprs # SKIP unknown
    # PASSED: 2 / 2 tests passed.
    # Totals: pass:0 fail:0 xfail:0 xpass:0 skip:2 error:0
    """)

CPUID_FAIL = textwrap.dedent("""\
    Random seed: 0x6b8b4567
    ==== Test Assertion Failure ====
      x86_64/cpuid_test.c:94: e1->eax == e2->eax && e1->ebx == e2->ebx
      pid=19221 tid=19221 errno=0 - Success
         1\t0x0000000000402569: compare_cpuids at cpuid_test.c:94
         2\t0x00000000004029e0: _start at ??:?
      CPUID 0x1.0 differ: 0xb00f21:0x1020800:0x81202000:0x78bfbff vs 0xb00f21:0x1020800:0xf7f83203:0x178bfbff
    """)

HARNESS_MIXED = textwrap.dedent("""\
    TAP version 13
    1..3
    # Starting 3 tests from 1 test cases.
    #  RUN           pv.prepare_perform ...
    #            OK  pv.prepare_perform
    ok 1 pv.prepare_perform
    #  RUN           pv.small_vm ...
    # async_teardown_test.c:180:small_vm:Expected -1 (-1) == res.ret (0)
    # small_vm: Test terminated by assertion
    #          FAIL  pv.small_vm
    not ok 2 pv.small_vm
    #  RUN           pv.limit_above_2g ...
    #            OK  pv.limit_above_2g
    ok 3 pv.limit_above_2g
    # FAILED: 2 / 3 tests passed.
    # Totals: pass:2 fail:1 xfail:0 xpass:0 skip:0 error:0
    """)

RECORDED = {
    "s390x/memop": {"exit": 4, "output": "Random seed: 0x6b8b4567\n" + NO_KVM + "\n"},
    "s390x/tprot": {"exit": 4, "output": "Random seed: 0x6b8b4567\nTAP version 13\n1..5\n" + NO_KVM + "\n"},
    "s390x/ucontrol_test": {"exit": 0, "output": UCONTROL},
    "x86_64/cpuid_test": {"exit": 254, "output": CPUID_FAIL},
    "kvm_create_max_vcpus": {"exit": 0, "output": "TAP version 13\n1..1\nok 1 create max vcpus\n"},
    "s390x/async_teardown_test": {"exit": 1, "output": HARNESS_MIXED},
    "rseq_test": {"exit": -11, "output": "Random seed: 0x6b8b4567\nstarting migration loop\n"},
    "dirty_log_test": {"exit": -9, "timed_out": True,
                       "output": "Test iterations: 32, interval: 10 (ms)\nTesting guest mode: PA-bits:52\n"},
}

CONFTEST = '''
import json
from pathlib import Path

import pytest
from harness.session import holder_of

from harness.selftests import pytest_items
from harness.selftests.build import SelftestBuild
from harness.targets.base import CommandResult, Target, TargetFacts

RECORDED = json.loads(Path(__file__).with_name("recorded.json").read_text())
DMESG = Path(__file__).with_name("dmesg.txt")


class FakeTarget(Target):
    kind = "qemu"
    spec = "qemu:s390x"
    arch = "s390x"

    def __init__(self):
        self.commands = []
        self.puts = []

    def start(self):
        pass

    def run(self, command, timeout=60.0, *, stdin=None, on_output=None):
        self.commands.append([command, timeout])
        for name, rec in RECORDED.items():
            if command.endswith(f"./{name} 2>&1"):
                return CommandResult(command, rec["exit"], rec["output"], "", 0.01, rec.get("timed_out", False))
        return CommandResult(command, 1, "", "", 0.0)

    def put(self, local, remote, mode=None):
        self.puts.append(remote)

    def workdir(self):
        return "/tmp/kvmh.Ab12Cd"  # the target's private working directory

    def get(self, remote, local):
        raise NotImplementedError

    def close(self):
        Path(__file__).with_name("commands.json").write_text(json.dumps(
            {"commands": self.commands, "puts": self.puts}))

    def facts(self):
        return TargetFacts(target=self.spec, kind=self.kind, arch=self.arch, accelerator="tcg")

    def dmesg_cursor(self):
        return 1

    def dmesg_since(self, cursor):
        return DMESG.read_text() if DMESG.exists() else ""


_saved = pytest_items.build_selftests


def pytest_sessionstart(session):
    holder_of(session.config).target = FakeTarget()
    programs = tuple(RECORDED)
    build = SelftestBuild(arch="s390x", tree=Path("/nonexistent"), out_dir=Path("/nonexistent/out"),
                          programs=programs, timeout_s=120.0, key="fakekey", compiler="gcc", tree_id="t")
    pytest_items.build_selftests = lambda tree, arch: build


def pytest_unconfigure(config):
    pytest_items.build_selftests = _saved
'''


@pytest.fixture
def suite(pytester):
    pytester.makeconftest(CONFTEST)
    (pytester.path / "recorded.json").write_text(json.dumps(RECORDED))
    marker = pytester.path / "kvm_selftests.kvmh"
    marker.write_text("# test marker\nsuite = kvm-selftests\n")
    return pytester


def _run(pytester, *args):
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_inprocess("kvm_selftests.kvmh", "--kvm-target", "qemu:s390x",
                                          "--kvm-tree", str(pytester.path), f"--junitxml={junit}",
                                          "-p", "no:cacheprovider", "-rsxX", *args)
    cases = {}
    for suite_ in junitparser.JUnitXml.fromfile(str(junit)):
        for case in suite_:
            cases[(case.classname, case.name)] = case
    return result, cases


def _case(cases, program, subtest=None):
    for (classname, name), case in cases.items():
        if subtest is None and name == program and classname.endswith("kvmh"):
            return case
        if subtest is not None and name == subtest and classname.endswith(program):
            return case
    raise KeyError((program, subtest, list(cases)))


def _kind(case):
    results = list(case.result)
    if not results:
        return "passed", ""
    r = results[0]
    tag = r._tag
    if tag == "skipped" and (r.type or "") == "pytest.xfail":
        return "xfailed", r.message or ""
    return tag, r.message or ""


def test_every_program_and_subtest_is_reported(suite):
    result, cases = _run(suite)
    # programs
    assert _kind(_case(cases, "s390x/memop")) == ("skipped", "Cannot open /dev/kvm: No such file or directory")
    kind, message = _kind(_case(cases, "s390x/tprot"))  # plan of 5, then the skip
    assert kind == "skipped" and message.endswith("Cannot open /dev/kvm: No such file or directory")
    kind, message = _kind(_case(cases, "s390x/ucontrol_test"))
    assert kind == "skipped", "ucontrol_test exits 0 but skipped everything: the totals decide"
    assert message == "Cannot open /dev/kvm: No such file or directory", "not the harness's 'unknown'"
    kind, message = _kind(_case(cases, "x86_64/cpuid_test"))
    assert kind == "failure"
    assert "CPUID 0x1.0 differ" in message and "cpuid_test.c:94" in message
    assert _kind(_case(cases, "kvm_create_max_vcpus"))[0] == "passed"
    kind, message = _kind(_case(cases, "rseq_test"))
    assert kind == "failure" and "SIGSEGV" in message
    kind, message = _kind(_case(cases, "dirty_log_test"))
    assert kind == "failure" and "timeout after 480 s" in message  # 120 s settings x 4 under TCG
    timeout_text = _case(cases, "dirty_log_test").result[0].text
    assert "Testing guest mode: PA-bits:52" in timeout_text
    # subtests, each with its own verdict and the program's own skip reason
    assert _kind(_case(cases, "s390x/ucontrol_test", "uc_kvm.uc_gprs")) == \
        ("skipped", "Cannot open /dev/kvm: No such file or directory")
    assert _kind(_case(cases, "s390x/async_teardown_test", "pv.prepare_perform"))[0] == "passed"
    kind, message = _kind(_case(cases, "s390x/async_teardown_test", "pv.small_vm"))
    assert kind == "failure" and "Expected -1 (-1) == res.ret (0)" in message
    assert _kind(_case(cases, "s390x/tprot", "#1"))[0] == "skipped"
    result.assert_outcomes(passed=4, failed=5, skipped=10)
    columns = [int(m) for m in re.findall(r"\[ *(\d+)%\]", result.stdout.str())]
    assert columns and max(columns) == 100, f"progress column counts subtests as items: {columns}"


def test_properties_and_deploy(suite):
    _, cases = _run(suite, "-k", "memop or cpuid")
    props = {p.get("name"): p.get("value") for p in _case(cases, "x86_64/cpuid_test")._elem.iter("property")}
    assert props["selftest_program"] == "x86_64/cpuid_test"
    assert props["selftest_outcome"] == "fail"
    assert props["selftest_exit_status"] == "254"
    assert props["selftest_timeout_s"] == "480"
    import xml.etree.ElementTree as ET

    suite_props = {p.get("name"): p.get("value")
                   for p in ET.parse(suite.path / "junit.xml").getroot().find("testsuite").find("properties")}
    assert suite_props["target"] == "qemu:s390x" and suite_props["accelerator"] == "tcg"
    assert suite_props["selftest_build_key"] == "fakekey"
    record = json.loads((suite.path / "commands.json").read_text())
    assert sorted(record["puts"]) == ["/tmp/kvmh.Ab12Cd/selftests/fakekey/s390x/memop",
                                      "/tmp/kvmh.Ab12Cd/selftests/fakekey/x86_64/cpuid_test"]
    ran = [c for c, _ in record["commands"] if "exec" in c]
    assert ran == ["cd /tmp/kvmh.Ab12Cd/selftests/fakekey && exec ./s390x/memop 2>&1",
                   "cd /tmp/kvmh.Ab12Cd/selftests/fakekey && exec ./x86_64/cpuid_test 2>&1"]


def test_keyword_selects_one_program(suite):
    result, cases = _run(suite, "-k", "ucontrol")
    assert {name for (_, name) in cases} == {"s390x/ucontrol_test", "global.uc_cap_hpage", "uc_kvm.uc_gprs"}


def test_include_exclude_and_budget(suite):
    _, cases = _run(suite, "--selftest-include", "s390x/*", "--selftest-exclude", "tprot")
    programs = {name for (classname, name) in cases if classname.endswith("kvmh")}
    assert programs == {"s390x/memop", "s390x/ucontrol_test", "s390x/async_teardown_test"}
    _, cases = _run(suite, "--selftest-budget", "0", "-k", "memop")
    kind, message = _kind(_case(cases, "s390x/memop"))
    assert kind == "skipped" and "budget" in message


def test_expectations_turn_known_failures_into_xfail(suite):
    expect = suite.path / "host.expect"
    expect.write_text(textwrap.dedent('''\
        x86_64/cpuid_test fail "CPUID differs under this hypervisor"
        rseq_test fail "was failing"
        kvm_create_max_vcpus fail "was failing, now fixed"
        s390x/memop pass "ran on a PV host"
        "s390x/async_teardown_test::pv.small_vm" fail "segment ASCE fix missing"
        '''))
    result, cases = _run(suite, "--kvm-expectations", str(expect))
    kind, message = _kind(_case(cases, "x86_64/cpuid_test"))
    assert kind == "xfailed" and "CPUID differs under this hypervisor" in message
    kind, message = _kind(_case(cases, "rseq_test"))
    assert kind == "failure" and "never expected" in message, "a crash is never hidden"
    kind, message = _kind(_case(cases, "kvm_create_max_vcpus"))
    assert kind == "failure" and "XPASS(strict)" in message
    kind, message = _kind(_case(cases, "s390x/memop"))
    assert kind == "failure" and "expected pass" in message
    assert _kind(_case(cases, "s390x/async_teardown_test", "pv.small_vm"))[0] == "xfailed"
    kind, message = _kind(_case(cases, "s390x/async_teardown_test"))
    assert kind == "xfailed" and "pv.small_vm" in message
    assert _kind(_case(cases, "dirty_log_test"))[0] == "failure", "no line: judged as usual"


def test_write_expectations_from_a_run(suite):
    out = suite.path / "written.expect"
    _run(suite, "--kvm-write-expectations", str(out))
    text = out.read_text()
    assert 'x86_64/cpuid_test' in text and "CPUID 0x1.0 differ" not in text.split("x86_64/cpuid_test")[0]
    from harness.selftests.expectations import Expectations

    exp = Expectations.load(out)
    assert exp.get("x86_64/cpuid_test").outcome == "fail"
    assert exp.get("kvm_create_max_vcpus").outcome == "pass"
    assert exp.get("s390x/memop").outcome == "skip"
    assert exp.get("dirty_log_test").outcome == "timeout"
    assert exp.get("rseq_test") is None, "crashes are never written as expected"
    assert exp.get("s390x/async_teardown_test", "pv.small_vm").outcome == "fail"
    # a second run with the written file reports no change
    result, cases = _run(suite, "--kvm-expectations", str(out), "-k", "not rseq")
    failed = [name for (c, name), case in cases.items() if _kind(case)[0] == "failure"]
    assert failed == []


def test_splat_fails_a_program_even_when_its_failure_is_expected(suite):
    (suite.path / "dmesg.txt").write_text(textwrap.dedent("""\
        ------------[ cut here ]------------
        protvirt destroy vm failed
        WARNING: CPU: 0 PID: 123 at arch/s390/kvm/pv.c:318 kvm_s390_pv_deinit_vm+0x1ae/0x1d0 [kvm]
        Call Trace:
         [<000003ff8040f1ce>] kvm_s390_pv_deinit_vm+0x1ae/0x1d0 [kvm]
         [<000003ff8040f2ea>] kvm_s390_pv_deinit_cleanup_all+0x9a/0x1b0 [kvm]
         [<000003ff803f7a3c>] kvm_arch_vm_ioctl+0x2cc/0x7d0 [kvm]
        ---[ end trace 0000000000000000 ]---
        """))
    expect = suite.path / "host.expect"
    expect.write_text('x86_64/cpuid_test fail "known"\n')
    _, cases = _run(suite, "-k", "cpuid", "--kvm-expectations", str(expect))
    kind, message = _kind(_case(cases, "x86_64/cpuid_test"))
    assert kind == "failure" and "splat" in message


# -- the runner on its own ------------------------------------------------------------------------

class _ReplayTarget(Target):
    kind = "ssh"
    spec = "ssh://root@host:22"
    arch = "s390x"

    def __init__(self, accelerator: str = "kvm", stdbuf: bool = True) -> None:
        self.accelerator = accelerator
        self.stdbuf = stdbuf
        self.timeouts: list[float] = []

    def start(self) -> None:
        pass

    def run(self, command, timeout=60.0, *, stdin=None, on_output=None):
        if command.startswith("command -v"):
            return CommandResult(command, 0 if self.stdbuf else 1, "", "", 0.0)
        self.timeouts.append(timeout)
        return CommandResult(command, 0, "TAP version 13\n1..1\nok 1 one\n", "", 2.0)

    def put(self, local, remote, mode=None):
        pass

    def get(self, remote, local):
        pass

    def workdir(self) -> str:
        return "/tmp/kvmh.x"

    def close(self) -> None:
        pass

    def facts(self) -> TargetFacts:
        return TargetFacts(target=self.spec, kind=self.kind, arch=self.arch, accelerator=self.accelerator)

    def dmesg_cursor(self) -> int:
        return 0

    def dmesg_since(self, cursor: int) -> str:
        return "kvm: some message"


def _build(programs=("a", "b/c")) -> SelftestBuild:
    return SelftestBuild(arch="s390x", tree=Path("/t"), out_dir=Path("/t/out"), programs=tuple(programs),
                         timeout_s=120.0, key="k", compiler="gcc", tree_id="t")


def test_select_programs_globs_full_and_base_names():
    progs = ["s390x/memop", "s390x/tprot", "rseq_test", "x86_64/cpuid_test"]
    assert sr.select_programs(progs) == progs
    assert sr.select_programs(progs, include=["memop"]) == ["s390x/memop"]
    assert sr.select_programs(progs, include=["s390x/*"], exclude=["tprot"]) == ["s390x/memop"]
    assert sr.select_programs(progs, exclude=["*_test"]) == ["s390x/memop", "s390x/tprot"]


def test_timeout_factor_follows_the_accelerator():
    tcg = sr.SelftestRunner(_ReplayTarget("tcg"), _build())
    assert tcg.program_timeout() == 120.0 * sr.TCG_TIMEOUT_FACTOR
    kvm = sr.SelftestRunner(_ReplayTarget("kvm"), _build())
    assert kvm.program_timeout() == 120.0
    explicit = sr.SelftestRunner(_ReplayTarget("tcg"), _build(), sr.RunOptions(timeout_factor=0.5))
    assert explicit.program_timeout() == 60.0


def test_runner_command_dmesg_and_budget():
    clock = iter([0.0, 2.0, 10.0, 12.0, 20.0, 22.0]).__next__
    target = _ReplayTarget(stdbuf=True)
    runner = sr.SelftestRunner(target, _build(), sr.RunOptions(budget_s=3.0), clock=clock)
    first = runner.run("b/c")
    assert first.outcome is Outcome.PASS
    assert first.command.startswith("cd /tmp/kvmh.x/selftests/k && exec python3 -c ")
    assert first.command.endswith(" 120 stdbuf -oL -eL ./b/c 2>&1")
    assert first.dmesg == "kvm: some message"
    assert first.duration_s == 2.0
    second = runner.run("a")
    assert second.outcome is Outcome.PASS
    third = runner.run("a")
    assert third.harness_skip and third.outcome is Outcome.SKIP and "budget of 3 s" in third.result.reason
    assert target.timeouts == [120.0 + sr.KILL_GRACE_S] * 2
    summary = sr.RunSummary.of([first, second, third])
    assert summary.counts == {"pass": 2, "harness-skip": 1}
    assert summary.line() == "1 harness-skip, 2 pass in 4.0 s"
    with pytest.raises(KeyError):
        runner.run("not-built")


def test_unknown_harness_skips_get_the_printed_reason():
    from harness.selftests.verdict import program_result

    result = program_result("s390x/ucontrol_test", UCONTROL, 0)
    assert result.outcome is Outcome.SKIP
    ktap_mod.explain_unknown_skips(result)
    assert result.reason == "Cannot open /dev/kvm: No such file or directory"
    assert [s.reason for s in result.subtests] == ["Cannot open /dev/kvm: No such file or directory"] * 2
    plain = program_result("p", "TAP version 13\n1..1\nok 1 a # SKIP unknown\n", 0)
    ktap_mod.explain_unknown_skips(plain)
    assert plain.subtests[0].reason == "unknown", "nothing better was printed"


def _state_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_timeout_kills_children_that_left_the_process_group(tmp_path):
    """kselftest_harness puts each test in its own process group: the supervisor kills the whole session."""
    import shutil
    import sys

    from harness.targets.local import LocalTarget

    if shutil.which("python3") is None:
        pytest.skip("python3 is not on PATH")
    prog = tmp_path / "prog"
    prog.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "TAP version 13"
        echo "1..1"
        {sys.executable} -c 'import os, time; os.setpgrp(); print("child", os.getpid(), flush=True); time.sleep(600)' &
        sleep 600
        """))
    prog.chmod(0o755)
    build = SelftestBuild(arch="x86_64", tree=tmp_path, out_dir=tmp_path, programs=("prog",), timeout_s=1.0,
                          key="k", compiler="gcc", tree_id="t")
    run = sr.SelftestRunner(LocalTarget(), build, sr.RunOptions(capture_dmesg=False)).run("prog")
    assert run.outcome is Outcome.TIMEOUT
    assert run.result.reason.startswith("timeout after 1 s")
    assert sr.TIMEOUT_MARK not in run.output
    child = int(next(line for line in run.output.splitlines() if line.startswith("child")).split()[1])
    assert _state_of(child) in ("gone", "Z"), "the test child outlived its program's timeout"
    assert run.duration_s < 20


TSC_FAIL = textwrap.dedent("""\
    Random seed: 0x6b8b4567
    TAP version 13
    1..3
    ==== Test Assertion Failure ====
      x86_64/tsc_msrs_test.c:106: rounded_host_rdmsr(MSR_IA32_TSC) == val
      pid=4242 tid=4242 errno=4 - Interrupted system call
      0xd9b00000000 != 0 (rounded_host_rdmsr(MSR_IA32_TSC) != val)
    """)


def test_subtests_a_known_failure_never_let_run_are_part_of_it(suite):
    recorded = {"x86_64/tsc_msrs_test": {"exit": 254, "output": TSC_FAIL}}
    (suite.path / "recorded.json").write_text(json.dumps(recorded))
    expect = suite.path / "host.expect"
    expect.write_text('x86_64/tsc_msrs_test fail "TSC differs under this hypervisor"\n')
    _, cases = _run(suite)
    assert [_kind(_case(cases, "x86_64/tsc_msrs_test", f"#{n}"))[0] for n in (2, 3)] == ["failure"] * 2, \
        "without expectations, planned tests that never ran are failures"
    result, cases = _run(suite, "--kvm-expectations", str(expect))
    assert _kind(_case(cases, "x86_64/tsc_msrs_test"))[0] == "xfailed"
    for n in (2, 3):
        kind, message = _kind(_case(cases, "x86_64/tsc_msrs_test", f"#{n}"))
        assert kind == "xfailed" and "after a known failure" in message
    assert result.ret == 0
