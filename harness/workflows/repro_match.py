"""Which of our scenarios and selftests touch the functions of a report's stack, by name match.

A stack function counts only when it is defined in the tree's KVM sources (``virt/kvm``, ``arch/*/kvm``,
``arch/s390/mm/gmap.c``); a test touches it when a word of the test's name (other than generic words such as
``kvm``, ``vm``, ``test``) is a word of the function's name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional

GENERIC = {"kvm", "vm", "vcpu", "test", "s390", "s390x", "x86", "x86_64", "arch", "ioctl", "do", "sys", "run"}
KVM_SOURCES = ("virt/kvm", "arch/x86/kvm", "arch/s390/kvm", "arch/arm64/kvm", "arch/s390/mm/gmap.c")


def kvm_functions(tree: Optional[Path], names: Iterable[str]) -> list[str]:
    """The names that a C function definition in the tree's KVM sources defines (all of them without a tree)."""
    names = list(names)
    if tree is None:
        return names
    wanted = set(names)
    found: set[str] = set()
    for rel in KVM_SOURCES:
        base = Path(tree) / rel
        files = [base] if base.is_file() else sorted(base.rglob("*.c")) if base.is_dir() else []
        for path in files:
            text = path.read_text(errors="replace")
            for name in wanted - found:
                if re.search(rf"^[\w][^;()]*\b{re.escape(name)}\s*\(", text, re.M):
                    found.add(name)
    return [n for n in names if n in found]


def _words(name: str) -> set[str]:
    return {w for w in re.split(r"[_/\-.]+", name.lower()) if w and w not in GENERIC and not w.isdigit()}


def our_tests() -> list[str]:
    from ..kvm.scenarios import LIFECYCLE_SCENARIOS, PV_SCENARIOS

    return [s.name for s in (*PV_SCENARIOS, *LIFECYCLE_SCENARIOS)] + ["s390x/async_teardown_test"]


def matching_tests(functions: Iterable[str], tests: Iterable[str]) -> dict[str, list[str]]:
    """test name -> the stack functions it shares a word with."""
    funcs = list(functions)
    out: dict[str, list[str]] = {}
    for test in tests:
        words = _words(test)
        hits = [f for f in funcs if words & _words(f)]
        if hits:
            out[test] = hits
    return out


def tree_selftests(tree: Optional[Path]) -> list[str]:
    """Program names of the tree's KVM selftests (``s390x/memop``, ``dirty_log_test``...)."""
    if tree is None:
        return []
    base = Path(tree) / "tools/testing/selftests/kvm"
    if not base.is_dir():
        return []
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.c")
                  if "lib" not in p.relative_to(base).parts and "include" not in p.relative_to(base).parts)
