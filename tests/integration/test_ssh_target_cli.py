"""The ``ssh://`` target through the CLI, against the QEMU s390x guest playing a remote host."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def ssh_args(qemu_guest, tmp_path: Path) -> list[str]:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(qemu_guest.image.known_hosts_line("127.0.0.1", qemu_guest.port) + "\n")
    return ["--target", f"ssh://root@127.0.0.1:{qemu_guest.port}", "--ssh-key", str(qemu_guest.image.ssh_key),
            "--known-hosts", str(known_hosts)]


def kvmh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def test_boot_run_over_ssh(ssh_args: list[str], tmp_path: Path) -> None:
    result = kvmh("boot", *ssh_args, "--run", "uname -m; exit 5", cwd=tmp_path)
    assert result.returncode == 5, result.stderr
    assert result.stdout.strip() == "s390x"


def test_shipped_suites_over_ssh_skip_pv_with_the_reason(ssh_args: list[str], tmp_path: Path) -> None:
    junit = tmp_path / "suites.xml"
    result = kvmh("test", *ssh_args, "-k", "prepare_perform or cap_async", "--junitxml", str(junit), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    skipped = [c.find("skipped") for c in ET.parse(junit).getroot().iter("testcase")]
    assert skipped and all(s is not None and "no /dev/kvm on this target" in s.get("message", "") for s in skipped)


def test_selftests_over_ssh(ssh_args: list[str], tmp_path: Path) -> None:
    junit = tmp_path / "selftests.xml"
    result = kvmh("selftests", *ssh_args, "--include", "s390x/tprot", "--junitxml", str(junit), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert any("tprot" in (c.get("name") or "") for c in cases)
    assert all("Cannot open /dev/kvm" in c.find("skipped").get("message", "") for c in cases)


def test_unknown_host_key_is_refused_with_its_fingerprint(qemu_guest, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    result = kvmh("boot", "--target", f"ssh://root@127.0.0.1:{qemu_guest.port}", "--ssh-key",
                  str(qemu_guest.image.ssh_key), "--known-hosts", str(empty), "--run", "true", cwd=tmp_path)
    assert result.returncode == 2
    assert "SHA256:" in result.stderr and "--accept-new-host-key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_nested_guest_on_a_host_without_kvm_is_refused_with_the_reason(ssh_args: list[str], tmp_path: Path) -> None:
    args = list(ssh_args)
    args[1] = args[1] + "/qemu"
    result = kvmh("boot", *args, "--run", "true", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "cannot run a nested guest on" in result.stderr
    assert "/dev/kvm" in result.stderr or "qemu-system-s390x" in result.stderr, result.stderr
