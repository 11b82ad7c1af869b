"""Imports flow one way (launchers -> loops -> model and data -> small helpers), without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ctran"

# Lower layers never import higher ones; modules of one layer import each other only within their package.
LAYERS = {
    "states": 0,
    "sqlite": 0,
    "errors": 0,
    "extras": 1,
    "files": 0,
    "devices": 1,
    "normalization": 0,
    "metrics": 1,
    "config": 1,
    "model": 2,
    "data": 2,
    "checkpoint": 3,
    "report": 3,
    "comparison": 4,
    "training": 4,
    "inference": 5,
    "tagging": 6,
    "annotation": 7,
    "serving": 8,
    "demo": 8,
    "cli": 9,
}


def _imports() -> dict[str, set[str]]:
    """module name -> the ctran modules it imports (anywhere in the file, lazy imports included)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ctran"):
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("ctran")}
        graph[name] = targets
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_imports_a_layer_above_it() -> None:
    violations = []
    for module, targets in _imports().items():
        source = _top(module)
        if source in {"", "__main__"}:  # the package root re-exports the public API
            continue
        for target in targets:
            goal = _top(target)
            if goal in {"", source}:
                continue
            if LAYERS[goal] >= LAYERS[source]:
                violations.append(f"{module} imports {target}")
    assert not violations, "\n".join(sorted(violations))


def test_no_import_cycles() -> None:
    graph = _imports()
    modules = set(graph)

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = {
        m: {t for t in map(resolve, graph[m]) if t and t != m and not m.startswith(t + ".")} for m in graph
    }
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend([*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*stack, nxt]):
                return True
        state[node] = 2
        return False

    for module in sorted(edges):
        if state.get(module) is None and visit(module, [module]):
            break
    assert not cycle, " -> ".join(cycle)
