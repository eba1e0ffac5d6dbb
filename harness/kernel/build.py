"""Build a kernel (tree + series + config) out of tree, cached and incremental.

Layout under ``<cache>/kernel/builds/<repo>/<base>-<config>-<compiler>/``: ``obj/`` is the single
``make O=`` directory for that base, config and compiler (so a changed series rebuilds incrementally),
and ``out/<series-hash>/`` keeps each series' results (image, modules, .config, System.map, log,
``build.json``) so that asking again for an unchanged input returns at once without running make.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..arch import get_arch, host_arch
from ..errors import InfrastructureError
from ..locks import file_lock
from ..paths import cache_subdir
from ..stages import stage
from .config import ConfigRequest, make_config, requested_options
from .headers import kernel_arch
from .make_progress import expected_steps, remember_steps, run_make
from .series import EMPTY, KernelInputError, Series
from .worktree import PreparedSource, open_repo, prepare, prepare_in_place, repo_lock, resolve_base

log = logging.getLogger(__name__)

HOST_TOOLS = {"make": "make", "flex": "flex", "bison": "bison", "bc": "bc"}
_WARNING = re.compile(r"^(\S+?):(\d+):(?:(\d+):)? warning: (.*)$")
_MODPOST = re.compile(r"^WARNING: (modpost: .*)$")
_ERROR = re.compile(r"(: error: |: fatal error: |^make(\[\d+\])?: \*\*\* |undefined reference to|^ERROR: )")
MAKE_TIMEOUT_S = 4 * 3600.0
"""The longest one kernel ``make`` may take (a full debug build on 2 cores takes about an hour)."""
TOOL_TIMEOUT_S = 300.0
"""The longest a version query or ``make kernelrelease`` may take."""


class BuildError(InfrastructureError):
    """The kernel did not build (exit status 2); the message quotes the compiler's first error."""


@dataclass(frozen=True)
class Toolchain:
    """The compiler a build uses: cross prefix, version and whether ccache wraps it."""

    arch: str
    cross_compile: str
    version: str
    ccache: bool

    @property
    def karch(self) -> str:
        return kernel_arch(self.arch)

    def make_args(self) -> list[str]:
        args = [f"ARCH={self.karch}"]
        if self.cross_compile:
            args.append(f"CROSS_COMPILE={self.cross_compile}")
        if self.ccache:
            args.append(f"CC=ccache {self.cross_compile}gcc")
        return args

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.cross_compile}\0{self.version}".encode()).hexdigest()[:8]


