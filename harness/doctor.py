"""``kvmh doctor``: check that this machine has what the harness needs and name the package for each gap."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import HarnessError


@dataclass(frozen=True)
class Check:
    """One requirement: what it is, how to test it, and how to fix it."""

    name: str
    probe: Callable[[], Optional[str]]  # returns None when fine, else what is wrong
    fix: str
    required: bool = True


def _binary(name: str) -> Callable[[], Optional[str]]:
    def probe() -> Optional[str]:
        return None if shutil.which(name) else f"{name} not found"

    return probe


def _dev_kvm() -> Optional[str]:
    from .accel import kvm_status

    usable, reason = kvm_status()
    return None if usable else reason


def _debian_reachable() -> Optional[str]:
    from .debian import DebianSuite

    try:
        DebianSuite("trixie", "s390x").version("linux-image-s390x")
    except HarnessError as err:
        return str(err)
    return None


def _python_module(name: str) -> Callable[[], Optional[str]]:
    def probe() -> Optional[str]:
        import importlib.util

        return None if importlib.util.find_spec(name) else f"Python module {name} missing"

    return probe


CHECKS: tuple[Check, ...] = (
    Check("qemu-system-s390x", _binary("qemu-system-s390x"), "apt-get install qemu-system-misc"),
    Check("qemu-system-x86_64", _binary("qemu-system-x86_64"), "apt-get install qemu-system-x86"),
    Check("qemu-s390x (user emulation)", _binary("qemu-s390x"), "apt-get install qemu-user"),
    Check("s390x cross compiler", _binary("s390x-linux-gnu-gcc"), "apt-get install gcc-s390x-linux-gnu"),
    Check("host C compiler", _binary("gcc"), "apt-get install gcc"),
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
    Check("apt reaches Debian trixie", _debian_reachable, "check the network path to the Debian mirror"),
    Check("paramiko", _python_module("paramiko"), "pip install paramiko"),
    Check("pexpect", _python_module("pexpect"), "pip install pexpect"),
    Check("/dev/kvm (local target, KVM acceleration)", _dev_kvm,
          "load kvm (modprobe kvm_intel / kvm_amd) or run on a KVM-capable host", required=False),
)


def run_doctor(out: Callable[[str], None] = print) -> int:
    """Run every check, print one line each, and return 0 when every required check passed."""
    missing = 0
    for check in CHECKS:
        problem = check.probe()
        if problem is None:
            out(f"ok       {check.name}")
        elif check.required:
            missing += 1
            out(f"MISSING  {check.name}: {problem} -> {check.fix}")
        else:
            out(f"warning  {check.name}: {problem} -> {check.fix}")
    if missing:
        out(f"{missing} required piece(s) missing; run the commands above (or: bash ci/setup.sh)")
    else:
        out("all required pieces present")
    return 1 if missing else 0

