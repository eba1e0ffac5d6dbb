"""``kvmh doctor``: check that this machine has what the harness needs and name the package for each gap.

The toolchains are checked by doing: a static C program is compiled, linked and run (the s390x one under
``qemu-s390x``), and a kernel tree's uapi headers are installed into a temporary directory.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

from ..errors import HarnessError


Problem = Union[str, Tuple[str, str]]


@dataclass(frozen=True)
class Check:
    """One requirement: what it is, how to test it, and how to fix it."""

    name: str
    probe: Callable[[], Optional[Problem]]  # None when fine, else what is wrong (and, maybe, the precise fix)
    fix: str
    required: bool = True


def _binary(name: str) -> Callable[[], Optional[str]]:
    def probe() -> Optional[str]:
        return None if shutil.which(name) else f"{name} not found"

    return probe


def _dev_kvm() -> Optional[str]:
    from ..accel import kvm_status

    usable, reason = kvm_status()
    return None if usable else reason


def _mirror_serves_lock() -> Optional[str]:
    from guest_images.resolve import lock_path, refresh_command
    from ..debian_lock import load_lock
    from ..debian_pool import file_url, is_served, mirrors_from

    try:
        kernel = load_lock(lock_path("s390x")).kernel()
    except HarnessError as err:
        return str(err)
    if kernel is None:
        return f"the s390x lock pins no kernel; {refresh_command('s390x')}"
    mirrors = mirrors_from()
    if any(is_served(file_url(m, kernel)) for m in mirrors):
        return None
    return f"no mirror serves {kernel.basename} (tried {', '.join(mirrors)}); {refresh_command('s390x')}"


def _python_module(name: str) -> Callable[[], Optional[str]]:
    def probe() -> Optional[str]:
        import importlib.util

        return None if importlib.util.find_spec(name) else f"Python module {name} missing"

    return probe


def _toolchain_checks() -> list[Check]:
    from .doctor_probes import compile_and_run, toolchains

    checks = []
    for chain in toolchains():
        def probe(chain=chain) -> Optional[Problem]:  # type: ignore[no-untyped-def]
            found = compile_and_run(chain)
            return None if found is None else (found.problem, f"apt-get install {found.package}")

        run = f" run under {chain.runner[0]}" if chain.runner else " run"
        checks.append(Check(f"{chain.label}: static C program built and{run}", probe,
                            f"apt-get install {chain.compiler_package} {chain.libc_package}"))
    return checks


def _default_tree() -> Optional[Path]:
    """The tree ``kvmh source get`` unpacked, when it has been (doctor downloads nothing this large)."""
    from ..kernel.source import cached_tree

    return cached_tree()


def _headers_check(tree: Optional[Path]) -> Check:
    from .doctor_probes import headers_install

    def probe() -> Optional[Problem]:
        found_tree = tree or _default_tree()
        if found_tree is None:
            return "no kernel tree to try yet (kvmh run fetches one; or pass --tree)"
        found = headers_install(found_tree, "s390x")
        return None if found is None else (found.problem, f"apt-get install {found.package}")

    return Check("uapi headers_install into a temporary directory", probe, "apt-get install make rsync",
                 required=tree is not None)

CHECKS: tuple[Check, ...] = (
    Check("qemu-system-s390x", _binary("qemu-system-s390x"), "apt-get install qemu-system-misc"),
    Check("qemu-system-x86_64", _binary("qemu-system-x86_64"), "apt-get install qemu-system-x86"),
    Check("qemu-s390x (user emulation)", _binary("qemu-s390x"), "apt-get install qemu-user"),
    Check("xz (unpacks linux-source)", _binary("xz"), "apt-get install xz-utils"),
    Check("make", _binary("make"), "apt-get install make"),
    Check("git", _binary("git"), "apt-get install git"),
    Check("flex", _binary("flex"), "apt-get install flex"),
    Check("bison", _binary("bison"), "apt-get install bison"),
    Check("bc", _binary("bc"), "apt-get install bc"),
    Check("rsync (headers_install)", _binary("rsync"), "apt-get install rsync"),
    Check("libelf headers", lambda: None if os.path.exists("/usr/include/libelf.h") else "libelf.h missing",
          "apt-get install libelf-dev"),
    Check("OpenSSL headers", lambda: None if os.path.exists("/usr/include/openssl/ssl.h") else "openssl/ssl.h missing",
          "apt-get install libssl-dev"),
    Check("dpkg-deb", _binary("dpkg"), "run on Debian or Ubuntu (package dpkg)"),
    Check("a Debian mirror serves the locked guest packages", _mirror_serves_lock,
          "check the network path to the mirror, or pass one in $KVMH_DEBIAN_MIRRORS"),
    Check("paramiko", _python_module("paramiko"), "pip install paramiko"),
    Check("pexpect", _python_module("pexpect"), "pip install pexpect"),
    Check("/dev/kvm (local target, KVM acceleration)", _dev_kvm,
          "load kvm (modprobe kvm_intel / kvm_amd) or run on a KVM-capable host", required=False),
)


def run_doctor(out: Callable[[str], None] = print, tree: Optional[Path] = None) -> int:
    """Run every check, print one line each, and return 0 when every required check passed."""
    missing = 0
    for check in (*CHECKS, *_toolchain_checks(), _headers_check(tree)):
        problem = check.probe()
        fix = check.fix
        if isinstance(problem, tuple):
            problem, fix = problem
        if problem is None:
            out(f"ok       {check.name}")
        elif check.required:
            missing += 1
            out(f"MISSING  {check.name}: {problem} -> {fix}")
        else:
            out(f"warning  {check.name}: {problem} -> {fix}")
    if missing:
        out(f"{missing} required piece(s) missing; run the commands above (or: bash ci/setup.sh)")
    else:
        out("all required pieces present")
    return 1 if missing else 0

