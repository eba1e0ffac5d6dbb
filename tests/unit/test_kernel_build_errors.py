"""Every bad input to the kernel builder ends in one clear line, exit status 2, and an untouched tree."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.errors import EXIT_INFRA, HarnessError
from harness.workflows import build as kcli
from harness.kernel import worktree
from harness.kernel.build import BuildError, detect_toolchain, first_errors, host_arch, parse_warnings, warning_key
from harness.kernel.series import KernelInputError, load_series

ARCH = host_arch()  # native compiler: these tests stop before any make of a kernel
SHARED_CACHE = os.environ.get("KVMH_CACHE")  # the cache holding Debian's linux-source, if any


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=Dev", "-c", "user.email=dev@example.org",
                           *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A kernel-like git tree (enough for check_kernel_tree) with a branch, a stash and two commits."""
    t = tmp_path / "linux"
    (t / "arch/s390").mkdir(parents=True)
    (t / "include/uapi/linux").mkdir(parents=True)
    (t / "init").mkdir()
    (t / "Makefile").write_text("# fake\n")
    (t / "Kconfig").write_text("# fake\n")
    (t / "include/uapi/linux/kvm.h").write_text("/* kvm */\n")
    (t / "init/main.c").write_text("".join(f"line {i}\n" for i in range(1, 21)))
    git(t, "init", "-q", "-b", "main")
    git(t, "add", "-A")
    git(t, "commit", "-qm", "base")
    git(t, "branch", "feature")
    (t / "init/main.c").write_text((t / "init/main.c").read_text().replace("line 3\n", "line 3 stashed\n"))
    git(t, "stash", "-q")
    return t


def snapshot(t: Path) -> tuple[str, ...]:
    return (git(t, "status", "--porcelain"), git(t, "rev-parse", "HEAD"), git(t, "branch", "-a"),
            git(t, "stash", "list"), (t / "init/main.c").read_text())


def commit_change(t: Path, old: str, new: str, subject: str) -> None:
    path = t / "init/main.c"
    path.write_text(path.read_text().replace(old, new))
    git(t, "commit", "-qam", subject)


def mbox(t: Path, rng: str, dest: Path) -> Path:
    dest.write_bytes(subprocess.run(["git", "-C", str(t), "format-patch", "--stdout", rng],
                                    check=True, capture_output=True).stdout)
    return dest


def expect_failure(capsys: pytest.CaptureFixture, t: Path, **kwargs: object) -> str:
    """Run build_main, check exit status 2, one stderr line, the same tree; return the message."""
    before = snapshot(t) if (t / ".git").exists() else None
    status = kcli.build_main(t, arch=ARCH, **kwargs)
    err = capsys.readouterr().err
    assert status == EXIT_INFRA, err
    assert err.count("\n") == 1 and err.startswith("kvmh build: "), err
    if before is not None:
        assert snapshot(t) == before
    return err[len("kvmh build: "):].rstrip("\n")


def test_not_a_kernel_tree(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "Makefile").write_text("all:\n")
    msg = expect_failure(capsys, plain)
    assert msg == (f"{plain} is not a kernel source tree (no Makefile, Kconfig, arch/, include/uapi/linux/kvm.h)")
    assert sorted(p.name for p in plain.iterdir()) == ["Makefile"]
    with pytest.raises(KernelInputError) as exc:
        kcli.build(plain, arch=ARCH)
    assert exc.value.exit_status == EXIT_INFRA


def test_dirty_tree_in_place_is_refused(tree: Path, capsys: pytest.CaptureFixture) -> None:
    (tree / "init/main.c").write_text("edited\n")
    msg = expect_failure(capsys, tree, in_place=True)
    assert msg == (f"{tree} has uncommitted changes (1 file, e.g. init/main.c): commit or stash them, "
                   "or drop --in-place")
    with pytest.raises(KernelInputError) as exc:
        kcli.build(tree, arch=ARCH, in_place=True)
    assert exc.value.exit_status == EXIT_INFRA


