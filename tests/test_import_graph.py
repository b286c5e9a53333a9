"""The modules of tripletsk import each other without cycles, and only downward through the
layers of the package (read from the source with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tripletsk"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The tripletsk modules ``module`` imports anywhere in its file (lazy imports included).

    Importing ``a.b.c`` runs the packages ``a.b`` too, unless ``module`` is inside them.
    """
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                inside = module == name or module.startswith(name + ".")
                if name in known and not inside:
                    out.add(name)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_module_import_graph_is_acyclic():
    names = module_names()
    graph = {m: imported(m, p, set(names)) - {m} for m, p in names.items()}
    assert "tripletsk.extraction.run" in graph and "tripletsk.cli.extract" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


#: The package's layers, lowest first: a module imports only from its own layer or lower ones.
#: A name is a module or a package (the longest matching name decides a module's layer).
LAYERS = [
    ["tripletsk", "tripletsk._lazy", "tripletsk._npy", "tripletsk.errors", "tripletsk.distances",
     "tripletsk.outputs", "tripletsk._tensorflow"],
    ["tripletsk.cache"],
    ["tripletsk.triplets"],
    ["tripletsk.evaluation"],
    ["tripletsk.extraction"],
    ["tripletsk.training"],
    ["tripletsk.estimator", "tripletsk.persist"],
    ["tripletsk.modelfile", "tripletsk.index", "tripletsk.export", "tripletsk.export_metadata"],
    ["tripletsk.cli", "tripletsk.__main__"],
]  # fmt: skip


def layer_of(module: str) -> int:
    matches = [
        (len(name), i)
        for i, names in enumerate(LAYERS)
        for name in names
        # The root package "tripletsk" holds only itself: every other module is listed.
        if module == name or (name != "tripletsk" and module.startswith(name + "."))
    ]
    assert matches, f"{module} is in no layer of LAYERS: add it there"
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module in sorted(graph)
        for target in sorted(graph[module])
        if layer_of(target) > layer_of(module)
    ]


def test_modules_import_only_downward_through_the_layers():
    names = module_names()
    graph = {m: imported(m, p, set(names)) - {m} for m, p in names.items()}
    assert upward_imports(graph) == []


def test_an_upward_import_is_reported():
    graph = {"tripletsk.cache.store": {"tripletsk.training.rows"}, "tripletsk.training.rows": set()}
    assert upward_imports(graph) == [
        "tripletsk.cache.store (layer 1) imports tripletsk.training.rows (layer 5)"
    ]
