"""Build a kernel tree's KVM selftests (plus the harness's own) out of tree, cached.

The user's tree is only read: the files the kvm selftest Makefile needs are copied into a
build area under the cache, the harness's C selftests are dropped into the copy, and
``make OUTPUT=…`` runs there against the tree's uapi headers installed out of tree
(``KHDR_INCLUDES``/``LINUX_HDR_PATH``), never against the toolchain's older ones.

Concurrent runs share the cache safely: ``<key>.lock`` (exclusive) serialises building and loading
an entry, and every process that uses an entry holds ``<key>.use`` shared until it exits
(:func:`hold_build`).  Pruning removes only entries it can lock both ways, least recently used first.

Why one module of this size: one job, the cached out-of-tree build of the selftests; copying, keys, locking
and pruning all act on the same cache entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..arch import canonical, get_arch
from ..errors import InfrastructureError, UsageError
from ..kernel.headers import installed_headers, kernel_arch, tree_identity
from ..kernel.source import check_kernel_tree
from ..locks import file_lock, try_file_lock
from ..paths import cache_subdir

log = logging.getLogger(__name__)

SELFTEST_ARCHES = ("s390x", "x86_64")

BUILD_FORMAT = 1
"""Bumped whenever the build recipe changes, so older cache entries are not reused."""

DEFAULT_TIMEOUT_S = 45.0
"""The kselftest runner's per-program timeout when a suite has no ``settings`` file."""

OUR_SOURCES_DIR = Path(__file__).with_name("c")
OUR_TESTS_S390 = ("async_teardown_test",)
"""The harness's own s390 selftests (``c/<name>.c``), built into the tree's s390 directory."""

_OUR_TEST_NEEDS = "KVM_CAP_S390_PROTECTED_ASYNC_DISABLE"
_LIST_TARGET = "kvmh-list-programs"
_MANIFEST = "manifest.json"
_LAST_USED = "last-used"
KEEP_BUILDS = 4
"""Cached builds kept per architecture (one per tree state; the least recently used go)."""
BUILD_TIMEOUT_S = 3600.0
"""The longest a selftest ``make`` may take."""
TOOL_TIMEOUT_S = 60.0
"""The longest a tool's version query or the program listing may take."""

# Parts of tools/ the kvm selftests need besides tools/testing/selftests/kvm itself.
_TOOLS_DIRS = ("tools/include", "tools/arch", "tools/build", "tools/lib", "tools/scripts")
_SELFTEST_DIRS = ("kvm", "rseq")
_TOP_FILES = ("scripts/subarch.include",)



@dataclass(frozen=True)
class SelftestBuild:
    """A finished build: program names relative to ``out_dir`` and their timeout."""

    arch: str
    tree: Path
    out_dir: Path
    programs: tuple[str, ...]
    timeout_s: float
    key: str
    compiler: str
    tree_id: str
    cached: bool = False
    duration_s: float = 0.0
    omitted: dict[str, str] = field(default_factory=dict)

    def path(self, program: str) -> Path:
        """Absolute path of a built program (``s390x/memop``)."""
        return self.out_dir / program

    @property
    def arch_dir(self) -> str:
        """The tree's directory for arch-specific tests (``s390x`` up to 6.12, ``s390`` later)."""
        for name in self.programs:
            if "/" in name:
                return name.split("/", 1)[0]
        return ""


@dataclass(frozen=True)
class Toolchain:
    """The C compiler used for one arch: the ``CROSS_COMPILE`` prefix and its version."""

    cross_prefix: str
    version: str

    @property
    def gcc(self) -> str:
        return f"{self.cross_prefix}gcc"


def harness_arch(arch: str) -> str:
    """Normalise an arch name to ``s390x`` or ``x86_64``."""
    name = canonical(arch)
    if name not in SELFTEST_ARCHES:
        raise UsageError(f"cannot build KVM selftests for {arch!r}: use s390x or x86_64")
    return name