def detect_toolchain(arch: str) -> Toolchain:
    """Find the (cross) compiler for ``arch``; raise naming the Debian package when it is missing."""
    kernel_arch(arch)  # validates the arch name
    spec = get_arch(arch)
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            raise KernelInputError(f"{tool} not found: install the Debian package {package} "
                                   "(apt-get install make flex bison bc)")
    env_prefix = os.environ.get("KVMH_CROSS_COMPILE")
    if env_prefix is not None:
        cross = env_prefix
    elif host_arch() == arch:
        cross = ""
    else:
        cross = spec.cross_compile
    gcc = f"{cross}gcc"
    for tool in (gcc, f"{cross}ld"):
        if shutil.which(tool) is None:
            package = spec.cross_package if cross else "gcc"
            raise KernelInputError(f"{tool} not found: install the Debian package {package} "
                                   f"(apt-get install {package}) to build {arch} kernels")
    try:
        proc = subprocess.run([gcc, "--version"], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{gcc} --version did not answer within {TOOL_TIMEOUT_S:.0f} s") from None
    version = (proc.stdout.splitlines() or ["unknown"])[0].strip()
    return Toolchain(arch=arch, cross_compile=cross, version=version, ccache=shutil.which("ccache") is not None)


@dataclass
class KernelBuild:
    """What a build produced; paths under ``output_dir`` stay valid until the cache is cleared."""

    arch: str
    image: Path
    modules_dir: Optional[Path]  # INSTALL_MOD_PATH: holds lib/modules/<release>/
    config: Path
    system_map: Path
    log: Path
    release: str
    base: str
    head: str
    series_subjects: list[str]
    series_hash: str
    config_hash: str
    compiler: str
    warnings: int
    warning_lines: list[str] = field(default_factory=list)
    new_warnings: Optional[int] = None  # vs the base build of the same base/config/compiler, when known
    new_warning_lines: list[str] = field(default_factory=list)
    incremental: bool = False
    duration_s: float = 0.0
    output_dir: Path = Path()
    build_dir: Path = Path()
    cached: bool = False

    def properties(self) -> dict[str, str]:
        """Facts to record with test results (JUnit properties)."""
        props = {
            "kernel_release": self.release, "kernel_arch": self.arch, "base_commit": self.base,
            "head_commit": self.head, "series_hash": self.series_hash[:16] if self.series_subjects else "",
            "series": " | ".join(self.series_subjects), "compiler": self.compiler,
            "build_warnings": str(self.warnings),
            "new_build_warnings": "" if self.new_warnings is None else str(self.new_warnings),
        }
        return {k: v for k, v in props.items() if v}

    def pytest_properties_args(self) -> list[str]:
        """``--kvm-property NAME=VALUE`` arguments carrying :meth:`properties` to the pytest plugin."""
        args = []
        for name, value in self.properties().items():
            args += ["--kvm-property", f"{name}={value}"]
        return args

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("cached")
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in data.items()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "KernelBuild":
        data = json.loads(text)
        for key in ("image", "modules_dir", "config", "system_map", "log", "output_dir", "build_dir"):
            if data.get(key) not in (None, ""):
                data[key] = Path(data[key])
        return cls(**data)


@dataclass(frozen=True)
class BuildPlan:
    """Where one build's objects and outputs go."""

    key_dir: Path
    obj: Path
    out: Path

    @property
    def record(self) -> Path:
        return self.out / "build.json"


def plan(repo_key: str, base: str, config_hash: str, toolchain: Toolchain, series_hash: str) -> BuildPlan:
    key_dir = cache_subdir("kernel/builds") / repo_key / f"{base[:12]}-{config_hash[:12]}-{toolchain.key}"
    return BuildPlan(key_dir=key_dir, obj=key_dir / "obj", out=key_dir / "out" / series_hash[:16])


def cached_build(p: BuildPlan) -> Optional[KernelBuild]:
    """The finished build recorded at ``p``, if its files are all still there."""
    if not p.record.is_file():
        return None
    try:
        build = KernelBuild.from_json(p.record.read_text())
    except (ValueError, TypeError):
        return None
    if not build.image.is_file() or not build.config.is_file():
        return None
    build.cached = True
    return build


def build_kernel(tree: Path, series: Series = EMPTY, arch: str = "s390x",
                 config: Optional[ConfigRequest] = None, base: Optional[str] = None, jobs: Optional[int] = None,
                 in_place: bool = False, compare_with_base: bool = True) -> KernelBuild:
    """Build ``tree`` at ``base`` (default HEAD) with ``series`` applied, for ``arch``.

    Returns at once when this exact input was built before. With ``compare_with_base`` and a series,
    the base alone is built first (once; the series build is then incremental) so that warnings the
    series introduces can be told apart.
    """
    config = config or ConfigRequest.for_arch(arch)
    if config.arch != arch:
        raise KernelInputError(f"config is for {config.arch} but the build is for {arch}: make them match")
    if in_place:
        prepared = prepare_in_place(tree, series)
        repo_key, base_sha = prepared.repo.key, prepared.base
    else:
        repo = open_repo(tree)
        base_sha = resolve_base(repo, base or series.base)
        repo_key = repo.key
    toolchain = detect_toolchain(arch)
    p = plan(repo_key, base_sha, config.hash, toolchain, series.hash)
    hit = cached_build(p)
    if hit is not None:
        log.info("kernel for %s already built: %s", arch, hit.image)
        return hit
    if in_place:
        with file_lock(p.key_dir / "lock", what=f"the kernel build {p.key_dir.name}"):
            return cached_build(p) or _build(prepared, p, config, toolchain, jobs)
    with repo_lock(repo):
        hit = cached_build(p)  # another process may have built it while we waited for the lock
        if hit is not None:
            return hit
        prepared = prepare(tree, series, base_sha)  # a series that does not apply stops here, before any make
        base_plan = plan(repo_key, base_sha, config.hash, toolchain, EMPTY.hash)
        if compare_with_base and series.patches and cached_build(base_plan) is None and not base_plan.obj.exists():
            log.info("building the base %s first to tell the series' new warnings apart", base_sha[:12])
            _build(prepare(tree, EMPTY, base_sha), base_plan, config, toolchain, jobs)
            prepared = prepare(tree, series, base_sha)
        return _build(prepared, p, config, toolchain, jobs)


def _build(src: PreparedSource, p: BuildPlan, config: ConfigRequest, toolchain: Toolchain,
           jobs: Optional[int]) -> KernelBuild:
    started = time.monotonic()
    incremental = (p.obj / "vmlinux").exists()
    if p.out.exists():
        shutil.rmtree(p.out)
    p.out.mkdir(parents=True)
    make = toolchain.make_args()
    cfg = make_config(src.tree, p.obj, config, make)
    final = requested_options(cfg.read_text())
    modules = final.get("CONFIG_MODULES") == "y"
    image_rel = get_arch(toolchain.arch).kernel_image
    targets = [Path(image_rel).name] + (["modules"] if modules else [])
    log_path = p.out / "build.log"
    jobs = jobs or os.cpu_count() or 1
    log.info("building %s kernel %s (%s) with -j%d, log %s", toolchain.arch, src.head[:12],
             "incremental" if incremental else "full", jobs, log_path)
    stage_name = f"kernel build ({toolchain.arch}, {'incremental' if incremental else 'full'})"
    expected, measured = expected_steps(config.hash, cfg.read_text())
    with stage(stage_name, detail=f"{src.head[:12]}; expected {'' if measured else '~'}{expected} files"):
        steps = _run_make(src.tree, p.obj, [*make, f"-j{jobs}", *targets], log_path, src.head, stage=stage_name,
                          expected=None if incremental else expected)
    if not incremental:
        remember_steps(config.hash, steps)
    release = _make_out(src.tree, p.obj, [*make, "-s", "kernelrelease"]).strip()
    modules_dir = None
    if modules:
        modules_dir = p.out / "modules"
        _run_make(src.tree, p.obj, [*make, "modules_install", f"INSTALL_MOD_PATH={modules_dir}",
                                    "INSTALL_MOD_STRIP=1"], p.out / "modules_install.log", src.head)
        for link in ("build", "source"):
            target = modules_dir / "lib/modules" / release / link
            if target.is_symlink():
                target.unlink()
    image = p.out / Path(image_rel).name
    shutil.copyfile(p.obj / image_rel, image)
    shutil.copyfile(cfg, p.out / "config")
    system_map = p.out / "System.map"
    if (p.obj / "System.map").exists():
        shutil.copyfile(p.obj / "System.map", system_map)
    warnings = parse_warnings(log_path.read_text(errors="replace"))
    build = KernelBuild(
        arch=toolchain.arch, image=image, modules_dir=modules_dir, config=p.out / "config", system_map=system_map,
        log=log_path, release=release, base=src.base, head=src.head, series_subjects=src.series.subjects,
        series_hash=src.series.hash, config_hash=config.hash, compiler=toolchain.version,
        warnings=len(warnings), warning_lines=warnings, incremental=incremental,
        duration_s=round(time.monotonic() - started, 1), output_dir=p.out, build_dir=p.obj,
    )
    if src.series.patches:
        _compare_with_base(build, p)
    partial = p.record.with_name(p.record.name + ".partial")
    partial.write_text(build.to_json())
    partial.replace(p.record)  # a concurrent reader sees the whole record or none
    log.info("built %s (%s) in %.0f s, %d warnings", image, release, build.duration_s, build.warnings)
    return build


def _compare_with_base(build: KernelBuild, p: BuildPlan) -> None:
    base = cached_build(BuildPlan(p.key_dir, p.obj, p.key_dir / "out" / EMPTY.hash[:16]))
    if base is None or base.incremental:
        return
    known = {warning_key(w) for w in base.warning_lines}
    new = [w for w in build.warning_lines if warning_key(w) not in known]
    build.new_warnings = len(new)
    build.new_warning_lines = new


def parse_warnings(text: str) -> list[str]:
    """Distinct compiler and modpost warning lines, in order of first appearance."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        line = line.rstrip()
        if _WARNING.match(line) or _MODPOST.match(line):
            seen.setdefault(line, None)
    return list(seen)


def warning_key(line: str) -> str:
    """A warning without its line and column, so that moved code keeps the same key."""
    m = _WARNING.match(line)
    return f"{m.group(1)}: {m.group(4)}" if m else line


def first_errors(text: str, limit: int = 6) -> list[str]:
    """The first error lines of a build log (compiler errors before make's own complaints)."""
    lines = text.splitlines()
    compiler = [i for i, line in enumerate(lines) if _ERROR.search(line) and not line.startswith("make")]
    picked = compiler or [i for i, line in enumerate(lines) if _ERROR.search(line)]
    if not picked:
        return lines[-limit:]
    start = picked[0]
    return [line.rstrip() for line in lines[start:start + limit]]


def _run_make(tree: Path, obj: Path, args: Sequence[str], log_path: Path, head: str, *, stage: str = "",
              expected: Optional[int] = None) -> int:
    """Run make in ``tree`` with ``O=obj``; returns the kbuild steps it printed. A failure raises BuildError."""
    cmd = ["make", "-C", str(tree), f"O={obj}", *args]
    status, steps, timed_out = run_make(cmd, log_path, MAKE_TIMEOUT_S, stage=stage, expected=expected)
    if timed_out:
        raise BuildError(f"kernel build at {head[:12]} did not finish within {MAKE_TIMEOUT_S:.0f} s "
                         f"(log: {log_path})")
    if status != 0:
        errors = first_errors(log_path.read_text(errors="replace"))
        raise BuildError(f"kernel build failed at {head[:12]}: {errors[0] if errors else 'make failed'} "
                         f"(log: {log_path})", details="\n".join(errors))
    return steps


def _make_out(tree: Path, obj: Path, args: Sequence[str]) -> str:
    try:
        proc = subprocess.run(["make", "-C", str(tree), f"O={obj}", *args], capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(f"make {args[-1]} in {obj} did not finish within {TOOL_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise BuildError(f"make {args[-1]} failed in {obj}: {proc.stderr.strip()[-200:]}")
    return proc.stdout
