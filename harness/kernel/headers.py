"""Install a tree's uapi headers out of tree (``make O=… headers_install``), cached per tree and arch."""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path

from ..arch import get_arch
from ..errors import InfrastructureError, UsageError
from ..locks import file_lock
from ..paths import cache_subdir
from .source import check_kernel_tree

log = logging.getLogger(__name__)

HEADERS_TIMEOUT_S = 600.0

def kernel_arch(arch: str) -> str:
    """Map a harness arch name (s390x, x86_64; or the kernel's own s390, x86) to the kernel's ARCH= value."""
    try:
        return get_arch(arch).linux_arch
    except UsageError:
        raise InfrastructureError(f"unknown architecture {arch!r}: use s390x or x86_64") from None


def tree_identity(tree: Path) -> str:
    """A short identity of a kernel tree: its git HEAD and dirty state, else the top Makefile and path."""
    tree = Path(tree)
    if (tree / ".git").exists():
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
        status = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True)
        if head.returncode == 0:
            digest = hashlib.sha256((head.stdout + status.stdout).encode()).hexdigest()[:16]
            return f"git-{head.stdout.strip()[:12]}-{digest}"
    h = hashlib.sha256(str(tree.resolve()).encode())
    for name in ("Makefile", "include/uapi/linux/kvm.h"):
        p = tree / name
        h.update(p.read_bytes() if p.exists() else b"")
    return f"src-{h.hexdigest()[:16]}"


def installed_headers(tree: Path, arch: str) -> Path:
    """Return an include directory holding ``tree``'s uapi headers for ``arch`` (built once)."""
    tree = check_kernel_tree(tree)
    karch = kernel_arch(arch)
    out = cache_subdir("headers") / f"{tree_identity(tree)}-{karch}"
    include = out / "usr/include"
    if (out / ".kvmh-complete").exists():
        return include
    with file_lock(out.with_name(out.name + ".lock"), what=f"headers_install of {tree}"):
        if (out / ".kvmh-complete").exists():
            return include
        out.mkdir(parents=True, exist_ok=True)
        log.info("installing %s uapi headers of %s", karch, tree)
        cmd = ["make", "-s", "-C", str(tree), f"O={out}", f"ARCH={karch}", "headers_install"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=HEADERS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise InfrastructureError(f"make headers_install in {tree} took over {HEADERS_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            first = "\n".join(proc.stderr.strip().splitlines()[:5])
            raise InfrastructureError(f"make headers_install failed in {tree}: {first}", details=proc.stderr)
        (out / ".kvmh-complete").write_text("ok\n")
    return include
