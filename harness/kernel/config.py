"""Make a kernel .config from a starting point plus Kconfig fragments, and verify the result.

Starting points: ``tinyconfig`` (the default: small and fast to build), ``defconfig``, a given
``.config`` (or ``config.gz``, e.g. a target's ``/proc/config.gz``). The harness's own fragments
(``fragments/*.config``) for the architecture are merged with the user's with
``scripts/kconfig/merge_config.sh -m``; tinyconfig is then resolved with ``allnoconfig`` (so options
that become visible stay off, like ``make tinyconfig``), the others with ``olddefconfig``. Every
option a fragment asks for must end up in the final .config with the asked value, else a
:class:`ConfigError` names the options that did not.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import InfrastructureError
from .series import KernelInputError

log = logging.getLogger(__name__)

CONFIG_TIMEOUT_S = 600.0
"""The longest a config step (allnoconfig, merge_config.sh, olddefconfig) may take."""

STARTS = ("tinyconfig", "defconfig")
_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


class ConfigError(KernelInputError):
    """The configuration cannot be made as asked (exit status 2)."""


@dataclass(frozen=True)
class Fragment:
    """A named Kconfig fragment."""

    name: str
    text: str

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "Fragment":
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config fragment {path} does not exist: pass a file of CONFIG_X=y lines")
        text = path.read_text(errors="replace")
        if not requested_options(text):
            raise ConfigError(f"config fragment {path} sets no CONFIG_ option: pass a file of CONFIG_X=y lines")
        return cls(name=str(path), text=text)


def harness_fragment(name: str) -> Fragment:
    """One of the harness's fragments by file name (``s390x.config``)."""
    ref = resources.files("harness.kernel.fragments").joinpath(name)
    if not ref.is_file():
        raise ConfigError(f"the harness has no config fragment {name!r}")
    return Fragment(name=f"harness:{name}", text=ref.read_text())


def harness_fragments(arch: str, kvm: bool = True, debug: bool = False) -> list[Fragment]:
    """The harness's fragments for an arch: base, arch, KVM (and debug when asked)."""
    names = ["base.config", f"{arch}.config"]
    if kvm:
        names += ["kvm.config", f"kvm-{arch}.config"]
    if debug:
        names += ["debug.config", f"debug-{arch}.config"]
    root = resources.files("harness.kernel.fragments")
    return [harness_fragment(n) for n in names if root.joinpath(n).is_file()]


@dataclass(frozen=True)
class ConfigRequest:
    """What configuration to build: a starting point and fragments (applied in order, later wins)."""

    arch: str
    start: str = "tinyconfig"  # tinyconfig | defconfig | path to a .config or config.gz
    fragments: tuple[Fragment, ...] = ()
    start_config: str = ""  # the starting .config's text, read when the request is made

    @classmethod
    def for_arch(cls, arch: str, start: Optional[str] = None, user_fragments: Sequence[Union[str, Path]] = (),
                 debug: bool = False, harness: bool = True) -> "ConfigRequest":
        """The harness fragments for ``arch`` (unless ``harness`` is false), then the user's."""
        frags = harness_fragments(arch, debug=debug) if harness else []
        frags += [Fragment.from_file(f) for f in user_fragments]
        start = str(start) if start else "tinyconfig"
        if start not in STARTS:
            path = Path(start).expanduser()
            if not path.is_file():
                raise ConfigError(f"starting config {start} does not exist: pass tinyconfig, defconfig or a "
                                  ".config file")
            start = str(path.resolve())
            return cls(arch=arch, start=start, fragments=tuple(frags), start_config=read_config_text(path))
        return cls(arch=arch, start=start, fragments=tuple(frags))

    def start_text(self) -> str:
        if self.start in STARTS or self.start_config:
            return self.start_config
        return read_config_text(Path(self.start))

    @property
    def hash(self) -> str:
        """Identity of the inputs (not of the tree, which the build key covers)."""
        h = hashlib.sha256(b"kvmh-config-v1\0" + self.arch.encode())
        h.update(self.start.encode() if self.start in STARTS else b"file")
        h.update(self.start_text().encode())
        for f in self.fragments:
            h.update(b"\0" + f.text.encode())
        return h.hexdigest()

    def requested(self) -> dict[str, str]:
        """Options the fragments ask for (later fragments override earlier ones)."""
        wanted: dict[str, str] = {}
        for f in self.fragments:
            wanted.update(requested_options(f.text))
        return wanted


