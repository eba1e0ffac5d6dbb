"""One real bisect end to end: Debian's linux-source-6.12 imported into a repository, two commits on top (one
harmless, one that breaks the userspace build of <linux/kvm.h> and so the harness's own async_teardown C
selftest), built for s390x, booted under QEMU; kvmh bisect must name the breaking commit.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from tests.ci import need

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KVM_H = "include/uapi/linux/kvm.h"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=Kernel Dev", "-c", "user.email=dev@example.org",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


def linux_repo(work: Path) -> tuple[Path, str, str, str]:
    from harness.kernel.source import linux_source
    from harness.kernel.worktree import open_repo

    try:
        source = linux_source()
    except HarnessError as err:
        need(False, f"Debian linux-source not available: {err}")
    imported = open_repo(source)  # the cache's one-commit import of the Debian tree
    repo = work / "linux"
    subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(imported.git_dir), str(repo)], check=True)
    # Only the files the test edits (and the tree markers) are checked out: the history is complete.
    # Per-worktree config: the sparse checkout must not reach the harness's own worktrees of this repository.
    git(repo, "config", "extensions.worktreeConfig", "true")
    git(repo, "sparse-checkout", "set", "--no-cone", "/Makefile", "/Kconfig", "/arch/s390/Kconfig", f"/{KVM_H}")
    git(repo, "checkout", "-q", "-B", "master")
    base = git(repo, "rev-parse", "HEAD")
    kvm_h = repo / KVM_H
    kvm_h.write_text(kvm_h.read_text() + "/* kvmh-test: a harmless comment */\n")
    git(repo, "commit", "-qam", "KVM: uapi: add a comment")
    harmless = git(repo, "rev-parse", "HEAD")
    kvm_h.write_text(kvm_h.read_text() + "#ifndef __KERNEL__\n#error \"kvmh-test: userspace build broken\"\n#endif\n")
    git(repo, "commit", "-qam", "KVM: uapi: break userspace users of kvm.h")
    return repo, base, harmless, git(repo, "rev-parse", "HEAD")


def test_real_s390x_bisect_finds_the_breaking_commit(tmp_path: Path, capsys) -> None:
    from tests.integration.conftest import guest_image_or_skip, require_qemu

    need(shutil.which("s390x-linux-gnu-gcc") is not None, "s390x-linux-gnu-gcc missing (gcc-s390x-linux-gnu)")
    require_qemu("s390x")
    guest_image_or_skip("s390x")
    repo, base, harmless, breaking = linux_repo(tmp_path)
    status = main(["bisect", "--tree", str(repo), "--good", base, "--bad", breaking, "--target", "qemu:s390x",
                   "--artifacts", str(tmp_path / "out"), "--", "selftest:async_teardown_test"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"first bad commit: {breaking}" in out
    assert "KVM: uapi: break userspace users of kvm.h" in out and "Kernel Dev <dev@example.org>" in out
    summary = next((tmp_path / "out").glob("*/summary.txt")).read_text()
    assert harmless[:12] in summary and "good" in summary
    assert git(repo, "status", "--porcelain") == "" and git(repo, "rev-parse", "HEAD") == breaking
