"""JUnit comparison and the `kvmh compare` / `kvmh splats` entry points."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from junitparser import JUnitXml, TestSuite

from harness.results.compare import compare_files, exit_status, format_comparison
from harness.workflows.compare import main, splats_main
from harness.results.junit_read import SESSION, JUnitError, read_junit, splat_key

DATA = Path(__file__).resolve().parent.parent / "data"
JUNIT = DATA / "junit"
MOD = "tests.scenarios.test_async_destroy::"
KVM = "tests.selftests.test_kvm::"
PROTVIRT = "protvirt:kvm_s390_pv_deinit_vm|kvm_s390_pv_deinit_cleanup_all|kvm_arch_destroy_vm"


@pytest.mark.parametrize("name", ["base.xml", "new.xml", "single-suite-root.xml"])
def test_data_files_are_valid_junit_and_read_completely(name: str) -> None:
    xml = JUnitXml.fromfile(str(JUNIT / name))
    suites = [xml] if isinstance(xml, TestSuite) else list(xml)
    expected = sum(1 for suite in suites for _ in suite)
    assert len(read_junit(JUNIT / name).cases) == expected


def test_read_outcomes_messages_and_properties() -> None:
    report = read_junit(JUNIT / "base.xml")
    assert report.cases[KVM + "test_selftest[memop]"].outcome == "pass"
    tprot = report.cases[KVM + "test_selftest[tprot]"]
    assert tprot.outcome == "skip" and tprot.message == "Cannot open /dev/kvm: No such file or directory"
    assert report.cases[KVM + "test_selftest[ucontrol_test]"].outcome == "fail"
    assert report.cases[MOD + "test_prepare_small_vm_is_einval"].outcome == "error"
    assert report.cases[MOD + "test_prepare_twice"].outcome == "xfail"
    assert report.cases[MOD + "test_create_destroy_cycles"].splats == [
        "lockdep: lockdep:kvm_s390_pv_set_aside|kvm_s390_handle_pv|kvm_arch_vm_ioctl"
    ]
    assert report.suite_properties["kernel_release"] == ["6.12.38+deb13-s390x"]
    assert list(report.splat_locations()) == [
        "warning:kvm_s390_vcpu_setup|kvm_arch_vcpu_create|kvm_vm_ioctl_create_vcpu",
        "lockdep:kvm_s390_pv_set_aside|kvm_s390_handle_pv|kvm_arch_vm_ioctl",
    ]


def test_single_testsuite_root() -> None:
    report = read_junit(JUNIT / "single-suite-root.xml")
    assert {k: v.outcome for k, v in report.cases.items()} == {"t::a": "pass", "t::b": "fail"}


def test_splat_key() -> None:
    assert splat_key("warning: warning:a|b") == "warning:a|b"
    assert splat_key("  warning:a|b ") == "warning:a|b"


def test_comparison() -> None:
    comp = compare_files(JUNIT / "base.xml", JUNIT / "new.xml")
    assert [(c.test, c.base, c.new) for c in comp.regressions] == [
        (MOD + "test_disable_after_prepare", "pass", "error"),
        (KVM + "test_selftest[memop]", "pass", "fail"),
        (KVM + "test_selftest[tprot]", "skip", "fail"),
    ]
    assert [(c.test, c.base, c.new) for c in comp.fixes] == [(KVM + "test_selftest[ucontrol_test]", "fail", "pass")]
    assert [c.test for c in comp.still_failing] == [MOD + "test_prepare_small_vm_is_einval"]
    assert [(c.test, c.new) for c in comp.new_tests] == [(MOD + "test_prepare_with_ap_queues", "pass")]
    assert [(c.test, c.base) for c in comp.vanished] == [(MOD + "test_old_interface", "pass")]
    assert [(s.fingerprint, s.where) for s in comp.new_splats] == [
        (PROTVIRT, (SESSION, MOD + "test_perform_fatal_signal"))
    ]
    # a splat present in both runs is not new; one only in base is reported as gone
    assert [s.fingerprint for s in comp.gone_splats] == [
        "warning:kvm_s390_vcpu_setup|kvm_arch_vcpu_create|kvm_vm_ioctl_create_vcpu"
    ]
    assert exit_status(comp) == 1


def test_negative_same_file_has_nothing_to_report() -> None:
    comp = compare_files(JUNIT / "new.xml", JUNIT / "new.xml")
    assert not (comp.regressions or comp.fixes or comp.new_tests or comp.vanished or comp.new_splats)
    assert exit_status(comp) == 0


def test_reverse_direction_turns_regressions_into_fixes() -> None:
    comp = compare_files(JUNIT / "new.xml", JUNIT / "base.xml")
    assert [c.test for c in comp.fixes] == [MOD + "test_disable_after_prepare", KVM + "test_selftest[memop]"]
    # fail -> skip is not a fix, and skip -> fail went the other way
    assert KVM + "test_selftest[tprot]" not in [c.test for c in comp.fixes + comp.regressions]
    assert [c.test for c in comp.regressions] == [KVM + "test_selftest[ucontrol_test]"]
    assert [s.fingerprint for s in comp.new_splats] == [
        "warning:kvm_s390_vcpu_setup|kvm_arch_vcpu_create|kvm_vm_ioctl_create_vcpu"
    ]


def test_new_splat_alone_fails_the_comparison(tmp_path: Path) -> None:
    base = tmp_path / "b.xml"
    new = tmp_path / "n.xml"
    base.write_text('<testsuites><testsuite name="p"><testcase classname="c" name="t"/></testsuite></testsuites>')
    new.write_text(
        '<testsuites><testsuite name="p"><testcase classname="c" name="t"><properties>'
        '<property name="splat" value="warning: warning:f|g|h"/></properties></testcase></testsuite></testsuites>'
    )
    comp = compare_files(base, new)
    assert comp.regressions == [] and [s.fingerprint for s in comp.new_splats] == ["warning:f|g|h"]
    assert exit_status(comp) == 1


def test_format_comparison_puts_regressions_first() -> None:
    text = format_comparison(compare_files(JUNIT / "base.xml", JUNIT / "new.xml"))
    lines = text.splitlines()
    assert lines[0].startswith("base: ") and "(9 tests)" in lines[0]
    assert text.index("REGRESSIONS (3):") < text.index("NEW SPLATS (1):") < text.index("Fixes (1):")
    assert f"  {KVM}test_selftest[memop]: pass -> fail: ==== Test Assertion Failure ====" in lines
    assert f"  {PROTVIRT}  (in {SESSION}, {MOD}test_perform_fatal_signal)" in lines
    assert lines[-1] == (
        "summary: 3 regressions, 1 new splats, 1 fixes, 1 still failing, 1 new tests, 1 vanished"
    )


def test_main_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(JUNIT / "base.xml"), str(JUNIT / "new.xml")]) == 1
    assert "REGRESSIONS" in capsys.readouterr().out
    assert main([str(JUNIT / "new.xml"), str(JUNIT / "new.xml")]) == 0


@pytest.mark.parametrize(
    "name, words",
    [
        ("missing.xml", "no such file"),
        ("not-junit.xml", "not a JUnit report (root element <html>)"),
        ("truncated.xml", "is not valid XML"),
    ],
)
def test_main_bad_input_is_exit_3_with_one_line(name: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(JUNIT / "base.xml"), str(JUNIT / name)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and err.startswith("kvmh compare: ")
    with pytest.raises(JUnitError):
        read_junit(JUNIT / name)


def test_main_usage_error_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(JUNIT / "base.xml")]) == 3
    assert main(["--help"]) == 0
    capsys.readouterr()


def test_main_directory_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), str(JUNIT / "new.xml")]) == 3
    assert "directory" in capsys.readouterr().err


def test_splats_main_lists_each_splat(capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "splats" / "real-oops-s390-worker-thread-panic.txt"
    assert splats_main([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("1. oops: Unable to handle kernel pointer dereference")
    assert out[1] == "   fingerprint: oops:worker_thread|kthread|__ret_from_fork"
    assert out[2].startswith("2. panic: Kernel panic - not syncing")
    assert out[-1].startswith("2 splat(s) found")


def test_splats_main_clean_log_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "dmesg.txt"
    shutil.copy(DATA / "splats" / "synthetic-clean-boot-s390x.txt", clean)
    assert splats_main([str(clean)]) == 0
    assert capsys.readouterr().out.startswith("no splats found")
    assert splats_main([str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such file" in err