def read_config_text(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode(errors="replace")


def requested_options(text: str) -> dict[str, str]:
    """Parse ``CONFIG_X=v`` and ``# CONFIG_X is not set`` lines; unset is reported as ``n``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _SET.match(line)
        if m:
            values[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            values[m.group(1)] = "n"
    return values


def unmet_options(requested: dict[str, str], final: dict[str, str]) -> list[tuple[str, str, str]]:
    """(option, wanted, got) for each requested value not in the final config; ``n`` means unset."""
    unmet = []
    for name, want in requested.items():
        got = final.get(name, "n")
        if want == "n" and got == "n":
            continue
        if got != want:
            unmet.append((name, want, got))
    return unmet


def verify(requested: dict[str, str], config_path: Path, arch: str) -> None:
    """Raise a ConfigError naming every requested option the final .config does not have."""
    final = requested_options(config_path.read_text(errors="replace"))
    unmet = unmet_options(requested, final)
    if unmet:
        shown = ", ".join(f"{n}={w} (got {'not set' if g == 'n' else g})" for n, w, g in unmet[:8])
        more = f" and {len(unmet) - 8} more" if len(unmet) > 8 else ""
        raise ConfigError(f"config options not in the final .config for {arch}: {shown}{more} — they do not "
                          "exist or their dependencies are off for this arch and tree: fix or drop them")


def make_config(tree: Path, build_dir: Path, request: ConfigRequest, make: Sequence[str]) -> Path:
    """Write ``build_dir/.config`` for ``request`` and verify it; leave it untouched when unchanged.

    ``make`` is the make command line prefix with ARCH/CROSS_COMPILE/CC (no O=, no target).
    """
    scratch = build_dir.with_name(build_dir.name + "-kconfig")
    scratch.mkdir(parents=True, exist_ok=True)
    merge = tree / "scripts/kconfig/merge_config.sh"
    if not merge.is_file():
        raise ConfigError(f"{merge} is missing: the tree is not a complete kernel source tree")
    frag_dir = scratch / "fragments"
    if frag_dir.exists():
        shutil.rmtree(frag_dir)
    frag_dir.mkdir()
    frag_paths = []
    for i, f in enumerate(request.fragments):
        p = frag_dir / f"{i:02d}-{Path(f.name.split(':')[-1]).name}"
        p.write_text(f.text if f.text.endswith("\n") else f.text + "\n")
        frag_paths.append(p)
    o = [f"O={scratch}"]
    if request.start == "tinyconfig":
        tiny = [tree / "kernel/configs/tiny-base.config", tree / "kernel/configs/tiny.config"]
        karch = _arg(make, "ARCH")
        tiny += [p for p in (tree / f"arch/{karch}/configs/tiny.config",) if p.is_file()]
        allconfig = _merge(tree, scratch, [p for p in tiny if p.is_file()] + frag_paths)
        _make(tree, [*make, *o, f"KCONFIG_ALLCONFIG={allconfig}", "allnoconfig"])
    else:
        if request.start == "defconfig":
            _make(tree, [*make, *o, "defconfig"])
            start = scratch / "start.config"
            shutil.copyfile(scratch / ".config", start)
        else:
            start = scratch / "start.config"
            start.write_text(request.start_text())
        merged = _merge(tree, scratch, [start] + frag_paths)
        shutil.copyfile(merged, scratch / ".config")
        _make(tree, [*make, *o, "olddefconfig"])
    result = scratch / ".config"
    verify(request.requested(), result, request.arch)
    build_dir.mkdir(parents=True, exist_ok=True)
    final = build_dir / ".config"
    if not final.exists() or final.read_bytes() != result.read_bytes():
        shutil.copyfile(result, final)
        log.info("wrote %s (%d options set)", final, len(requested_options(result.read_text())))
    return final


def _arg(make: Sequence[str], name: str) -> str:
    for a in make:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return ""


def _merge(tree: Path, out: Path, files: list[Path]) -> Path:
    """merge_config.sh -m: later files override earlier ones; returns the merged file."""
    cmd = ["bash", str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(out), *map(str, files)]
    try:
        proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=CONFIG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"merge_config.sh took over {CONFIG_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise ConfigError(f"merge_config.sh failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}",
                          details=proc.stdout + proc.stderr)
    merged = out / "merged.config"
    shutil.move(str(out / ".config"), merged)
    return merged


def _make(tree: Path, cmd: list[str]) -> None:
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(["make", "-s", "-C", str(tree), *cmd], capture_output=True, text=True,
                              timeout=CONFIG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"make {cmd[-1]} in {tree} took over {CONFIG_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        raise InfrastructureError(f"make {cmd[-1]} failed in {tree}: {' / '.join(lines[-3:])}",
                                  details=proc.stdout + proc.stderr)


def target_config(target, dest: Path) -> Path:
    """Save a running target's ``/proc/config.gz`` (uncompressed) to ``dest``, a starting point."""
    result = target.run("gzip -dc /proc/config.gz", timeout=60)
    if not result.ok or "CONFIG_" not in result.stdout:
        raise ConfigError(f"{target.spec} has no readable /proc/config.gz (CONFIG_IKCONFIG_PROC off): pass a "
                          ".config or start from defconfig")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(result.stdout)
    return dest
