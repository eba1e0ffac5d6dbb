"""``git bisect`` driven on a worktree in the cache, so the user's checkout, index and bisect state stay untouched.

The worktree is created with ``--no-checkout`` and bisected with ``git bisect start --no-checkout``: git only
moves ``BISECT_HEAD``; the commit to test is checked out (and built) by the kernel builder's own worktree.
Bisect refs and logs are per worktree, so nothing of this reaches the user's repository state.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import InfrastructureError, UsageError
from ..kernel.worktree import SourceRepo, open_repo
from ..paths import cache_subdir

log = logging.getLogger(__name__)

GIT_TIMEOUT_S = 600.0
_NO_HOOKS = ("--no-optional-locks", "-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0",
             "-c", "advice.detachedHead=false")
_FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.M)
_ONLY_SKIPPED = re.compile(r"only 'skip'ped commits left to test", re.I)
_SHA_LINE = re.compile(r"^([0-9a-f]{40})$", re.M)


@dataclass
class MarkResult:
    """What git said after a mark: the next commit to test, the first bad commit, or only skipped ones left."""

    next_commit: Optional[str] = None
    first_bad: Optional[str] = None
    candidates: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def done(self) -> bool:
        return self.first_bad is not None or bool(self.candidates)


def _git(args: list[str], cwd: Optional[Path] = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    env.setdefault("GIT_COMMITTER_NAME", "kvm-harness")
    env.setdefault("GIT_COMMITTER_EMAIL", "kvm-harness@localhost")
    try:
        proc = subprocess.run(["git", *_NO_HOOKS, *args], cwd=cwd, capture_output=True, text=True, env=env,
                              timeout=GIT_TIMEOUT_S, errors="replace")
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"git {' '.join(args[:3])} did not finish within {GIT_TIMEOUT_S:.0f} s") from None
    if check and proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise InfrastructureError(f"git {' '.join(args[:3])} failed: {last}", details=proc.stderr)
    return proc


class BisectWorktree:
    """A detached, checkout-less worktree of the tree's repository, used only for ``git bisect``."""

    def __init__(self, repo: SourceRepo, path: Path) -> None:
        self.repo = repo
        self.path = path

    @classmethod
    def open(cls, tree: Path) -> "BisectWorktree":
        repo = open_repo(tree)
        path = cache_subdir("kernel/work") / repo.key / "bisect"
        return cls(repo, path)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name("bisect.lock")

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _git(["-C", str(self.path), *args], check=check)

    def resolve(self, rev: str, flag: str) -> str:
        proc = _git(["--git-dir", str(self.repo.git_dir), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                    check=False)
        if proc.returncode != 0:
            raise UsageError(f"{flag} {rev!r} is not a commit of {self.repo.origin}: pass an existing revision")
        return proc.stdout.strip()

    def is_ancestor(self, older: str, newer: str) -> bool:
        proc = _git(["--git-dir", str(self.repo.git_dir), "merge-base", "--is-ancestor", older, newer], check=False)
        return proc.returncode == 0

    def describe(self, commit: str) -> tuple[str, str]:
        """(subject, author) of a commit."""
        proc = _git(["--git-dir", str(self.repo.git_dir), "show", "-s", "--format=%s%x00%an <%ae>", commit])
        subject, _, author = proc.stdout.strip().partition("\0")
        return subject, author

    def count(self, good: str, bad: str) -> int:
        proc = _git(["--git-dir", str(self.repo.git_dir), "rev-list", "--count", f"{good}..{bad}"])
        return int(proc.stdout.strip() or 0)

    def ensure(self, at: str) -> None:
        """Create the worktree (once), and clear any bisect a previous run left in it."""
        if not (self.path / ".git").exists():
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _git(["--git-dir", str(self.repo.git_dir), "worktree", "add", "-q", "--force", "--no-checkout",
                  "--detach", str(self.path), at])
            log.info("bisect worktree %s created", self.path)
        self.reset()

    def active(self) -> bool:
        return self.git("bisect", "log", check=False).returncode == 0

    def reset(self) -> None:
        """End any bisect in the worktree (no checkout happens: the worktree was never checked out)."""
        if self.path.exists() and self.active():
            self.git("bisect", "reset", check=False)
        if self.path.exists() and self.active():
            raise InfrastructureError(f"could not end the bisect in {self.path}: remove that directory")

    def start(self, good: str, bad: str) -> MarkResult:
        proc = self.git("bisect", "start", "--no-checkout", bad, good)
        return self._after(proc.stdout)

    def replay(self, log_file: Path) -> MarkResult:
        self.reset()
        proc = self.git("bisect", "replay", str(log_file), check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["replay failed"])[-1]
            raise UsageError(f"cannot replay bisect log {log_file}: {last} — start a new bisect without --resume")
        return self._after(proc.stdout)

    def mark(self, commit: str, verdict: str) -> MarkResult:
        """Mark a commit good, bad or skip; return what git decided."""
        if verdict not in ("good", "bad", "skip"):
            raise ValueError(verdict)
        proc = self.git("bisect", verdict, commit, check=False)
        out = proc.stdout + proc.stderr
        if proc.returncode not in (0, 2):
            raise InfrastructureError(f"git bisect {verdict} {commit[:12]} failed: {out.strip()[-200:]}")
        return self._after(out)

    def log_text(self) -> str:
        proc = self.git("bisect", "log", check=False)
        return proc.stdout if proc.returncode == 0 else ""

    def _after(self, out: str) -> MarkResult:
        result = MarkResult(output=out)
        m = _FIRST_BAD.search(out)
        if m:
            result.first_bad = m.group(1)
            return result
        if _ONLY_SKIPPED.search(out):
            result.candidates = _SHA_LINE.findall(out)
            return result
        head = self.git("rev-parse", "--verify", "--quiet", "BISECT_HEAD", check=False)
        if head.returncode == 0:
            result.next_commit = head.stdout.strip()
        return result