def test_series_in_place_is_refused(tree: Path, tmp_path: Path) -> None:
    commit_change(tree, "line 5\n", "line five\n", "init: five")
    patches = mbox(tree, "HEAD~1..HEAD", tmp_path / "s.mbox")
    git(tree, "reset", "-q", "--hard", "HEAD~1")
    with pytest.raises(KernelInputError, match=r"cannot apply a series in place"):
        kcli.build(tree, str(patches), arch=ARCH, in_place=True)


def test_base_commit_missing(tree: Path, capsys: pytest.CaptureFixture) -> None:
    msg = expect_failure(capsys, tree, base="0123456789abcdef")
    assert msg == f"base commit '0123456789abcdef' not found in {tree}: fetch it or pass an existing --base"


def test_mbox_with_no_patches(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "cover-only.mbox"
    empty.write_text("From x Mon Sep 17 00:00:00 2001\nFrom: a@example.org\nSubject: [PATCH 0/3] cover\n\nhi\n")
    msg = expect_failure(capsys, tree, series=str(empty))
    assert msg == (f"{empty} contains no patches (no mail with a diff): pass git format-patch output or an mbox "
                   "of the series")


def test_patch_already_applied(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    commit_change(tree, "line 5\n", "line five\n", "init: spell out five")
    commit_change(tree, "line 9\n", "line nine\n", "init: spell out nine")
    patches = mbox(tree, "HEAD~2..HEAD", tmp_path / "s.mbox")
    git(tree, "reset", "-q", "--hard", "HEAD~1")  # the first patch is in HEAD, the second is not
    head = git(tree, "rev-parse", "HEAD").strip()
    msg = expect_failure(capsys, tree, series=str(patches))
    assert msg == (f"patch 1/2 'init: spell out five' is already applied on {head[:12]}: drop it from the series "
                   "or pick an older base")
    wt = worktree.worktree_path(worktree.open_repo(tree))
    assert git(wt, "status", "--porcelain") == "" and git(wt, "rev-parse", "HEAD").strip() == head


def test_patch_that_does_not_apply_names_subject_file_and_hunk(tree: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    commit_change(tree, "line 3\n", "line 3 ok\n", "init: harmless first")
    commit_change(tree, "line 12\n", "line twelve\n", "init: rename twelve")
    patches = mbox(tree, "HEAD~2..HEAD", tmp_path / "s.mbox")
    git(tree, "reset", "-q", "--hard", "HEAD~2")
    commit_change(tree, "line 12\n", "line 12 conflicting\n", "init: someone else touched twelve")
    head = git(tree, "rev-parse", "HEAD").strip()
    msg = expect_failure(capsys, tree, series=str(patches))
    assert msg.startswith(f"patch 2/2 'init: rename twelve' does not apply on {head[:12]}: init/main.c hunk at "
                          "line 9 ('line 9')"), msg
    wt = worktree.worktree_path(worktree.open_repo(tree))
    assert git(wt, "status", "--porcelain") == ""
    assert git(wt, "rev-parse", "HEAD").strip() == head, "git am was aborted and the worktree reset"
    assert not Path(git(wt, "rev-parse", "--path-format=absolute", "--git-path", "rebase-apply").strip()).exists()


def test_series_applies_on_separate_worktree(tree: Path, tmp_path: Path) -> None:
    commit_change(tree, "line 3\n", "line three\n", "init: three")
    commit_change(tree, "line 4\n", "line four\n", "init: four")
    patches = mbox(tree, "HEAD~2..HEAD", tmp_path / "s.mbox")
    git(tree, "reset", "-q", "--hard", "HEAD~2")
    before = snapshot(tree)
    src = worktree.prepare(tree, load_series(patches))
    assert snapshot(tree) == before
    assert src.tree != tree and "line three\nline four\n" in (src.tree / "init/main.c").read_text()
    assert git(src.tree, "log", "--format=%s", "-2").split("\n")[:2] == ["init: four", "init: three"]
    stamp = (src.tree / "init/main.c").stat().st_mtime_ns
    again = worktree.prepare(tree, load_series(patches))
    assert again.head == src.head, "same series on the same base gives the same commit"
    assert (again.tree / "init/main.c").stat().st_mtime_ns == stamp, "unchanged files keep their mtime"
    base = worktree.prepare(tree)
    assert base.head == before[1].strip() and "line three" not in (base.tree / "init/main.c").read_text()


def test_non_git_tree_is_imported(tree: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain-tree"
    shutil.copytree(tree, plain, ignore=shutil.ignore_patterns(".git"))
    (plain / ".gitignore").write_text("/*\n")  # like Debian's linux-source: ignores everything at the top
    listing = sorted(str(p.relative_to(plain)) for p in plain.rglob("*"))
    first = worktree.prepare(plain)
    assert (first.tree / "init/main.c").read_text() == (plain / "init/main.c").read_text()
    assert worktree.prepare(plain).base == first.base, "an unchanged tree is not imported again"
    (plain / "init/main.c").write_text("changed\n")
    assert worktree.prepare(plain).base != first.base
    assert sorted(str(p.relative_to(plain)) for p in plain.rglob("*")) == listing
    assert not (plain / ".git").exists()


def test_cross_compiler_missing(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    foreign = "s390x" if host_arch() != "s390x" else "x86_64"
    package = {"s390x": "gcc-s390x-linux-gnu", "x86_64": "gcc-x86-64-linux-gnu"}[foreign]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "make", "flex", "bison", "bc"):
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed")
        os.symlink(found, bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("KVMH_CROSS_COMPILE", raising=False)
    before = snapshot(tree)
    with pytest.raises(KernelInputError) as exc:
        kcli.build(tree, arch=foreign)
    prefix = {"s390x": "s390x-linux-gnu-", "x86_64": "x86_64-linux-gnu-"}[foreign]
    assert str(exc.value) == (f"{prefix}gcc not found: install the Debian package {package} "
                              f"(apt-get install {package}) to build {foreign} kernels")
    assert exc.value.exit_status == EXIT_INFRA
    assert snapshot(tree) == before


def test_host_tool_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HarnessError, match=r"^make not found: install the Debian package make"):
        detect_toolchain("s390x")


def test_unknown_arch() -> None:
    with pytest.raises(HarnessError, match=r"unknown architecture 'arm64'"):
        detect_toolchain("arm64")


LOG = """\
  CC      init/main.o
init/main.c:12:5: warning: unused variable 'x' [-Wunused-variable]
  CC      kernel/fork.o
kernel/fork.c: In function 'copy_process':
kernel/fork.c:2001:9: error: 'nosuch' undeclared (first use in this function)
 2001 |         nosuch = 1;
      |         ^~~~~~
make[3]: *** [scripts/Makefile.build:229: kernel/fork.o] Error 1
make[2]: *** [scripts/Makefile.build:478: kernel] Error 2
WARNING: modpost: vmlinux: section mismatch in reference: foo+0x0 (section: .text) -> bar (section: .init.text)
init/main.c:12:5: warning: unused variable 'x' [-Wunused-variable]
"""


def test_build_log_parsing() -> None:
    errors = first_errors(LOG)
    assert errors[0] == "kernel/fork.c:2001:9: error: 'nosuch' undeclared (first use in this function)"
    assert errors[1] == " 2001 |         nosuch = 1;"
    warnings = parse_warnings(LOG)
    assert len(warnings) == 2
    assert warning_key(warnings[0]) == "init/main.c: unused variable 'x' [-Wunused-variable]"
    assert warnings[1].startswith("WARNING: modpost:")


def test_build_failure_quotes_first_error(tmp_path: Path) -> None:
    from harness.kernel.build import _run_make

    fake = tmp_path / "src"
    fake.mkdir()
    (fake / "Makefile").write_text("all:\n\t@echo 'init/x.c:3:1: error: expected ; before }'\n\t@false\n")
    log = tmp_path / "build.log"
    with pytest.raises(BuildError) as exc:
        _run_make(fake, tmp_path / "obj", ["all"], log, "0123456789abcdef")
    assert str(exc.value) == ("kernel build failed at 0123456789ab: init/x.c:3:1: error: expected ; before } "
                              f"(log: {log})")
    assert exc.value.exit_status == EXIT_INFRA


def test_config_option_impossible_for_arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    """On the real tree: an x86-only option asked for s390x stops the build before make, naming it."""
    if SHARED_CACHE is None:
        monkeypatch.delenv("KVMH_CACHE")
    else:
        monkeypatch.setenv("KVMH_CACHE", SHARED_CACHE)
    from tests.ci import need, source_tree

    source = source_tree()
    need(shutil.which("s390x-linux-gnu-gcc") is not None or host_arch() == "s390x",
         "s390x-linux-gnu-gcc missing (Debian package gcc-s390x-linux-gnu)")
    frag = tmp_path / "x86.config"
    frag.write_text("CONFIG_KVM_INTEL=y\n")
    listing = sorted(p.name for p in source.iterdir())
    status = kcli.build_main(source, arch="s390x", fragments=[frag])
    err = capsys.readouterr().err
    assert status == EXIT_INFRA
    assert err == ("kvmh build: config options not in the final .config for s390x: CONFIG_KVM_INTEL=y (got not "
                   "set) — they do not exist or their dependencies are off for this arch and tree: fix or drop "
                   "them\n")
    assert sorted(p.name for p in source.iterdir()) == listing


def test_deleted_worktree_is_recreated_without_pruning_others(tree: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "their-worktree"
    git(tree, "worktree", "add", "-q", "--detach", str(theirs))
    shutil.rmtree(theirs)  # stale, but the user's business
    first = worktree.prepare(tree)
    shutil.rmtree(first.tree)
    again = worktree.prepare(tree)
    assert (again.tree / "init/main.c").is_file() and again.head == first.head
    assert str(theirs) in git(tree, "worktree", "list")


def _record(out: Path, warnings: list[str], incremental: bool = False, subjects: tuple[str, ...] = ()):
    from harness.kernel.build import KernelBuild

    out.mkdir(parents=True)
    (out / "bzImage").write_bytes(b"image")
    (out / "config").write_text("CONFIG_X=y\n")
    build = KernelBuild(arch="s390x", image=out / "bzImage", modules_dir=None, config=out / "config",
                        system_map=out / "System.map", log=out / "build.log", release="6.12.0",
                        base="a" * 40, head="b" * 40, series_subjects=list(subjects), series_hash="c" * 64,
                        config_hash="d" * 64, compiler="gcc 12", warnings=len(warnings), warning_lines=warnings,
                        incremental=incremental, output_dir=out)
    (out / "build.json").write_text(build.to_json())
    return build


def test_new_warnings_counted_against_a_full_base_build(tmp_path: Path) -> None:
    from harness.kernel.build import BuildPlan, _compare_with_base, cached_build
    from harness.kernel.series import EMPTY

    key = tmp_path / "key"
    base_out = key / "out" / EMPTY.hash[:16]
    _record(base_out, ["init/main.c:10:5: warning: unused variable 'a' [-Wunused-variable]"])
    series_out = key / "out" / ("e" * 16)
    build = _record(series_out, ["init/main.c:14:5: warning: unused variable 'a' [-Wunused-variable]",
                                 "init/main.c:30:1: warning: no previous prototype for 'f' [-Wmissing-prototypes]"],
                    subjects=("init: f",))
    _compare_with_base(build, BuildPlan(key, key / "obj", series_out))
    assert build.new_warnings == 1, "a warning that only moved lines is not new"
    assert build.new_warning_lines == ["init/main.c:30:1: warning: no previous prototype for 'f' "
                                       "[-Wmissing-prototypes]"]
    again = cached_build(BuildPlan(key, key / "obj", series_out))
    assert again is not None and again.cached and again.warning_lines == build.warning_lines
    assert "--kvm-property" in build.pytest_properties_args()
    assert build.properties()["series"] == "init: f" and build.properties()["new_build_warnings"] == "1"


def test_no_new_warning_count_without_a_complete_base(tmp_path: Path) -> None:
    from harness.kernel.build import BuildPlan, _compare_with_base
    from harness.kernel.series import EMPTY

    key = tmp_path / "key"
    _record(key / "out" / EMPTY.hash[:16], [], incremental=True)
    build = _record(key / "out" / ("e" * 16), ["x.c:1:1: warning: w"], subjects=("x",))
    _compare_with_base(build, BuildPlan(key, key / "obj", key / "out" / ("e" * 16)))
    assert build.new_warnings is None