def cross_prefix(arch: str, host: Optional[str] = None) -> str:
    """``CROSS_COMPILE`` value to build for ``arch`` on ``host`` (empty when native)."""
    arch = harness_arch(arch)
    host = canonical(host or platform.machine())
    return "" if arch == host else get_arch(arch).cross_compile


def find_toolchain(arch: str) -> Toolchain:
    """Locate the compiler for ``arch``; raise naming the Debian package when it is missing."""
    prefix = cross_prefix(arch)
    gcc = f"{prefix}gcc"
    if shutil.which(gcc) is None:
        package = get_arch(arch).cross_package if prefix else "gcc"
        raise InfrastructureError(f"{gcc} not found: install {package} (apt-get install {package})")
    proc = _run([gcc, "--version"], f"{gcc} --version", TOOL_TIMEOUT_S, capture_output=True, text=True)
    first = proc.stdout.splitlines()[0] if proc.stdout else gcc
    return Toolchain(cross_prefix=prefix, version=first.strip())


def settings_timeout(kvm_dir: Path) -> float:
    """The suite's ``timeout=`` from ``kvm/settings``, else the kselftest default of 45 s."""
    settings = kvm_dir / "settings"
    if settings.is_file():
        for line in settings.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "timeout":
                try:
                    return float(value.strip())
                except ValueError:
                    log.warning("ignoring malformed %s line %r", settings, line)
    return DEFAULT_TIMEOUT_S


def s390_dir_name(kvm_dir: Path) -> str:
    """The s390 test directory of a tree: ``s390x`` (up to 6.12) or ``s390`` (renamed later)."""
    for name in ("s390x", "s390"):
        if (kvm_dir / name).is_dir():
            return name
    raise InfrastructureError(f"{kvm_dir} has neither s390x/ nor s390/: not a KVM selftest directory")


def tree_has_async_teardown(tree: Path) -> bool:
    """Whether the tree's uapi knows the asynchronous teardown capability our test needs."""
    header = tree / "include/uapi/linux/kvm.h"
    return header.is_file() and _OUR_TEST_NEEDS in header.read_text(errors="replace")


def our_sources() -> list[Path]:
    """The harness's own C selftest sources."""
    return [OUR_SOURCES_DIR / f"{name}.c" for name in OUR_TESTS_S390]


