"""Pack the agent and ``uapi.py`` into one runnable zipapp, so the target needs nothing but ``python3``.

The archive is byte-for-byte reproducible (fixed timestamps), so its digest names the version on the target.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent
# name in the zipapp -> source file
MODULES = {"agent.py": HERE / "agent.py", "steps.py": HERE / "steps.py", "uapi.py": HERE / "uapi.py",
           "arch_aliases.py": HERE.parent / "arch" / "aliases.py"}
MAIN = "import sys\nimport agent\nsys.exit(agent.main())\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


@lru_cache(maxsize=1)
def bundle_bytes() -> bytes:
    """The zipapp: ``__main__.py`` plus the agent and ABI modules as top-level modules."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in [("__main__.py", MAIN)] + [(name, path.read_text()) for name, path in MODULES.items()]:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, text)
    return buf.getvalue()


def bundle_digest() -> str:
    return hashlib.sha256(bundle_bytes()).hexdigest()[:16]


def remote_path() -> str:
    """Where the runner puts the bundle on a target: a name relative to the target's private working
    directory (never a shared path such as /tmp); the digest keeps stale copies from being used."""
    return f"kvmh-agent-{bundle_digest()}.pyz"


def write_bundle(directory: Path) -> Path:
    """Write the bundle into ``directory`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"kvmh-agent-{bundle_digest()}.pyz"
    path.write_bytes(bundle_bytes())
    return path
