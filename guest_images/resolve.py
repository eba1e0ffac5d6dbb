"""Turn a recipe into exact Debian package versions, remembering the answer while apt's lists are unchanged."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from harness.debian import DebianSuite
from harness.errors import InfrastructureError
from harness.paths import cache_subdir

from .recipe import Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolution:
    """The packages an image is made of: name -> exact version; ``kernel_package`` is among them or None."""

    packages: dict[str, str]
    kernel_package: Optional[str]

    def userland(self) -> list[str]:
        return sorted(p for p in self.packages if p != self.kernel_package)


def lists_fingerprint(suite: DebianSuite) -> str:
    """Hash the names, sizes and mtimes of apt's list files: it changes whenever the lists do."""
    digest = hashlib.sha256()
    for path in sorted((suite.root / "lists").glob("*")):
        if path.is_file():
            st = path.stat()
            digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def kernel_package(suite: DebianSuite, recipe: Recipe) -> str:
    """Find the versioned kernel package the recipe's metapackage currently points at."""
    spec = recipe.kernel
    for dep in suite.depends(spec.metapackage):
        if fnmatch.fnmatchcase(dep, spec.pattern):
            name = dep + spec.suffix
            suite.version(name)  # raises when it does not exist
            return name
    raise InfrastructureError(
        f"{spec.metapackage} in Debian {recipe.suite} depends on no package matching {spec.pattern}; "
        f"update the kernel pattern in the {recipe.arch} recipe"
    )


def _compute(suite: DebianSuite, recipe: Recipe, extra: Sequence[str], with_kernel: bool) -> Resolution:
    names = suite.closure([*recipe.packages, *extra], recipe.exclude)
    kernel = kernel_package(suite, recipe) if with_kernel else None
    if kernel:
        names.append(kernel)
    versions = {name: suite.version(name) for name in sorted(set(names))}
    return Resolution(versions, kernel)


def resolve(recipe: Recipe, extra: Sequence[str] = (), with_kernel: bool = True,
            suite: Optional[DebianSuite] = None) -> Resolution:
    """Resolve the recipe against the current package lists (refreshed at most daily)."""
    suite = suite or DebianSuite(recipe.suite, recipe.arch)
    suite.update()
    key_src = json.dumps([recipe.digest, sorted(extra), with_kernel, lists_fingerprint(suite)])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    memo = cache_subdir("images/resolved") / f"{key}.json"
    if memo.exists():
        try:
            data = json.loads(memo.read_text())
            return Resolution(dict(data["packages"]), data["kernel_package"])
        except (ValueError, KeyError):
            log.warning("ignoring unreadable resolution cache %s", memo)
    log.info("resolving %s packages for %s in Debian %s", len(recipe.packages) + len(extra),
             recipe.arch, recipe.suite)
    result = _compute(suite, recipe, extra, with_kernel)
    _write_atomic(memo, json.dumps({"packages": result.packages, "kernel_package": result.kernel_package},
                                   indent=1, sort_keys=True))
    return result


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