def source_files(tree: Path) -> list[Path]:
    """Every file of the tree the build reads (relative to the tree), sorted."""
    selftests = tree / "tools/testing/selftests"
    roots = [tree / d for d in _TOOLS_DIRS] + [selftests / d for d in _SELFTEST_DIRS]
    roots += [selftests / d for d in _included_selftest_dirs(selftests / "kvm")]
    files: set[Path] = set()
    for root in roots:
        if root.is_dir():
            files.update(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    files.update(p for p in selftests.iterdir() if p.is_file())
    files.update(tree / f for f in _TOP_FILES if (tree / f).is_file())
    return sorted(p.relative_to(tree) for p in files)


def _included_selftest_dirs(kvm_dir: Path) -> list[str]:
    """Sibling selftest directories the kvm Makefiles include (``../cgroup/lib/…`` in newer trees)."""
    found: set[str] = set()
    for makefile in kvm_dir.glob("Makefile*"):
        for match in re.finditer(r"^\s*-?include\s+\.\./(\w[\w.-]*)/", makefile.read_text(errors="replace"), re.M):
            found.add(match.group(1))
    return sorted(found)


def hash_files(base: Path, names: Iterable[Path], digest: Optional["hashlib._Hash"] = None) -> str:
    """SHA-256 over relative names and contents."""
    h = digest or hashlib.sha256()
    for name in names:
        h.update(str(name).encode() + b"\0")
        h.update((base / name).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def cache_key(*, arch: str, compiler: str, tree_id: str, sources_hash: str, headers_hash: str,
              ours_hash: str) -> str:
    """The cache key of a build: recipe version, arch, compiler, tree and every input's content."""
    h = hashlib.sha256()
    for part in (f"format={BUILD_FORMAT}", arch, compiler, tree_id, sources_hash, headers_hash, ours_hash):
        h.update(part.encode() + b"\n")
    return f"{arch}-{h.hexdigest()[:20]}"


def make_command(*, kvm_dir: Path, out_dir: Path, arch: str, cross: str, headers: Path,
                 jobs: int, target: Optional[str] = None) -> list[str]:
    """The ``make`` invocation that builds (or lists) the kvm selftests out of tree."""
    cmd = ["make", "--no-print-directory", "-C", str(kvm_dir), f"-j{max(1, jobs)}", f"ARCH={kernel_arch(arch)}",
           f"OUTPUT={out_dir}", f"KHDR_INCLUDES=-isystem {headers}", f"LINUX_HDR_PATH={headers}/"]
    if cross:
        cmd.append(f"CROSS_COMPILE={cross}")
    if target:
        cmd += ["-s", target]
    return cmd


def add_programs_to_makefile(makefile: Path, programs: Sequence[str]) -> None:
    """Append ``programs`` to the arch's TEST_GEN_PROGS in a (copied) kvm Makefile, and a list target."""
    text = makefile.read_text()
    pattern = re.compile(r"^TEST_GEN_PROGS \+= \$\(TEST_GEN_PROGS_\$\((?:ARCH_DIR|ARCH|SRCARCH)\)\)[ \t]*$", re.M)
    match = pattern.search(text)
    if programs and match is None:
        raise InfrastructureError(f"cannot find where {makefile} collects TEST_GEN_PROGS: unknown Makefile layout")
    if programs and match is not None:
        extra = "".join(f"\nTEST_GEN_PROGS += {p}" for p in programs)
        text = text[: match.end()] + extra + text[match.end():]
    text += f"\n{_LIST_TARGET}:\n\t@echo $(TEST_GEN_PROGS)\n"
    makefile.write_text(text)


def _program_makefile(kvm_dir: Path) -> Path:
    """The file that lists the programs: ``Makefile.kvm`` in newer trees, else ``Makefile``."""
    newer = kvm_dir / "Makefile.kvm"
    return newer if newer.is_file() else kvm_dir / "Makefile"


def first_errors(log_text: str, limit: int = 6) -> str:
    """The compiler's first error lines from a build log."""
    lines = log_text.splitlines()
    picked = [ln for ln in lines if re.search(r"\berror\b|\*\*\*|undefined reference", ln, re.I)]
    return "\n".join((picked or lines[-limit:])[:limit])


@dataclass
class _Inputs:
    tree: Path
    arch: str
    toolchain: Toolchain
    headers: Path
    files: list[Path]
    ours: list[Path]
    omitted: dict[str, str]
    key: str
    tree_id: str


def _inputs(tree: Path, arch: str, with_ours: bool) -> _Inputs:
    kvm_dir = tree / "tools/testing/selftests/kvm"
    if not (kvm_dir / "Makefile").is_file():
        raise UsageError(f"{tree} has no tools/testing/selftests/kvm/Makefile: pass a kernel tree with KVM selftests")
    toolchain = find_toolchain(arch)
    headers = installed_headers(tree, arch)
    files = source_files(tree)
    ours: list[Path] = []
    omitted: dict[str, str] = {}
    if with_ours and arch == "s390x":
        if tree_has_async_teardown(tree):
            ours = our_sources()
        else:
            for src in our_sources():
                omitted[src.stem] = f"the tree's uapi kvm.h lacks {_OUR_TEST_NEEDS} (needs Linux 6.2 or newer)"
    header_files = sorted(p.relative_to(headers) for p in headers.rglob("*.h"))
    tree_id = tree_identity(tree)
    key = cache_key(
        arch=arch,
        compiler=toolchain.version,
        tree_id=tree_id,
        sources_hash=hash_files(tree, files),
        headers_hash=hash_files(headers, header_files),
        ours_hash=hash_files(OUR_SOURCES_DIR, [Path(p.name) for p in ours]),
    )
    return _Inputs(tree, arch, toolchain, headers, files, ours, omitted, key, tree_id)


def build_selftests(tree: Path, arch: str, *, jobs: Optional[int] = None, with_ours: bool = True,
                    cache_root: Optional[Path] = None) -> SelftestBuild:
    """Build ``tree``'s KVM selftests for ``arch`` (cached); raise InfrastructureError on a build error."""
    start = time.monotonic()
    tree = check_kernel_tree(tree)
    arch = harness_arch(arch)
    inputs = _inputs(tree, arch, with_ours)
    root = cache_root or cache_subdir("selftests")
    entry = root / inputs.key
    with file_lock(_lock_path(entry), what=f"the KVM selftest build {inputs.key}"):
        cached = _load(entry, tree, inputs)
        if cached is None:
            _build_into(entry, inputs, jobs or os.cpu_count() or 1)
            cached = _load(entry, tree, inputs)
            if cached is None:
                raise InfrastructureError(f"the KVM selftest build in {entry} left no usable manifest: "
                                          f"remove it and retry")
            result = _with(cached, cached=False, duration_s=time.monotonic() - start)
        else:
            log.info("KVM selftests for %s: cache hit %s", arch, entry)
            result = _with(cached, cached=True, duration_s=time.monotonic() - start)
        hold_build(result)  # taken while the entry is locked, so no prune can slip in between
    if not result.cached:
        prune_cache(root, arch, keep=KEEP_BUILDS)
    return result


def _lock_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".lock")


def _use_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".use")


