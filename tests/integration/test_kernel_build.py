"""End to end: a two-patch series on Debian's linux-source, built for s390x, booted in QEMU, checked over SSH.

The series is made here with git: patch 1 adds a boot banner (a late_initcall with pr_info), patch 2 a
read-only parameter of built-in code, visible as /sys/module/kvmh_test/parameters/answer. It is exported
as an mbox and handed to the builder, which imports the (non-git) Debian tree into a git repository in
the cache and applies the series with ``git am -3`` on a worktree there.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.workflows.build import build
from harness.kernel.config import requested_options

pytestmark = [pytest.mark.integration, pytest.mark.slow]
log = logging.getLogger(__name__)

BANNER = "kvmh-test: series banner from the kernel build test"
PATCH1 = f"""
static int __init kvmh_test_banner(void)
{{
	pr_info("{BANNER}\\n");
	return 0;
}}
late_initcall(kvmh_test_banner);
"""
PATCH2 = """
static int kvmh_test_answer = 42;
#undef MODULE_PARAM_PREFIX
#define MODULE_PARAM_PREFIX "kvmh_test."
module_param_named(answer, kvmh_test_answer, int, 0444);
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=Kernel Dev", "-c", "user.email=dev@example.org",
                           *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def linux_tree() -> Path:
    if shutil.which("s390x-linux-gnu-gcc") is None:
        pytest.skip("s390x-linux-gnu-gcc missing: install the Debian package gcc-s390x-linux-gnu")
    from harness.kernel.source import linux_source

    try:
        return linux_source()
    except HarnessError as err:
        pytest.skip(f"Debian linux-source not available: {err}")


def make_series(tree: Path, work: Path) -> Path:
    """Two commits on a throwaway git repository holding the file they touch, exported as an mbox."""
    repo = work / "series-repo"
    (repo / "init").mkdir(parents=True)
    shutil.copyfile(tree / "init/main.c", repo / "init/main.c")
    git(repo, "init", "-q")
    git(repo, "add", "init/main.c")
    git(repo, "commit", "-qm", "base")
    main_c = repo / "init/main.c"
    main_c.write_text(main_c.read_text() + PATCH1)
    git(repo, "commit", "-qam", "init: print a banner late at boot\n\nSo the test can find it in dmesg.")
    main_c.write_text(main_c.read_text() + PATCH2)
    git(repo, "commit", "-qam", "init: add the kvmh_test.answer parameter\n\nVisible in /sys/module.")
    mbox = work / "series.mbox"
    mbox.write_bytes(subprocess.run(["git", "-C", str(repo), "format-patch", "--stdout", "HEAD~2..HEAD"],
                                    check=True, capture_output=True).stdout)
    return mbox


@pytest.fixture(scope="module")
def built(linux_tree: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("kernel-build")
    mbox = make_series(linux_tree, work)
    listing = sorted(p.name for p in linux_tree.iterdir())
    started = time.monotonic()
    result = build(linux_tree, str(mbox), arch="s390x")
    took = time.monotonic() - started
    log.warning("s390x kernel build took %.0f s (%s)", took,
                "cached" if result.cached else "incremental" if result.incremental else "full")
    assert sorted(p.name for p in linux_tree.iterdir()) == listing, "the source tree was written to"
    return result, mbox, took


def test_build_outputs(built) -> None:
    result, _, _ = built
    assert result.arch == "s390x"
    assert result.image.name == "bzImage" and result.image.stat().st_size > 500_000
    assert result.release.startswith("6.12.")
    assert result.series_subjects == ["init: print a banner late at boot", "init: add the kvmh_test.answer parameter"]
    assert (result.modules_dir / "lib/modules" / result.release / "modules.builtin").is_file()
    config = requested_options(result.config.read_text())
    assert config["CONFIG_SCLP_VT220_CONSOLE"] == "y" and config["CONFIG_KVM"] == "y"
    assert "s390x-linux-gnu-gcc" in result.compiler
    assert result.log.is_file() and result.warnings == len(result.warning_lines)
    if result.new_warnings is not None:
        assert result.new_warnings == 0, result.new_warning_lines


def test_unchanged_input_is_not_rebuilt(built, linux_tree: Path) -> None:
    result, mbox, _ = built
    started = time.monotonic()
    again = build(linux_tree, str(mbox), arch="s390x")
    assert again.cached and again.image == result.image and again.head == result.head
    assert time.monotonic() - started < 60


def test_boots_and_shows_the_series(built, tmp_path: Path) -> None:
    from harness.targets.spec import TargetOptions
    from harness.targets.factory import make_target

    if shutil.which("qemu-system-s390x") is None:
        pytest.skip("qemu-system-s390x not installed (Debian package qemu-system-misc)")
    result, _, _ = built
    options = TargetOptions(kernel=result.image, modules_dir=result.modules_dir, artifacts_dir=tmp_path,
                            boot_timeout=600)
    try:
        target = make_target("qemu:s390x", options)
        target.start()
    except HarnessError as err:
        console = tmp_path / "console.log"
        tail = console.read_text(errors="replace")[-3000:] if console.exists() else "(no console log)"
        pytest.fail(f"the built kernel did not boot: {err}\n{tail}")
    try:
        assert target.run("uname -r", timeout=60).stdout.strip() == result.release
        dmesg = target.run("dmesg", timeout=60)
        assert dmesg.ok and BANNER in dmesg.stdout
        param = target.run("cat /sys/module/kvmh_test/parameters/answer", timeout=60)
        assert (param.exit_status, param.stdout.strip()) == (0, "42")
        target.run("grep -q debugfs /proc/mounts || mount -t debugfs none /sys/kernel/debug", timeout=60)
        warn = target.run("echo WARNING > /sys/kernel/debug/provoke-crash/DIRECT; dmesg | tail -n 60", timeout=120)
        assert "lkdtm_WARNING" in warn.stdout or "WARNING:" in warn.stdout, warn.stdout[-2000:]
    finally:
        target.close()
