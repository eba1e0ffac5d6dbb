"""The real step backend of ``kvmh bisect``: build a commit in the cache, run the selection with ``kvmh``.

Builds reuse one object directory per (repository, config, compiler) across the steps of a bisect, so each
step after the first is an incremental build of the previous step's output (plus ccache when installed);
a commit built before is taken from its recorded output at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import HarnessError, UsageError
from ..kernel.build import BuildPlan, _build, cached_build, detect_toolchain
from ..kernel.config import ConfigRequest
from ..kernel.series import EMPTY
from ..kernel.worktree import open_repo, prepare, repo_lock
from ..paths import cache_subdir
from .bisect_steps import BuildInfo, CommandRunner, StepBuildError, python_cli

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """What each step runs: ``kvmh test`` with pytest arguments, or ``kvmh selftests`` for one C selftest."""

    kind: str  # "pytest" | "selftest"
    args: tuple[str, ...]
    text: str

    @property
    def label(self) -> str:
        return self.text


def parse_selection(words: Sequence[str]) -> Selection:
    """Read ``-- <selection>``: pytest ``-k``/node ids, ``scenario:NAME`` or a scenario name, ``selftest:NAME``."""
    words = [w for w in words if w != "--"]
    if not words:
        raise UsageError("bisect needs a selection after --: a scenario name, selftest:NAME, or pytest -k EXPR / "
                         "node ids")
    text = " ".join(words)
    first = words[0]
    if len(words) == 1 and first.startswith("selftest:"):
        return Selection("selftest", (first.split(":", 1)[1],), text)
    if len(words) == 1 and first.startswith("scenario:"):
        first = first.split(":", 1)[1]
        _check_scenario(first)
        return Selection("pytest", ("-k", first), text)
    if first.startswith("-") or any("::" in w or w.endswith(".py") for w in words):
        return Selection("pytest", tuple(words), text)
    if len(words) == 1:
        if _is_scenario(first):
            return Selection("pytest", ("-k", first), text)
        if "/" in first or first.endswith("_test"):
            return Selection("selftest", (first,), text)
    raise UsageError(f"selection {text!r} is not a scenario name: write selftest:NAME for a C selftest, "
                     "scenario:NAME, or pytest arguments such as -k 'EXPR'")


def _is_scenario(name: str) -> bool:
    from ..kvm.scenarios import LIFECYCLE_SCENARIOS, PV_SCENARIOS

    return any(s.name == name for s in (*PV_SCENARIOS, *LIFECYCLE_SCENARIOS))


def _check_scenario(name: str) -> None:
    if not _is_scenario(name):
        raise UsageError(f"scenario {name!r} is unknown: see the scenario table in the README")


class KernelStepBuilder:
    """Checks the commit out on the cache worktree and builds it incrementally in the bisect's object dir."""

    def __init__(self, tree: Path, arch: str, config: ConfigRequest, jobs: Optional[int] = None) -> None:
        self.tree, self.arch, self.config, self.jobs = tree, arch, config, jobs
        self.repo = open_repo(tree)
        self.toolchain = detect_toolchain(arch)
        self.key_dir = (cache_subdir("kernel/bisect-builds") / self.repo.key
                        / f"{config.hash[:12]}-{self.toolchain.key}")

    def plan(self, commit: str) -> BuildPlan:
        return BuildPlan(key_dir=self.key_dir, obj=self.key_dir / "obj", out=self.key_dir / "out" / commit[:16])

    def build(self, commit: str, step_dir: Path) -> BuildInfo:
        started = time.monotonic()
        plan = self.plan(commit)
        with repo_lock(self.repo):
            source = prepare(self.tree, EMPTY, commit)
            hit = cached_build(plan)
            if hit is not None:
                return BuildInfo(hit.image, hit.modules_dir, source.tree, "cached",
                                 round(time.monotonic() - started, 1), hit.log)
            try:
                build = _build(source, plan, self.config, self.toolchain, self.jobs)
            except HarnessError as err:
                raise StepBuildError(f"build failed: {err}", details=err.details) from None
        how = "incremental" if build.incremental else "full"
        return BuildInfo(build.image, build.modules_dir, source.tree, how, round(time.monotonic() - started, 1),
                         build.log)


class KvmhRunner(CommandRunner):
    """Runs the selection on the built kernel with ``kvmh test`` or ``kvmh selftests`` (one boot per run)."""

    def __init__(self, selection: Selection, target_args: Sequence[str], timeout_s: float = 4 * 3600.0) -> None:
        super().__init__(timeout_s)
        self.selection = selection
        self.target_args = list(target_args)

    def argv(self, build: BuildInfo, run_dir: Path) -> list[str]:
        kernel: list[str] = []
        if build.image is not None:
            kernel += ["--kernel", str(build.image)]
        if build.modules is not None:
            kernel += ["--modules", str(build.modules)]
        common = [*self.target_args, *kernel, "--artifacts", str(run_dir / "artifacts")]
        junit = f"--junitxml={run_dir / 'junit.xml'}"
        if self.selection.kind == "selftest":
            return [*python_cli(), "selftests", *common, "--tree", str(build.source),
                    "--include", self.selection.args[0], "--", junit]
        return [*python_cli(), "test", *common, "--", *self.selection.args, junit]