_HELD: dict[Path, contextlib.ExitStack] = {}


def hold_build(build: SelftestBuild) -> None:
    """Keep ``build``'s cache entry from being pruned until this process exits, and mark it used now."""
    entry = build.out_dir.parent
    if entry not in _HELD:
        stack = contextlib.ExitStack()
        stack.enter_context(file_lock(_use_path(entry), shared=True, what=f"the KVM selftest build {entry.name}"))
        _HELD[entry] = stack
    try:
        (entry / _LAST_USED).touch()
    except OSError as err:
        log.debug("cannot mark %s as used: %s", entry, err)


def release_build(build: SelftestBuild) -> None:
    """Let ``build``'s entry be pruned again (by other processes too)."""
    stack = _HELD.pop(build.out_dir.parent, None)
    if stack is not None:
        stack.close()


def _last_used(entry: Path) -> float:
    stamps = [entry / _LAST_USED, entry / _MANIFEST]
    return max((p.stat().st_mtime for p in stamps if p.exists()), default=0.0)


def prune_cache(root: Path, arch: str, keep: int) -> list[Path]:
    """Remove all but the ``keep`` most recently used entries of ``arch``; return what was removed.

    An entry that any process holds (:func:`hold_build`) or is building stays.  Lock files stay too:
    removing one would let two processes hold "the" lock at once.
    """
    entries = [p for p in root.glob(f"{arch}-*") if p.is_dir() and (p / _MANIFEST).is_file()]
    entries.sort(key=_last_used, reverse=True)
    removed = []
    for old in entries[keep:]:
        with try_file_lock(_lock_path(old)) as unlocked, try_file_lock(_use_path(old)) as unused:
            if not (unlocked and unused):
                log.debug("keeping %s: another run uses it", old)
                continue
            shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    if removed:
        log.info("removed %d old KVM selftest builds for %s", len(removed), arch)
    return removed


def _with(build: SelftestBuild, **changes: object) -> SelftestBuild:
    values = {f: getattr(build, f) for f in build.__dataclass_fields__}
    values.update(changes)
    return SelftestBuild(**values)  # type: ignore[arg-type]


