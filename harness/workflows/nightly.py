"""``kvmh nightly``: update a tree, record its tip, build, run every suite on each target, compare, keep history.

Each night and target gets ``<history>/<night>/<target>/`` with the JUnit file, the summary, the comparison
with the previous night of the same target, the run log and the artifacts; the history index is updated
(:mod:`harness.workflows.history`). On a regression, ``--bisect`` starts ``kvmh bisect`` between the last good
and the first bad tip, within ``--bisect-budget`` seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import EXIT_INFRA, EXIT_OK, EXIT_TEST_FAILED, EXIT_USAGE, InfrastructureError, UsageError
from ..paths import cache_subdir
from ..results.compare import compare_files, format_comparison
from .bisect_steps import BuildInfo, python_cli, stop_group
from .history import History, Night

log = logging.getLogger(__name__)

NEXT_TAG = re.compile(r"^next-\d{8}$")
NO_KERNEL_TARGETS = ("local", "model")  # they run the kernel they have: nothing to build for them
TREE_PLACEHOLDER = "{tree}"


@dataclass
class Tip:
    commit: str
    label: str  # next-YYYYMMDD tag, another tag, or the short commit
    checkout: Path


@dataclass
class NightlyRequest:
    """What one ``kvmh nightly`` does."""

    tree: str
    history: Path
    targets: list[str]
    branch: Optional[str] = None
    night: Optional[str] = None
    build: str = "auto"  # "auto" | "none" | "command"
    build_command: str = ""
    suite_args: list[str] = field(default_factory=list)
    target_args: list[str] = field(default_factory=list)  # --accel, --boot-timeout, keys ...
    bisect: bool = False
    bisect_budget: float = 3 * 3600.0
    run_timeout: float = 6 * 3600.0


@dataclass
class TargetNight:
    night: Night
    regressions: list[str] = field(default_factory=list)
    new_splats: list[str] = field(default_factory=list)
    previous: Optional[Night] = None
    bisect: str = ""


# ---------------------------------------------------------------- tree


def _git(args: Sequence[str], cwd: Optional[Path] = None, timeout: float = 3600.0) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise InfrastructureError(f"git {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()[:300]}")
    return proc.stdout.strip()


def _source_url(tree: str) -> str:
    path = Path(tree).expanduser()
    if path.exists():
        if not (path / ".git").exists() and not (path / "HEAD").is_file():
            raise UsageError(f"--tree {tree} is a directory but not a git repository: pass a git checkout, "
                             "a bare repository or a git URL")
        return str(path.resolve())
    if re.match(r"^(https?|git|ssh|file)://", tree) or re.match(r"^[\w.-]+@[\w.-]+:", tree):
        return tree
    raise UsageError(f"--tree {tree} is neither an existing git repository nor a git URL: pass a path or a URL "
                     "such as https://git.kernel.org/pub/scm/linux/kernel/git/next/linux-next.git")


def update_tree(tree: str, branch: Optional[str], cache: Optional[Path] = None) -> Tip:
    """Clone ``tree`` once into the cache (else fetch it), check out the tip of ``branch`` and name it."""
    url = _source_url(tree)
    cache = cache or cache_subdir("nightly/trees")
    clone = cache / hashlib.sha256(url.encode()).hexdigest()[:16]
    if not (clone / ".git").is_dir():
        log.info("nightly: cloning %s into %s", url, clone)
        _git(["clone", "--quiet", "--no-checkout", url, str(clone)])
    else:
        log.info("nightly: fetching %s", url)
        _git(["fetch", "--quiet", "--prune", "--tags", "--force", "origin"], cwd=clone)
        _git(["remote", "set-head", "origin", "--auto"], cwd=clone)
    ref = f"origin/{branch}" if branch else "origin/HEAD"
    try:
        commit = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=clone)
    except InfrastructureError:
        raise UsageError(f"branch {branch!r} is not in {url}: pass --branch with one of its branches "
                         "(git ls-remote --heads shows them)") from None
    _git(["checkout", "--quiet", "--force", "--detach", commit], cwd=clone)
    _git(["clean", "-fdxq"], cwd=clone)
    tags = _git(["tag", "--points-at", commit], cwd=clone).split()
    label = next((t for t in sorted(tags, reverse=True) if NEXT_TAG.match(t)), None) or \
        (sorted(tags)[-1] if tags else commit[:12])
    return Tip(commit=commit, label=label, checkout=clone)


# ---------------------------------------------------------------- build


def kernel_target(target: str) -> bool:
    """Whether a kernel built from the tree is booted on ``target``."""
    return target not in NO_KERNEL_TARGETS


def build_for(request: NightlyRequest, target: str, tip: Tip, step_dir: Path) -> Optional[BuildInfo]:
    """Build the tip for ``target``: a kernel build, the user's build command, or nothing."""
    if request.build == "none" or (request.build == "auto" and not kernel_target(target)):
        return None
    if request.build == "command":
        return _command_build(request.build_command, tip, step_dir)
    from .build import arch_of_target
    from ..kernel.config import ConfigRequest
    from .bisect_kvmh import KernelStepBuilder

    arch = arch_of_target(target)
    return KernelStepBuilder(tip.checkout, arch, ConfigRequest.for_arch(arch)).build(tip.commit, step_dir)


