"""The CLI's parsing, exit codes and target specs."""

from __future__ import annotations

import pytest

from harness import cli
from harness.errors import EXIT_INFRA, EXIT_OK, EXIT_TEST_FAILED, EXIT_USAGE, UsageError
from harness.workflows.run import exit_status_for, new_artifacts_dir
from harness.targets.spec import parse_target_spec


@pytest.mark.parametrize(
    ("text", "kind", "arch", "host", "port"),
    [
        ("qemu:s390x", "qemu", "s390x", "", 22),
        ("qemu:x86_64", "qemu", "x86_64", "", 22),
        ("qemu:amd64", "qemu", "x86_64", "", 22),
        ("local", "local", "", "", 22),
        ("model", "model", "", "", 22),
        ("ssh://root@127.0.0.1:2222", "ssh", "", "127.0.0.1", 2222),
        ("ssh://lpar.example", "ssh", "", "lpar.example", 22),
    ],
)
def test_target_specs_parse(text: str, kind: str, arch: str, host: str, port: int) -> None:
    spec = parse_target_spec(text)
    assert (spec.kind, spec.arch, spec.host, spec.port) == (kind, arch, host, port)


@pytest.mark.parametrize("text", ["qemu:arm64", "kvm", "ssh://", "ssh://h:notaport"])
def test_bad_target_spec_names_the_accepted_forms(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_target_spec(text)
    assert "qemu:s390x" in str(err.value) and "\n" not in str(err.value)


def test_usage_error_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["no-such-command"])
    assert exited.value.code == EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_bad_target_on_the_command_line_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["boot", "--target", "qemu:mips", "--run", "true"])
    assert status == EXIT_USAGE
    assert "unknown QEMU architecture 'mips'" in capsys.readouterr().err


def test_pytest_status_maps_to_kvmh_status() -> None:
    assert exit_status_for(int(pytest.ExitCode.OK), None) == EXIT_OK
    assert exit_status_for(int(pytest.ExitCode.TESTS_FAILED), None) == EXIT_TEST_FAILED
    assert exit_status_for(int(pytest.ExitCode.USAGE_ERROR), None) == EXIT_USAGE
    assert exit_status_for(int(pytest.ExitCode.INTERNAL_ERROR), None) == EXIT_INFRA
    assert exit_status_for(int(pytest.ExitCode.NO_TESTS_COLLECTED), None) == EXIT_TEST_FAILED


def test_artifacts_dirs_are_fresh(tmp_path) -> None:
    first = new_artifacts_dir(tmp_path, "qemu:s390x")
    second = new_artifacts_dir(tmp_path, "qemu:s390x")
    assert first != second and first.is_dir() and second.is_dir()
    assert ":" not in first.name


def test_doctor_names_a_package_for_each_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.workflows import doctor

    monkeypatch.setattr(doctor.shutil, "which", lambda name: None if name == "qemu-system-s390x" else "/bin/x")
    lines: list[str] = []
    checks = tuple(c for c in doctor.CHECKS if c.name == "qemu-system-s390x")
    monkeypatch.setattr(doctor, "CHECKS", checks)
    assert doctor.run_doctor(lines.append) == 1
    assert any("MISSING" in line and "qemu-system-misc" in line for line in lines)


def test_a_series_that_cannot_be_read_leaves_a_junit_file_naming_the_stage(tmp_path, capsys) -> None:
    import xml.etree.ElementTree as ET

    empty = tmp_path / "empty.mbox"
    empty.write_text("From nobody Mon Sep 17 00:00:00 2001\nSubject: just words\n\nno diff here\n")
    tree = tmp_path / "tree"
    for name in ("Makefile", "Kconfig", "arch/.keep", "include/uapi/linux/kvm.h"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("")
    junit = tmp_path / "out.xml"
    status = cli.main(["run", "--tree", str(tree), "--series", str(empty), "--artifacts", str(tmp_path / "a"),
                       "--junitxml", str(junit)])
    assert status == EXIT_INFRA
    assert "contains no patches" in capsys.readouterr().err
    case = ET.parse(junit).getroot().find(".//testcase")
    assert case.get("name") == "kernel build" and case.find("error") is not None
    assert "contains no patches" in case.find("error").get("message")


def test_dry_run_of_a_non_qemu_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["boot", "--dry-run", "--target", "local"]) == EXIT_USAGE
    assert "boots no QEMU" in capsys.readouterr().err


def test_nested_qemu_spec_names_the_host_and_arch() -> None:
    spec = parse_target_spec("ssh://root@lpar:2222/qemu")
    assert (spec.kind, spec.host, spec.port, spec.arch) == ("nested", "lpar", 2222, "s390x")
    assert parse_target_spec("ssh://root@lpar/qemu:x86_64").arch == "x86_64"
    with pytest.raises(UsageError):
        parse_target_spec("ssh://root@lpar/bogus")