def _run(cmd: Sequence[str], what: str, timeout: float, **kwargs: object) -> subprocess.CompletedProcess:
    """``subprocess.run`` with a deadline; running past it is an infrastructure error naming the step."""
    try:
        return subprocess.run(list(cmd), timeout=timeout, **kwargs)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"{what} did not finish within {timeout:.0f} s") from None


def _load(entry: Path, tree: Path, inputs: _Inputs) -> Optional[SelftestBuild]:
    manifest = entry / _MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
    except ValueError:
        return None
    out_dir = entry / "out"
    programs = tuple(data.get("programs", ()))
    if not programs or not all((out_dir / p).is_file() for p in programs):
        return None
    return SelftestBuild(
        arch=inputs.arch, tree=tree, out_dir=out_dir, programs=programs, timeout_s=float(data["timeout_s"]),
        key=inputs.key, compiler=inputs.toolchain.version, tree_id=inputs.tree_id,
        omitted=dict(data.get("omitted", {})),
    )


def _copy_sources(tree: Path, files: Sequence[Path], dest: Path) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / rel, target)


def _build_into(entry: Path, inputs: _Inputs, jobs: int) -> None:
    """Copy the sources, add ours, run make, and write the manifest; the entry appears complete or not at all."""
    for stale in entry.parent.glob(entry.name + ".partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = entry.with_name(entry.name + f".partial-{os.getpid()}")
    if entry.exists():
        shutil.rmtree(entry)
    src, out = work / "src", work / "out"
    _copy_sources(inputs.tree, inputs.files, src)
    kvm_dir = src / "tools/testing/selftests/kvm"
    extra: list[str] = []
    if inputs.ours:
        sdir = s390_dir_name(kvm_dir)
        for source in inputs.ours:
            shutil.copy2(source, kvm_dir / sdir / source.name)
            extra.append(f"{sdir}/{source.stem}")
    add_programs_to_makefile(_program_makefile(kvm_dir), extra)
    out.mkdir(parents=True)
    common = dict(kvm_dir=kvm_dir, out_dir=out, arch=inputs.arch, cross=inputs.toolchain.cross_prefix,
                  headers=inputs.headers)
    cmd = make_command(jobs=jobs, **common)  # type: ignore[arg-type]
    log.info("building KVM selftests for %s: %s", inputs.arch, " ".join(cmd))
    started = time.monotonic()
    proc = _run(cmd, f"building the KVM selftests for {inputs.arch}", BUILD_TIMEOUT_S,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (work / "build.log").write_text(proc.stdout)
    if proc.returncode != 0:
        raise InfrastructureError(
            f"building the KVM selftests of {inputs.tree} for {inputs.arch} failed "
            f"(log: {work / 'build.log'}): {first_errors(proc.stdout)}", details=proc.stdout)
    listing = _run(make_command(jobs=1, target=_LIST_TARGET, **common),  # type: ignore[arg-type]
                   "listing the built KVM selftests", TOOL_TIMEOUT_S, capture_output=True, text=True)
    if listing.returncode != 0:
        raise InfrastructureError(f"cannot list the built KVM selftests: {first_errors(listing.stderr)}")
    programs = _relative_programs(listing.stdout.split(), out)
    missing = [p for p in programs if not (out / p).is_file()]
    if not programs or missing:
        raise InfrastructureError(f"the KVM selftest build of {inputs.tree} produced no {missing or 'programs'}: "
                                  f"see {work / 'build.log'}")
    manifest = {
        "programs": programs,
        "timeout_s": settings_timeout(kvm_dir),
        "arch": inputs.arch,
        "tree": str(inputs.tree),
        "tree_id": inputs.tree_id,
        "compiler": inputs.toolchain.version,
        "headers": str(inputs.headers),
        "omitted": inputs.omitted,
        "build_s": round(time.monotonic() - started, 2),
    }
    (work / _MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    work.rename(entry)


def _relative_programs(words: Sequence[str], out: Path) -> list[str]:
    prefix = str(out).rstrip("/") + "/"
    return [w[len(prefix):] if w.startswith(prefix) else w for w in words]
