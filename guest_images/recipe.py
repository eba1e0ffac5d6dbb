"""Per-architecture image recipes, kept as JSON data in ``recipes/`` (``common.json`` + ``<arch>.json``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from harness.arch import canonical
from harness.errors import UsageError

RECIPES_DIR = Path(__file__).with_name("recipes")
_LIST_KEYS = ("extra_suites", "packages", "exclude", "modules", "load_modules", "prune")


@dataclass(frozen=True)
class KernelSpec:
    """How to find the kernel package: a dependency of ``metapackage`` matching ``pattern``, + ``suffix``."""

    metapackage: str
    pattern: str
    suffix: str = ""


@dataclass(frozen=True)
class Recipe:
    arch: str
    suite: str
    extra_suites: tuple[str, ...]
    kernel: KernelSpec
    packages: tuple[str, ...]
    exclude: tuple[str, ...]
    modules: tuple[str, ...]
    load_modules: tuple[str, ...]
    prune: tuple[str, ...]
    console: str
    hostname: str
    data: str  # canonical JSON of the merged recipe, the part of the image hash that comes from here

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data.encode()).hexdigest()


def normalize_arch(arch: str) -> str:
    name = canonical(arch)
    if name not in available_arches():
        known = ", ".join(available_arches())
        raise UsageError(f"no guest image recipe for architecture {arch!r}; use one of: {known}")
    return name


def available_arches() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json") if p.stem != "common")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read recipe {path}: {exc}; fix or restore the file") from None


def merge(common: dict[str, Any], specific: dict[str, Any]) -> dict[str, Any]:
    """Merge two recipe dicts: list entries are concatenated (order kept, no duplicates), others replaced."""
    merged = dict(common)
    for key, value in specific.items():
        if key in _LIST_KEYS:
            merged[key] = list(dict.fromkeys([*common.get(key, []), *value]))
        else:
            merged[key] = value
    return merged


def load_recipe(arch: str, recipes_dir: Optional[Path] = None) -> Recipe:
    """Load the merged recipe for ``arch``."""
    arch = normalize_arch(arch)
    base = recipes_dir or RECIPES_DIR
    path = base / f"{arch}.json"
    if not path.exists():
        raise UsageError(f"no guest image recipe {path}; add one or use s390x or x86_64")
    common_path = base / "common.json"
    merged = merge(_load_json(common_path) if common_path.exists() else {}, _load_json(path))
    try:
        kernel = KernelSpec(**merged["kernel"])
        return Recipe(
            arch=merged["arch"],
            suite=merged["suite"],
            extra_suites=tuple(merged.get("extra_suites", ())),
            kernel=kernel,
            packages=tuple(merged.get("packages", ())),
            exclude=tuple(merged.get("exclude", ())),
            modules=tuple(merged.get("modules", ())),
            load_modules=tuple(merged.get("load_modules", ())),
            prune=tuple(merged.get("prune", ())),
            console=merged.get("console", "console"),
            hostname=merged.get("hostname", f"kvmh-{arch}"),
            data=json.dumps(merged, sort_keys=True, separators=(",", ":")),
        )
    except (KeyError, TypeError) as exc:
        raise UsageError(f"recipe {path} is malformed ({exc}); compare it with s390x.json") from None