def _command_build(command: str, tip: Tip, step_dir: Path) -> BuildInfo:
    """Run the user's build command in the checkout; ``$KVMH_BUILD_OUT/image`` (if written) is the kernel."""
    out = step_dir / "build"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    env = dict(os.environ, KVMH_BUILD_OUT=str(out), KVMH_BUILD_COMMIT=tip.commit)
    with open(step_dir / "build.log", "w") as logf:
        proc = subprocess.run(["sh", "-c", command], cwd=tip.checkout, env=env, stdout=logf, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise InfrastructureError(f"build command exited with {proc.returncode}: see {step_dir / 'build.log'}")
    image = out / "image"
    modules = out / "modules"
    return BuildInfo(image if image.is_file() else None, modules if modules.is_dir() else None, tip.checkout,
                     "full", round(time.monotonic() - started, 1), step_dir / "build.log")


# ---------------------------------------------------------------- run


def run_argv(request: NightlyRequest, target: str, build: Optional[BuildInfo], tip: Tip, night_dir: Path) -> list[str]:
    """The ``kvmh run`` command of one night on one target."""
    argv = [*python_cli(), "run", "-q", "--target", target, *request.target_args,
            "--artifacts", str(night_dir / "artifacts"), "--junitxml", str(night_dir / "junit.xml")]
    if build is not None and build.image is not None:
        argv += ["--kernel", str(build.image)]
        if build.modules is not None:
            argv += ["--modules", str(build.modules)]
    source = build.source if build is not None else tip.checkout
    suite = [a.replace(TREE_PLACEHOLDER, str(source)) for a in request.suite_args]
    return [*argv, "--", "--kvm-property", f"nightly_tip={tip.label}",
            "--kvm-property", f"nightly_commit={tip.commit}", *suite]


def _run(argv: list[str], night_dir: Path, timeout: float) -> int:
    log.info("nightly: %s", shlex.join(argv))
    with open(night_dir / "run.log", "w") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            logf.write(f"\nkvmh nightly: the run outlived {timeout:g} s and was stopped\n")
            return EXIT_INFRA
        except BaseException:
            stop_group(proc)
            raise


def _summary(night_dir: Path) -> str:
    text = (night_dir / "run.log").read_text(errors="replace") if (night_dir / "run.log").exists() else ""
    start = text.find("kvm-harness summary")
    return text[text.rfind("\n", 0, start) + 1:] if start >= 0 else text[-4000:]


# ---------------------------------------------------------------- the night


def _night_name(request: NightlyRequest) -> str:
    name = request.night or time.strftime("%Y-%m-%d")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise UsageError(f"--night {name!r} is not a plain name: pass something like 2025-06-01")
    return name


def run_nightly(request: NightlyRequest, echo: Callable[[str], None] = print) -> int:
    """One night over every target; the exit status is the worst of them (0 pass, 1 regression, 2 infra)."""
    if not request.targets:
        raise UsageError("kvmh nightly needs at least one --target")
    if request.build == "command" and not request.build_command.strip():
        raise UsageError("--build-command is empty: pass a shell command, or --no-build")
    night_name = _night_name(request)
    tip = update_tree(request.tree, request.branch)
    echo(f"kvmh nightly {night_name}: tip {tip.label} ({tip.commit[:12]}) of {request.tree}")
    worst = EXIT_OK
    with History(request.history) as history:
        for target in request.targets:
            result = _one_target(request, history, night_name, target, tip)
            echo(_line(result))
            status = result.night.exit_status
            worst = max(worst, EXIT_TEST_FAILED if result.regressions or result.new_splats else EXIT_OK,
                        status if status in (EXIT_INFRA,) else EXIT_OK)
        from .history_html import write_report

        echo(f"kvmh nightly: history in {history.root} (report {write_report(history)})")
    return worst


def _one_target(request: NightlyRequest, history: History, night_name: str, target: str, tip: Tip) -> TargetNight:
    night_dir = history.night_dir(night_name, target)
    night_dir.mkdir(parents=True, exist_ok=True)
    seq = history.next_seq()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        build = build_for(request, target, tip, night_dir)
    except (InfrastructureError, UsageError) as err:
        (night_dir / "summary.txt").write_text(f"build failed: {err}\n")
        night = Night(night_name, target, seq, tip.label, tip.commit, "infra", EXIT_INFRA,
                      str(night_dir.relative_to(history.root)), started)
        history.record(night, None)
        return TargetNight(night)
    status = _run(run_argv(request, target, build, tip, night_dir), night_dir, request.run_timeout)
    (night_dir / "summary.txt").write_text(_summary(night_dir))
    junit = night_dir / "junit.xml"
    verdict = "pass" if status == EXIT_OK else "fail" if status == EXIT_TEST_FAILED else "infra"
    if status == EXIT_USAGE or not junit.is_file():
        verdict = "infra"
    night = Night(night_name, target, seq, tip.label, tip.commit, verdict, status,
                  str(night_dir.relative_to(history.root)), started)
    result = TargetNight(night, previous=history.previous(target, seq))
    if result.previous is not None and junit.is_file():
        comp = compare_files(history.root / result.previous.directory / "junit.xml", junit)
        (night_dir / "compare.txt").write_text(format_comparison(comp) + "\n")
        result.regressions = [c.test for c in comp.regressions]
        result.new_splats = [s.fingerprint for s in comp.new_splats]
        night.regressions = len(comp.regressions)
    history.record(night, junit if junit.is_file() else None)
    if request.bisect and result.regressions and result.previous is not None \
            and result.previous.commit_sha != tip.commit:
        result.bisect = start_bisect(request, target, tip, result.previous, result.regressions[0], night_dir)
    return result


def _line(result: TargetNight) -> str:
    n = result.night
    text = f"  {n.target}: {n.status} (exit {n.exit_status}) in {n.directory}"
    if result.previous is not None:
        text += f"; against {result.previous.night} ({result.previous.tip}): {len(result.regressions)} regressions, " \
                f"{len(result.new_splats)} new splats"
    if result.bisect:
        text += f"; bisect: {result.bisect}"
    return text


# ---------------------------------------------------------------- bisect


def bisect_argv(request: NightlyRequest, target: str, tip: Tip, good: Night, test_id: str, out: Path) -> list[str]:
    """``kvmh bisect`` of the first regression between the last good and the first bad tip."""
    name = test_id.split("::", 1)[-1].split("[", 1)[0]
    return [*python_cli(), "bisect", "--target", target, *request.target_args, "--tree", str(tip.checkout),
            "--good", good.commit_sha, "--bad", tip.commit, "--artifacts", str(out), "--", "-k", name]


def start_bisect(request: NightlyRequest, target: str, tip: Tip, good: Night, test_id: str, night_dir: Path) -> str:
    """Run the bisect within the budget; return one line saying how it ended."""
    out = night_dir / "bisect"
    out.mkdir(exist_ok=True)
    argv = bisect_argv(request, target, tip, good, test_id, out)
    log.info("nightly: bisect %s", shlex.join(argv))
    with open(out / "bisect.log", "w") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout=request.bisect_budget)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            return f"stopped at its budget of {request.bisect_budget:g} s (log in {out / 'bisect.log'})"
        except BaseException:
            stop_group(proc)
            raise
    return f"exit {status} between {good.tip} and {tip.label} (log in {out / 'bisect.log'})"
