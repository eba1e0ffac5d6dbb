"""The layers only look down: no module imports a module of a higher layer, and no two modules import each other.

The table is the README's "Layout" section in code. A module belongs to the longest prefix listed. Every
import counts, also one inside a function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[2]

LAYERS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (0, ("harness", "harness.errors", "harness.paths", "harness.locks", "harness.hashing", "harness.command",
         "harness.stages", "harness.progress", "harness.signals", "harness.printk")),
    (1, ("harness.arch", "harness.kvm.uapi", "harness.kvm.caps", "harness.kvm.fixes")),
    (2, ("harness.debian", "harness.debian_pool", "harness.debian_lock", "guest_images")),
    (3, ("harness.transport",)),
    (4, ("harness.targets", "harness.accel")),
    (5, ("harness.kernel", "harness.selftests", "harness.kvm", "harness.results", "harness.hostops",
         "harness.session")),
    (6, ("harness.workflows", "harness.bench")),
    (7, ("harness.cli", "harness.plugin", "harness.suites")),
)


def layer_of(module: str) -> Optional[int]:
    best: Optional[tuple[int, int]] = None
    for level, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    return best[0] if best else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Iterator[tuple[str, Path]]:
    for top in ("harness", "guest_images"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield module_name(path), path


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from x import y`` counts as ``x.y`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    paths = dict(modules())
    known = set(paths)
    return {name: imports_of(name, path, known) for name, path in paths.items()}


def test_every_module_has_a_layer() -> None:
    missing = [name for name, _ in modules() if layer_of(name) is None]
    assert not missing, f"modules with no layer in the table: {missing}"


def test_no_upward_import() -> None:
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, targets in graph().items() for target in sorted(targets)
              if layer_of(target) > layer_of(name) and not name.startswith(target + ".")]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    edges = graph()
    # package __init__ modules are implied by their children; they must not close a loop either
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if node.startswith(nxt + "."):
                continue  # a module importing its own package's __init__ is how Python loads it anyway
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


ALIAS_LITERALS = re.compile(r"""["'](amd64|x86|s390)["']\s*:""")


def test_arch_alias_tables_live_in_the_arch_modules_only() -> None:
    """Spellings such as amd64/x86/s390 are mapped in harness/arch/ and nowhere else."""
    offenders = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                 for _, path in modules() if "harness/arch/" not in str(path)
                 for n, line in enumerate(path.read_text().splitlines(), 1) if ALIAS_LITERALS.search(line)]
    assert not offenders, "alias tables outside harness/arch:\n" + "\n".join(offenders)


def test_the_layer_test_sees_a_planted_upward_import(tmp_path: Path) -> None:
    planted = tmp_path / "x.py"
    planted.write_text("from ..plugin import holder_of\n")
    assert imports_of("harness.transport.x", planted, {"harness.plugin"}) == {"harness.plugin"}
    assert layer_of("harness.plugin") > layer_of("harness.transport.x")
