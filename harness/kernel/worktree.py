"""Apply a patch series on a separate worktree in the cache, never touching the user's checkout.

A git tree gets one detached worktree (``git worktree add --detach``) under the cache; a non-git tree
(such as Debian's unpacked linux-source) is imported into a throwaway repository in the cache first,
and re-imported when its files change. The worktree path is stable per tree so that out-of-tree
build directories stay incremental; after applying a series, files whose content is the same as in
the previous build keep their old modification time, so make only rebuilds what really changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from ..locks import file_lock
from ..paths import cache_subdir
from .series import EMPTY, KernelInputError, Series
from .source import check_kernel_tree

log = logging.getLogger(__name__)

# Our git commands never run the user's hooks, never sign, never refresh the user's index as a side
# effect (--no-optional-locks), and always have a committer identity.
_GIT_CONFIG = ("--no-optional-locks", "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false", "-c", "gc.auto=0",
               "-c", "core.autocrlf=false", "-c", "advice.detachedHead=false")
_IDENTITY = {
    "GIT_COMMITTER_NAME": "kvm-harness", "GIT_COMMITTER_EMAIL": "kvm-harness@localhost",
}

_IMPORT_DATE = "2000-01-01T00:00:00Z"
GIT_TIMEOUT_S = 1800.0
"""The longest one git command may take (importing a whole kernel tree takes minutes)."""


class ApplyError(KernelInputError):
    """A patch of the series does not apply on the base (exit status 2)."""


@dataclass(frozen=True)
class SourceRepo:
    """Where the commits live: the user's repository, or the cache's import of a non-git tree."""

    origin: Path  # the tree the user named
    git_dir: Path  # --git-dir for commands on the repository
    imported: bool
    key: str  # stable short name for cache paths

    def git(self, *args: str, input: Optional[bytes] = None, check: bool = False,
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
        return _run_git(["--git-dir", str(self.git_dir), *args], input=input, check=check, env=env)


@dataclass(frozen=True)
class PreparedSource:
    """A source tree ready to build: ``tree`` is at ``head`` = ``base`` + the series."""

    tree: Path
    base: str
    head: str
    series: Series
    repo: SourceRepo
    in_place: bool = False


def _run_git(args: list[str], cwd: Optional[Path] = None, input: Optional[bytes] = None,
             check: bool = False, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **_IDENTITY, **(env or {}))
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    env.pop("GIT_INDEX_FILE", None)
    proc = _subprocess(["git", *_GIT_CONFIG, *args], cwd=cwd, input=input, env=env)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise KernelInputError(f"git {' '.join(args[:4])} failed: {err.splitlines()[-1] if err else proc.returncode}",
                               details=err)
    return proc


def _subprocess(cmd: list[str], cwd: Optional[Path] = None, input: Optional[bytes] = None,
                env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run git with output captured and a deadline; past it, a KernelInputError naming the command."""
    try:
        return subprocess.run(cmd, cwd=cwd, input=input, capture_output=True, env=env, timeout=GIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        shown = " ".join(a for a in cmd[1:] if a not in _GIT_CONFIG)[:80]
        raise KernelInputError(f"git {shown} did not finish within {GIT_TIMEOUT_S:.0f} s") from None


def _out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode(errors="replace").strip()


def _wt_git(tree: Path, *args: str, input: Optional[bytes] = None, check: bool = False,
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
    if env:
        full = dict(os.environ, **_IDENTITY, **env)
        return _subprocess(["git", *_GIT_CONFIG, "-C", str(tree), *args], input=input, env=full)
    return _run_git(["-C", str(tree), *args], input=input, check=check)


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checked_tree(tree: Path) -> Path:
    """check_kernel_tree with the builder's exit status 2 (bad input for a build)."""
    try:
        return check_kernel_tree(tree)
    except UsageError as err:
        raise KernelInputError(str(err)) from None


def git_toplevel(tree: Path) -> Optional[Path]:
    """The tree itself when it is the top of a git work tree, else None."""
    proc = _run_git(["-C", str(tree), "rev-parse", "--show-toplevel"])
    if proc.returncode != 0:
        return None
    top = Path(_out(proc)).resolve()
    return top if top == Path(tree).resolve() else None


def open_repo(tree: Path) -> SourceRepo:
    """Return the repository for a kernel tree, importing a non-git tree into the cache."""
    tree = checked_tree(tree)
    if git_toplevel(tree) is not None:
        common = Path(_out(_run_git(["-C", str(tree), "rev-parse", "--path-format=absolute",
                                     "--git-common-dir"], check=True)))
        return SourceRepo(origin=tree, git_dir=common, imported=False, key="git-" + _short(str(common)))
    return import_tree(tree)


def import_tree(tree: Path) -> SourceRepo:
    """Commit a non-git tree's files into a bare repository in the cache (again when they changed)."""
    _refuse_in_tree_build(tree, "import it")
    key = "import-" + _short(str(tree))
    git_dir = cache_subdir("kernel/imports") / f"{key}.git"
    repo = SourceRepo(origin=tree, git_dir=git_dir, imported=True, key=key)
    with file_lock(git_dir.with_suffix(".lock"), what=f"the import of {tree}"):
        if not (git_dir / "HEAD").exists():
            log.info("importing %s into a git repository in the cache (once)", tree)
            _run_git(["init", "-q", "--bare", str(git_dir)], check=True)
        wt = ["--work-tree", str(tree)]
        # -f: a tree's .gitignore may ignore everything (Debian's linux-source ignores "/*").
        repo.git("-C", str(tree), *wt, "add", "-A", "-f", ".", check=True)
        has_head = repo.git("rev-parse", "--verify", "--quiet", "HEAD").returncode == 0
        changed = repo.git(*wt, "diff", "--cached", "--quiet").returncode != 0
        if not has_head or changed:
            # Fixed identity and dates: the same files give the same commit id on every machine.
            repo.git(*wt, "commit", "-q", "--no-verify", "-m", f"Import of {tree.name}", check=True,
                     env={"GIT_AUTHOR_NAME": "kvm-harness", "GIT_AUTHOR_EMAIL": "kvm-harness@localhost",
                          "GIT_AUTHOR_DATE": _IMPORT_DATE, "GIT_COMMITTER_DATE": _IMPORT_DATE})
            log.info("imported %s as %s", tree, _out(repo.git("rev-parse", "--short", "HEAD")))
    return repo


def resolve_base(repo: SourceRepo, base: Optional[str]) -> str:
    """Resolve a base revision to a full commit id, or raise naming the missing commit."""
    rev = base or "HEAD"
    proc = repo.git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if proc.returncode != 0:
        raise KernelInputError(f"base commit {rev!r} not found in {repo.origin}: fetch it or pass an "
                               "existing --base")
    return _out(proc)


def worktree_path(repo: SourceRepo) -> Path:
    return cache_subdir("kernel/work") / repo.key / "src"


def repo_lock(repo: SourceRepo) -> contextlib.AbstractContextManager:
    """Serialise everything done on one repository's worktree (apply, build)."""
    return file_lock(cache_subdir("kernel/work") / repo.key / "lock", what=f"the worktree of {repo.origin}")


def _ensure_worktree(repo: SourceRepo, base: str) -> Path:
    path = worktree_path(repo)
    if (path / ".git").exists() and _wt_git(path, "rev-parse", "HEAD").returncode == 0:
        _whole_checkout(path)
        return path
    if path.exists():
        shutil.rmtree(path)
    log.info("creating worktree %s at %s", path, base[:12])
    path.parent.mkdir(parents=True, exist_ok=True)
    # --force re-registers our path if its directory was deleted; the user's other worktrees are left alone.
    repo.git("worktree", "add", "-q", "--force", "--detach", str(path), base, check=True)
    _whole_checkout(path)
    return path


def _whole_checkout(path: Path) -> None:
    """Build from every file: ``git worktree add`` copies a sparse checkout of the user's tree into ours."""
    if _out(_wt_git(path, "config", "--bool", "core.sparseCheckout")) == "true":
        log.info("turning off the sparse checkout %s inherited from the user's tree", path)
        _wt_git(path, "sparse-checkout", "disable", check=True)


def _clean(path: Path) -> None:
    """Abandon any half-done git am and local changes in our worktree."""
    am_dir = Path(_out(_wt_git(path, "rev-parse", "--path-format=absolute", "--git-path", "rebase-apply")))
    if am_dir.exists():
        _wt_git(path, "am", "--abort")
    _wt_git(path, "reset", "-q", "--hard", check=True)
    _wt_git(path, "clean", "-fdq", check=True)


def _changed(path: Path, a: str, b: str) -> set[str]:
    if a == b:
        return set()
    proc = _wt_git(path, "diff", "--no-renames", "--name-only", "-z", a, b, check=True)
    return {n for n in proc.stdout.decode(errors="surrogateescape").split("\0") if n}


def _mtimes(path: Path, names: set[str]) -> dict[str, tuple[int, int]]:
    saved = {}
    for name in names:
        try:
            st = os.lstat(path / name)
        except FileNotFoundError:
            continue
        saved[name] = (st.st_atime_ns, st.st_mtime_ns)
    return saved


def prepare(tree: Path, series: Series = EMPTY, base: Optional[str] = None) -> PreparedSource:
    """Check out ``base`` (default: the series' own base, else HEAD) on the cache worktree and apply the series.

    The caller should hold :func:`repo_lock` for the repository until its build is done.
    """
    repo = open_repo(tree)
    base_sha = resolve_base(repo, base or series.base)
    if not repo.imported:
        _warn_uncommitted(repo.origin)
    path = _ensure_worktree(repo, base_sha)
    _clean(path)
    old_head = _out(_wt_git(path, "rev-parse", "HEAD", check=True))
    touched = _changed(path, old_head, base_sha)
    saved = _mtimes(path, touched)
    _wt_git(path, "checkout", "-q", "--detach", base_sha, check=True)
    if series.patches:
        _apply(path, series, base_sha)
    head = _out(_wt_git(path, "rev-parse", "HEAD", check=True))
    touched |= _changed(path, base_sha, head)
    same = touched - _changed(path, old_head, head)
    restored = 0
    for name in same:
        if name in saved and (path / name).exists():
            os.utime(path / name, ns=saved[name], follow_symlinks=False)
            restored += 1
    log.info("source %s: base %s + %d patches -> %s (%d files kept their timestamps)",
             path, base_sha[:12], len(series), head[:12], restored)
    return PreparedSource(tree=path, base=base_sha, head=head, series=series, repo=repo)


def prepare_in_place(tree: Path, series: Series = EMPTY) -> PreparedSource:
    """Use the user's own clean git checkout as the source (nothing is written into it)."""
    tree = checked_tree(tree)
    if series.patches:
        raise KernelInputError(f"cannot apply a series in place in {tree}: drop --in-place so the series "
                               "is applied on a separate worktree")
    if git_toplevel(tree) is None:
        raise KernelInputError(f"{tree} is not a git tree and cannot be built in place: drop --in-place "
                               "(the tree is imported into the cache)")
    dirty = _uncommitted(tree)
    if dirty:
        files = f"{len(dirty)} file{'s' if len(dirty) != 1 else ''}"
        raise KernelInputError(f"{tree} has uncommitted changes ({files}, e.g. {dirty[0]}): "
                               "commit or stash them, or drop --in-place")
    _refuse_in_tree_build(tree, "drop --in-place")
    head = _out(_run_git(["-C", str(tree), "rev-parse", "HEAD"], check=True))
    repo = SourceRepo(origin=tree, git_dir=tree / ".git", imported=False, key="inplace-" + _short(str(tree)))
    return PreparedSource(tree=tree, base=head, head=head, series=series, repo=repo, in_place=True)


def _refuse_in_tree_build(tree: Path, alternative: str) -> None:
    """Out-of-tree builds need a source tree without in-tree build state."""
    for marker in (".config", "include/config", "include/generated"):
        if (tree / marker).exists():
            raise KernelInputError(f"{tree} holds an in-tree build ({marker}): run 'make mrproper' there "
                                   f"or {alternative}")


def _uncommitted(tree: Path) -> list[str]:
    proc = _run_git(["-C", str(tree), "status", "--porcelain", "--untracked-files=no"], check=True)
    return [line[3:] for line in proc.stdout.decode(errors="replace").splitlines() if line.strip()]


def _warn_uncommitted(tree: Path) -> None:
    dirty = _uncommitted(tree)
    if dirty:
        log.warning("%s has %d uncommitted changes (e.g. %s); they are not part of the build, which uses "
                    "committed history only", tree, len(dirty), dirty[0])


_APPLYING = re.compile(r"^Applying: (.*)$", re.M)
_PATCH_FAILED = re.compile(r"error: patch failed: (.+):(\d+)")
_CONFLICT = re.compile(r"CONFLICT \([^)]*\): .*? in (\S+)")


def _apply(path: Path, series: Series, base: str) -> None:
    proc = _wt_git(path, "am", "-3", "--committer-date-is-author-date", input=series.mbox())
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    applying = _APPLYING.findall(output)
    n = len(series)
    if proc.returncode != 0:
        index = max(len(applying) - 1, 0)
        detail = _failed_hunk(path)
        _wt_git(path, "am", "--abort")
        _wt_git(path, "reset", "-q", "--hard", base)
        patch = series.patches[index] if index < n else None
        subject = patch.subject if patch else (applying[-1] if applying else "?")
        where = _where(detail, output)
        raise ApplyError(f"patch {index + 1}/{n} {subject!r} does not apply on {base[:12]}: {where} — "
                         "rebase the series onto that base or pick the base it was written for",
                         details=output + "\n" + detail)
    index = _already_applied_index(output)
    if index is not None:
        _wt_git(path, "reset", "-q", "--hard", base)
        subject = series.patches[index].subject if 0 <= index < n else "?"
        number = index + 1
        raise ApplyError(f"patch {number}/{n} {subject!r} is already applied on {base[:12]}: drop it from "
                         "the series or pick an older base", details=output)
    count = int(_out(_wt_git(path, "rev-list", "--count", f"{base}..HEAD", check=True)))
    if count != n:
        _wt_git(path, "reset", "-q", "--hard", base)
        raise ApplyError(f"git am made {count} commits from a series of {n} patches on {base[:12]}: "
                         "check the mbox", details=output)


def _already_applied_index(output: str) -> Optional[int]:
    index = -1
    for line in output.splitlines():
        if line.startswith("Applying: "):
            index += 1
        elif line.startswith("No changes") or "Patch already applied" in line:
            return index
    return None


def _failed_hunk(path: Path) -> str:
    """Re-check the failing patch against HEAD (in a scratch index) to name the file and hunk."""
    diff = _wt_git(path, "am", "--show-current-patch=diff").stdout
    if not diff:
        return ""
    with tempfile.TemporaryDirectory(prefix="kvmh-apply-") as tmp:
        index = Path(tmp) / "index"
        env = {"GIT_INDEX_FILE": str(index)}
        _wt_git(path, "read-tree", "HEAD", env=env)
        proc = _wt_git(path, "apply", "--cached", "--check", "-v", input=diff, env=env)
    return (proc.stdout + proc.stderr).decode(errors="replace")


def _where(detail: str, output: str) -> str:
    m = _PATCH_FAILED.search(detail) or _PATCH_FAILED.search(output)
    if m:
        hunk = _hunk_context(detail)
        return f"{m.group(1)} hunk at line {m.group(2)}" + (f" ({hunk!r})" if hunk else "")
    m = _CONFLICT.search(output)
    if m:
        return f"conflict in {m.group(1)}"
    if "Patch is empty" in output:
        return "git am found no diff in it (is the mail mangled?)"
    missing = re.search(r"error: (\S+): does not exist in index", detail + output)
    if missing:
        return f"{missing.group(1)} does not exist"
    return "git am failed (see the log)"


def _hunk_context(detail: str) -> str:
    lines = detail.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error: while searching for:"):
            for ctx in lines[i + 1:]:
                if ctx.strip():
                    return ctx.strip()[:60]
    return ""
