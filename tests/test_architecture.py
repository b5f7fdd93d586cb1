"""The package's layering, checked from its source: no import cycles (imports inside functions
count too) and no module reaching into another module's private (``_name``) definitions."""
from __future__ import annotations

import ast
from pathlib import Path

import ngfkit

ROOT = Path(ngfkit.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if not MODULES[module].name == "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> set[str]:
    """ngfkit modules that ``module`` imports anywhere in its source (a ``from P import name`` of a
    submodule ``P.name`` counts as importing that submodule, not ``P``)."""
    found = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            submodules = {f"{target}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= submodules or {target}
    return {m for m in found if m in MODULES and m != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycles():
    graph = {name: imports(name) for name in MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def private_definitions(tree: ast.Module) -> set[str]:
    """``_names`` a module defines: functions, classes, assignments, and ``self._x`` attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


DEFINED = {name: private_definitions(tree) for name, tree in TREES.items()}


def private_uses(module: str) -> list[str]:
    """Private names of *other* ngfkit modules that ``module`` imports or reads as attributes."""
    own = DEFINED[module]
    elsewhere = set().union(*(names for other, names in DEFINED.items() if other != module)) - own
    found = []
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            if target in MODULES:
                found += [f"from {target} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.Attribute) and node.attr in elsewhere:
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_private_uses_are_detected():
    assert private_uses.__name__ == "private_uses"
    fake = ast.parse("from ngfkit.defences.ngf import _register_variant\nx = obj._head_grid\n")
    TREES["ngfkit.fake"], MODULES["ngfkit.fake"], DEFINED["ngfkit.fake"] = fake, ROOT / "fake.py", set()
    try:
        uses = private_uses("ngfkit.fake")
    finally:
        del TREES["ngfkit.fake"], MODULES["ngfkit.fake"], DEFINED["ngfkit.fake"]
    assert any("_register_variant" in u for u in uses) and any("_head_grid" in u for u in uses)


def test_no_module_uses_another_modules_private_names():
    offences = {name: uses for name in MODULES if (uses := private_uses(name))}
    assert not offences, offences
