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


def _memo(kind: str, parts: list) -> Path:
    key = hashlib.sha256(json.dumps([kind, *parts]).encode()).hexdigest()[:32]
    return cache_subdir("images/resolved") / f"{kind}-{key}.json"


def _read_memo(path: Path) -> Optional[dict]:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        log.warning("ignoring unreadable resolution cache %s", path)
        return None


def resolve(recipe: Recipe, extra: Sequence[str] = (), with_kernel: bool = True,
            suite: Optional[DebianSuite] = None) -> Resolution:
    """Resolve the recipe against the current package lists (refreshed at most daily).

    The userland closure and the kernel package are remembered separately, keyed by the recipe
    and a fingerprint of apt's lists, so a rebuild with unchanged lists asks apt nothing.
    """
    suite = suite or DebianSuite(recipe.suite, recipe.arch)
    suite.update()
    fingerprint = lists_fingerprint(suite)
    userland_memo = _memo("userland", [recipe.digest, sorted(extra), fingerprint])
    packages = _read_memo(userland_memo)
    if packages is None:
        log.info("resolving %d packages for %s in Debian %s", len(recipe.packages) + len(extra),
                 recipe.arch, recipe.suite)
        names = suite.closure([*recipe.packages, *extra], recipe.exclude)
        packages = {name: suite.version(name) for name in names}
        _write_atomic(userland_memo, json.dumps(packages, indent=1, sort_keys=True))
    kernel = None
    if with_kernel:
        kernel_memo = _memo("kernel", [recipe.digest, fingerprint])
        found = _read_memo(kernel_memo)
        if found is None:
            name = kernel_package(suite, recipe)
            found = {name: suite.version(name)}
            _write_atomic(kernel_memo, json.dumps(found))
        kernel = next(iter(found))
        packages = {**packages, **found}
    return Resolution(dict(sorted(packages.items())), kernel)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
