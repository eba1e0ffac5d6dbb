"""Integration: cross-build the s390x KVM selftests (plus the harness's own) from Debian's linux-source-6.12,
run every program on s390x userspace emulation, and in the s390x QEMU guest.

Neither place has /dev/kvm (TCG emulates no SIE), so every program must be reported as skipped
with its own reason: most print ``1..0 # SKIP - Cannot open /dev/kvm``; ``ucontrol_test`` skips all
its subtests but exits 0, so only the totals tell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

import pytest

from harness.selftests.build import SelftestBuild, build_selftests
from harness.selftests.ktap import Outcome
from harness.selftests.runner import RunOptions, RunSummary, SelftestRunner
from harness.targets.base import CommandResult, Target, TargetFacts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NO_KVM = "Cannot open /dev/kvm: No such file or directory"
QEMU_USER_LIBS = Path("/usr/s390x-linux-gnu")


@pytest.fixture(scope="module")
def tree() -> Path:
    from harness.kernel.source import linux_source

    return linux_source()


@pytest.fixture(scope="module")
def s390x_build(tree: Path) -> SelftestBuild:
    if shutil.which("s390x-linux-gnu-gcc") is None:
        pytest.skip("s390x-linux-gnu-gcc is missing: apt-get install gcc-s390x-linux-gnu")
    return build_selftests(tree, "s390x")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = (Path(dirpath) / name).lstat()
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


def test_cross_build_lists_programs_and_second_build_is_cached(tree: Path, capsys) -> None:
    if shutil.which("s390x-linux-gnu-gcc") is None:
        pytest.skip("s390x-linux-gnu-gcc is missing: apt-get install gcc-s390x-linux-gnu")
    before = _snapshot(tree / "tools")
    first = build_selftests(tree, "s390x")
    second = build_selftests(tree, "s390x")
    with capsys.disabled():
        print(f"\ns390x selftests: first build {first.duration_s:.1f} s ({'cached' if first.cached else 'built'}), "
              f"second {second.duration_s:.2f} s ({'cached' if second.cached else 'built'}); "
              f"{len(first.programs)} programs, timeout {first.timeout_s:g} s")
    assert second.cached and second.key == first.key
    for program in ("s390x/memop", "s390x/ucontrol_test", "s390x/async_teardown_test", "kvm_create_max_vcpus"):
        assert program in first.programs
        assert first.path(program).is_file()
    assert first.timeout_s == 120.0  # tools/testing/selftests/kvm/settings in 6.12
    machine = subprocess.run(["file", "-b", str(first.path("s390x/async_teardown_test"))],
                             capture_output=True, text=True).stdout if shutil.which("file") else "IBM S/390"
    assert "S/390" in machine
    assert _snapshot(tree / "tools") == before, "the build touched the kernel tree"


class QemuUserTarget(Target):
    """Runs the s390x programs under qemu-s390x in a private mount namespace whose /dev is empty.

    That reproduces a TCG guest for the selftests (no /dev/kvm) in seconds, without booting.
    """

    kind = "qemu-user"
    spec = "qemu-user:s390x"
    arch = "s390x"

    def start(self) -> None:
        pass

    def run(self, command, timeout=60.0, *, stdin=None, on_output=None) -> CommandResult:
        if command.startswith("command -v"):
            return CommandResult(command, 1, "", "", 0.0)
        program = command.split("exec ", 1)[1].split(" 2>&1")[0]
        cwd = command.split("cd ", 1)[1].split(" &&")[0]
        inner = f"mount -t tmpfs none /dev && cd {cwd} && exec qemu-s390x -L {QEMU_USER_LIBS} {program} 2>&1"
        start = time.monotonic()
        try:
            proc = subprocess.run(["unshare", "-m", "sh", "-c", inner], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return CommandResult(command, -9, out, "", time.monotonic() - start, timed_out=True)
        return CommandResult(command, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def put(self, local, remote, mode=None) -> None:
        raise AssertionError("runs in place")

    def get(self, remote, local) -> None:
        raise AssertionError("not needed")

    def close(self) -> None:
        pass

    def facts(self) -> TargetFacts:
        return TargetFacts(target=self.spec, kind=self.kind, arch=self.arch, accelerator="tcg (qemu-user)")


def _qemu_user_reason() -> Optional[str]:
    if shutil.which("qemu-s390x") is None:
        return "qemu-s390x is missing: apt-get install qemu-user"
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return "needs root and unshare to hide /dev/kvm in a private mount namespace"
    if not QEMU_USER_LIBS.is_dir():
        return f"{QEMU_USER_LIBS} is missing: apt-get install libc6-s390x-cross"
    return None


def test_every_program_skips_with_its_own_reason_without_kvm(s390x_build: SelftestBuild, capsys) -> None:
    reason = _qemu_user_reason()
    if reason:
        pytest.skip(reason)

    class InPlace(SelftestRunner):
        @property
        def local(self) -> bool:
            return True

    # qemu-user implements no rseq(2): rseq_test fails there with ENOSYS before it looks for /dev/kvm.
    runner = InPlace(QemuUserTarget(), s390x_build, RunOptions(capture_dmesg=False, exclude=["rseq_test"]))
    runs = runner.run_all()
    with capsys.disabled():
        print(f"\nqemu-user s390x: {RunSummary.of(runs).line()}")
    assert [r.program for r in runs] == [p for p in s390x_build.programs if p != "rseq_test"]
    for run in runs:
        assert run.outcome is Outcome.SKIP, f"{run.program}: {run.outcome.value} {run.result.reason}\n{run.output}"
        assert run.result.reason and run.result.reason in run.output, "the skip reason is the program's own"
    by_name = {r.program: r for r in runs}
    for program in ("s390x/memop", "s390x/tprot", "s390x/ucontrol_test", "s390x/async_teardown_test",
                    "kvm_create_max_vcpus"):
        assert NO_KVM in by_name[program].result.reason, f"{program}: {by_name[program].result.reason}"
    ucontrol = next(r for r in runs if r.program.endswith("ucontrol_test"))
    assert ucontrol.exit_status == 0, "ucontrol_test exits 0: the skip must come from its totals"
    assert len(ucontrol.result.subtests) == 5
    assert all(s.outcome is Outcome.SKIP for s in ucontrol.result.subtests)
    ours = next(r for r in runs if r.program.endswith("async_teardown_test"))
    assert ours.exit_status == 4 and not ours.result.subtests


def _qemu_s390x_reason() -> Optional[str]:
    try:
        import harness.targets.qemu  # noqa: F401
    except ImportError as err:
        return f"the QEMU target is not available: {err}"
    if shutil.which("qemu-system-s390x") is None:
        return "qemu-system-s390x is missing: apt-get install qemu-system-misc"
    return None


def test_every_program_is_reported_in_the_s390x_guest(s390x_build: SelftestBuild, tmp_path: Path) -> None:
    """The whole chain on the real target: pytest on the marker file, the QEMU guest, JUnit."""
    reason = _qemu_s390x_reason()
    if reason:
        pytest.skip(reason)
    from harness.workflows.selftests import selftest_pytest_args

    junit = tmp_path / "junit.xml"
    args = selftest_pytest_args(junitxml=junit) + [
        "--kvm-target", "qemu:s390x", "--kvm-artifacts", str(tmp_path / "artifacts"), "-p", "no:cacheprovider"]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", *args], capture_output=True, text=True, timeout=2400)
    elapsed = time.monotonic() - started
    assert junit.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        if props.get("selftest_program") and not props.get("selftest_subtest"):
            cases[props["selftest_program"]] = (case, props)
    print(f"s390x guest: {len(cases)} programs reported in {elapsed:.0f} s")
    assert set(cases) == set(s390x_build.programs), proc.stdout[-3000:]
    for program, (case, props) in cases.items():
        skipped = case.find("skipped")
        assert skipped is not None, f"{program} was not skipped: {props}"
        assert NO_KVM in (skipped.get("message") or ""), f"{program}: {skipped.get('message')}"
    assert cases["s390x/ucontrol_test"][1].get("selftest_exit_status") == "0"
    assert proc.returncode == 0, proc.stdout[-3000:]
