"""The tree shows the architecture (issue 22): layers import one way, no import circles, no
module reaches another module's ``_private`` name, and nothing stored names a module path.

The layer order is declared here, once, and drawn in docs/ARCHITECTURE.md. The import graph is
built from the source (``ast``), so imports inside functions count as much as module-level ones.
"""
from __future__ import annotations

import ast
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: source folders and the package each is installed as (pyproject's package-dir)
SOURCES = {"adbench": "adbench", "methods": "adbench.methods", "datasets": "adbench.datasets",
           "benchmarks": "benchmarks"}

#: the layers, lowest first: (name, module patterns). A module belongs to the first layer with
#: a matching pattern (``x.*`` matches x's submodules, ``x`` the module itself).
LAYERS = [
    ("core", ["adbench", "adbench.errors", "adbench.files", "adbench.environment", "adbench.precision",
              "adbench.weights", "adbench.registry", "adbench.config", "adbench.options", "adbench.jobs"]),
    ("data", ["adbench.data", "adbench.data.*", "adbench.dataset"]),
    ("evaluation", ["adbench.evaluation", "adbench.evaluation.*"]),
    ("components", ["adbench.components", "adbench.components.*"]),
    ("training", ["adbench.training", "adbench.training.*"]),
    ("detector", ["adbench.detector"]),
    ("datasets", ["adbench.datasets", "adbench.datasets.*"]),
    ("methods", ["adbench.methods", "adbench.methods.*"]),
    ("results", ["adbench.results", "adbench.results.*"]),
    ("run", ["adbench.run", "adbench.run.*"]),
    ("reporting", ["adbench.reporting", "adbench.reporting.*"]),
    ("cli", ["adbench.cli"]),
    ("benchmarks", ["benchmarks", "benchmarks.*"]),
]
#: which layers each layer may import (its own included). Methods and components never import
#: run, results or reporting; reporting reads records, never runs or trains anything.
MAY_IMPORT = {
    "core": {"core"},
    "data": {"core", "data"},
    "evaluation": {"core", "evaluation"},
    "components": {"core", "data", "components"},
    "training": {"core", "data", "training"},
    "detector": {"core", "data", "components", "training", "detector"},
    "datasets": {"core", "data", "datasets"},
    "methods": {"core", "data", "components", "training", "detector", "methods"},
    "results": {"core", "evaluation", "results"},
    "run": {"core", "data", "evaluation", "training", "detector", "results", "run"},
    "reporting": {"core", "evaluation", "results", "reporting"},
    "cli": {name for name, _ in LAYERS} - {"benchmarks"},
    "benchmarks": {name for name, _ in LAYERS},
}


def layer_of(module: str) -> str:
    for name, patterns in LAYERS:
        for pattern in patterns:
            if module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return name
    raise AssertionError(f"{module}: in no declared layer (add it to LAYERS)")


@dataclass(frozen=True)
class Use:
    """One import edge (or private-name use) found in the source."""

    importer: str
    target: str
    line: int
    name: str = ""  # the imported or accessed name, for private-name checks


def project_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in SOURCES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def uses_of(module: str, path: Path, modules: dict[str, Path]) -> tuple[list[Use], list[Use]]:
    """(import edges to project modules, uses of other modules' private names) in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    edges, private = [], []
    bound: dict[str, str] = {}  # local name -> project module it is bound to

    def nearest_module(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = nearest_module(alias.name)
                if target:
                    edges.append(Use(module, target, node.lineno))
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, path, node)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full not in modules and not nearest_module(source):
                    continue  # not a project import
                if full in modules:  # a submodule
                    edges.append(Use(module, full, node.lineno))
                    bound[alias.asname or alias.name] = full
                    if _is_private(alias.name) and full.rpartition(".")[0] != module.rpartition(".")[0]:
                        private.append(Use(module, full, node.lineno, alias.name))
                else:
                    target = nearest_module(source)
                    edges.append(Use(module, target, node.lineno, alias.name))
                    if _is_private(alias.name) and target != module:
                        private.append(Use(module, target, node.lineno, alias.name))
    for node in ast.walk(tree):  # attribute access on a bound project module: mod._name
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                dotted = ".".join([bound[value.id], *chain[:-1]])
                if dotted in modules and dotted != module:
                    private.append(Use(module, dotted, node.lineno, node.attr))
    return edges, private


def import_graph():
    modules = project_modules()
    edges, private = [], []
    for module, path in modules.items():
        e, p = uses_of(module, path, modules)
        edges.extend(u for u in e if u.target != module)
        private.extend(p)
    return modules, edges, private


def cycles(modules, edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import circles."""
    graph = {m: sorted({u.target for u in edges if u.importer == m}) for m in modules}
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_has_a_layer(graph):
    modules, _, _ = graph
    for module in modules:
        layer_of(module)


def test_no_import_circles(graph):
    modules, edges, _ = graph
    assert cycles(modules, edges) == []


def test_imports_follow_the_layer_order(graph):
    _, edges, _ = graph
    against = [f"{u.importer} (line {u.line}, layer {layer_of(u.importer)}) imports {u.target} "
               f"(layer {layer_of(u.target)})"
               for u in edges if layer_of(u.target) not in MAY_IMPORT[layer_of(u.importer)]]
    assert against == []


def test_no_module_uses_another_modules_private_name(graph):
    _, _, private = graph
    assert [f"{u.importer} line {u.line}: {u.target}.{u.name}" for u in private] == []


def test_the_checker_sees_what_it_must_reject(tmp_path):
    """The rules above catch a circle, an upward import (inside a function too) and private use."""
    modules = {"adbench.a": tmp_path / "a.py", "adbench.b": tmp_path / "b.py",
               "adbench.run.x": tmp_path / "x.py", "adbench.errors": tmp_path / "errors.py"}
    modules["adbench.a"].write_text("from adbench import b\n")
    modules["adbench.b"].write_text("def f():\n    import adbench.a\n")
    modules["adbench.errors"].write_text("def g():\n    from adbench.run.x import _hidden\n")
    modules["adbench.run.x"].write_text("import adbench.b as m\nprint(m._secret)\n")
    edges, private = [], []
    for module, path in modules.items():
        e, p = uses_of(module, path, modules)
        edges += e
        private += p
    assert cycles(modules, edges) == [["adbench.a", "adbench.b"]]
    assert any(u.importer == "adbench.errors" and layer_of(u.target) == "run" for u in edges)
    assert {(u.importer, u.name) for u in private} == {("adbench.errors", "_hidden"), ("adbench.run.x", "_secret")}


def test_every_benchmark_module_imports():
    """The benchmarks are scripts run by hand: importing each catches a move that broke one."""
    import sys

    sys.path.insert(0, str(REPO))
    try:
        for path in sorted((REPO / "benchmarks").glob("*.py")):
            importlib.import_module(f"benchmarks.{path.stem}")
    finally:
        sys.path.remove(str(REPO))


MODULE_PATH = re.compile(r"\badbench\.[a-z_]+\.[a-z_]+")


def test_stored_files_name_no_module_path():
    """Records, reference tables and saved predictions never name a module: moving code must
    never make a results folder unreadable. Checked on the committed results."""
    offenders = []
    for path in sorted((REPO / "results").rglob("*")):
        if path.suffix in (".json", ".csv") and MODULE_PATH.search(path.read_text(encoding="utf-8", errors="replace")):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
