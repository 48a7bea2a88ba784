"""The layers of ppcls_ext, and the test that holds the code to them.

The import graph is built from the source (ast; nothing is imported), with every import counted, also
those inside functions: a lazy import is still a dependency. Layers, bottom first:

    start-up hook   ppcls_ext_hook (stdlib only: loaded at every interpreter start)
    foundation      errors, config, output_paths, interrupts, timing, report, cpu_env, safe_pickle, safe_load
    models          models/ (pure Paddle layers; a model says its numerics, `ImageClassifier.numerics()`)
    weights         convert/ (PyTorch / safetensors import), weights
    zoo             registry, summary
    data            data/ (datasets, transforms, loader, int8 calibration images)
    serving         serving/ (export, classification of files, top-k, the infer / export modes on a model)
    training | deployment   engine/ | inference/: siblings, neither imports the other
    applications    quant/ (int8 tool), gpu_check, gpu_check_engine, paddleclas_plugin
    command lines   cli/ (every argument parser and error boundary)
    package         ppcls_ext/__init__ (the public facade)
    scripts         tools/*.py, deploy/**/*.py: import ppcls_ext.cli only

The rules:
1. A module imports only modules of its own layer or of layers below it.
2. Siblings (engine, inference) import nothing of each other; in particular `ppcls_ext.inference` reaches
   nothing of `ppcls_ext.engine`, directly or through other modules.
3. Between units (the top-level modules and packages of ppcls_ext) there is no cycle.
4. Every module is placed in a layer: a new module has to be placed here.
5. The scripts in tools/ and deploy/ are thin: of the project they import `ppcls_ext.cli` only.

One edge is exempt, deliberately: the start-up hook's import of the package (`ppcls_ext_hook` ->
`ppcls_ext`). The hook is the bottom layer so that loading it at start-up costs nothing (no Paddle), and
its one job is to import ppcls_ext just before PaddleClas is first imported; ppcls_ext registers into
PaddleClas through the hook's `when_imported`. Dissolving the cycle would cost either start-up time (the
hook inside the package imports Paddle at every interpreter start) or a second import finder. The import
is lazy (inside a function), which the test checks.
"""
from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from conftest import REPO

#: (layer, its units, whether its units are siblings that must not import one another), bottom first
LAYERS: Tuple[Tuple[str, Tuple[str, ...], bool], ...] = (
    ("start-up hook", ("ppcls_ext_hook",), False),
    ("foundation", ("ppcls_ext.errors", "ppcls_ext.config", "ppcls_ext.output_paths", "ppcls_ext.interrupts",
                    "ppcls_ext.timing", "ppcls_ext.report", "ppcls_ext.cpu_env", "ppcls_ext.safe_pickle",
                    "ppcls_ext.safe_load"), False),
    ("models", ("ppcls_ext.models",), False),
    ("weights", ("ppcls_ext.convert", "ppcls_ext.weights"), False),
    ("zoo", ("ppcls_ext.registry", "ppcls_ext.summary"), False),
    ("data", ("ppcls_ext.data",), False),
    ("serving", ("ppcls_ext.serving",), False),
    ("training | deployment", ("ppcls_ext.engine", "ppcls_ext.inference"), True),
    ("applications", ("ppcls_ext.quant", "ppcls_ext.gpu_check", "ppcls_ext.gpu_check_engine",
                      "ppcls_ext.paddleclas_plugin"), False),
    ("command lines", ("ppcls_ext.cli",), False),
    ("package", ("ppcls_ext",), False),
)
#: imports that run against the layering on purpose: (importer unit, imported unit) -> why
EXEMPT = {("ppcls_ext_hook", "ppcls_ext"): "the start-up hook imports the package it exists to load, lazily"}
#: folders of scripts that may import ppcls_ext.cli only
SCRIPT_FOLDERS = ("tools", "deploy")
CLI = "ppcls_ext.cli"


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    lazy: bool  # inside a function


def source_files() -> Dict[str, str]:
    """Module name -> file of ppcls_ext and the start-up hook."""
    files = {"ppcls_ext_hook": os.path.join(REPO, "ppcls_ext_hook.py")}
    for folder, _, names in os.walk(os.path.join(REPO, "ppcls_ext")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _imports(tree: ast.AST) -> Iterator[Tuple[ast.AST, bool]]:
    """Every import statement of `tree`, with whether it sits inside a function."""
    def walk(node: ast.AST, lazy: bool) -> Iterator[Tuple[ast.AST, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, lazy
            yield from walk(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    yield from walk(tree, False)


def imported_names(module: str, path: str, modules: Set[str]) -> Iterator[Tuple[str, int, bool]]:
    """(imported module, line, lazy) of every import in `path`, relative ones resolved; `from X import y`
    counts as importing X.y where that is a module."""
    is_package = os.path.basename(path) == "__init__.py"
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node, lazy in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, lazy
            continue
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            candidate = f"{source}.{alias.name}"
            yield (candidate if candidate in modules else source), node.lineno, lazy


def project_module(name: str) -> bool:
    return name == "ppcls_ext_hook" or name == "ppcls_ext" or name.startswith("ppcls_ext.")


@functools.lru_cache(maxsize=None)
def import_graph() -> Tuple[Edge, ...]:
    files = source_files()
    edges: Dict[Edge, None] = {}  # in source order, each once
    for module, path in sorted(files.items()):
        for name, line, lazy in imported_names(module, path, set(files)):
            if project_module(name) and name != module:
                edges[Edge(module, name, line, lazy)] = None
    return tuple(edges)


def unit_of(module: str) -> Optional[str]:
    """The most specific unit of LAYERS that holds `module`."""
    units = [unit for _, members, _ in LAYERS for unit in members if module == unit or module.startswith(unit + ".")]
    return max(units, key=len) if units else None


def layer_of(module: str) -> Optional[int]:
    unit = unit_of(module)
    return next((i for i, (_, members, _) in enumerate(LAYERS) if unit in members), None)


def describe(edge: Edge) -> str:
    return (f"{edge.importer} (line {edge.line}, {LAYERS[layer_of(edge.importer)][0]}) imports {edge.imported} "
            f"({LAYERS[layer_of(edge.imported)][0]})")


def exempt(edge: Edge) -> bool:
    return (unit_of(edge.importer), unit_of(edge.imported)) in EXEMPT


def test_every_module_is_placed_in_a_layer():
    unplaced = sorted(module for module in source_files() if unit_of(module) is None)
    assert not unplaced, f"place these modules in tests/test_layering.py's LAYERS: {unplaced}"


def test_no_import_runs_against_the_layering():
    upward = [describe(e) for e in import_graph() if layer_of(e.imported) > layer_of(e.importer) and not exempt(e)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_siblings_import_nothing_of_each_other():
    crossing = [describe(e) for e in import_graph() if layer_of(e.importer) == layer_of(e.imported)
                and LAYERS[layer_of(e.importer)][2] and unit_of(e.importer) != unit_of(e.imported)]
    assert not crossing, "imports between sibling packages:\n" + "\n".join(crossing)


def reachable(start: str, edges: Sequence[Edge]) -> Set[str]:
    """Modules that the modules of package `start` import, directly or through others."""
    following: Dict[str, Set[str]] = {}
    for edge in edges:
        following.setdefault(edge.importer, set()).add(edge.imported)
    seen = {m for m in following if m == start or m.startswith(start + ".")}
    todo = list(seen)
    while todo:
        for name in following.get(todo.pop(), ()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def test_deployment_reaches_nothing_of_the_training_engine():
    edges = import_graph()
    direct = [describe(e) for e in edges if unit_of(e.importer) == "ppcls_ext.inference" and unit_of(e.imported) == "ppcls_ext.engine"]
    assert not direct, "\n".join(direct)
    assert not {m for m in reachable("ppcls_ext.inference", edges) if unit_of(m) == "ppcls_ext.engine"}
    assert "ppcls_ext.serving.export" in reachable("ppcls_ext.inference", edges)  # the graph sees its imports


def test_the_units_import_one_another_without_cycles():
    following: Dict[str, Set[str]] = {}
    for edge in import_graph():
        a, b = unit_of(edge.importer), unit_of(edge.imported)
        if a != b and not exempt(edge):
            following.setdefault(a, set()).add(b)
    state: Dict[str, str] = {}

    def cycle_from(unit: str, path: List[str]) -> Optional[List[str]]:
        state[unit] = "open"
        for nxt in sorted(following.get(unit, ())):
            if state.get(nxt) == "open":
                return path + [unit, nxt]
            if nxt not in state:
                found = cycle_from(nxt, path + [unit])
                if found:
                    return found
        state[unit] = "done"
        return None

    for unit in sorted(following):
        if unit not in state:
            found = cycle_from(unit, [])
            assert found is None, "import cycle: " + " -> ".join(found[found.index(found[-1]):])


def test_the_exempt_edge_exists_and_is_lazy():
    """The exemption covers a real import, made inside a function (nothing of ppcls_ext loads with the hook)."""
    for (importer, imported), why in EXEMPT.items():
        edges = [e for e in import_graph() if unit_of(e.importer) == importer and unit_of(e.imported) == imported]
        assert edges, f"EXEMPT names an import that no longer exists: {importer} -> {imported} ({why})"
        assert all(e.lazy for e in edges), [describe(e) for e in edges if not e.lazy]


def test_the_scripts_call_the_command_line_layer_only():
    offending = []
    scripts = [os.path.join(folder, name) for top in SCRIPT_FOLDERS
               for folder, _, names in os.walk(os.path.join(REPO, top)) for name in names if name.endswith(".py")]
    assert len(scripts) >= 10
    for path in scripts:
        for name, line, _ in imported_names("__main__", path, set(source_files())):
            if project_module(name) and not (name == CLI or name.startswith(CLI + ".")):
                offending.append(f"{os.path.relpath(path, REPO)}:{line} imports {name}")
    assert not offending, "scripts must only call ppcls_ext.cli:\n" + "\n".join(offending)


def test_a_lower_layer_importing_a_higher_one_is_found(tmp_path):
    """The graph builder resolves relative imports, `from . import x` and imports inside functions."""
    source = tmp_path / "ppcls_ext" / "data"
    source.mkdir(parents=True)
    (source / "probe.py").write_text("def f():\n    from ..engine import optim\n    from . import transforms\n")
    modules = {"ppcls_ext.engine.optim", "ppcls_ext.data.transforms", "ppcls_ext.engine"}
    found = list(imported_names("ppcls_ext.data.probe", str(source / "probe.py"), modules))
    assert found == [("ppcls_ext.engine.optim", 2, True), ("ppcls_ext.data.transforms", 3, True)]
    assert layer_of("ppcls_ext.engine.optim") > layer_of("ppcls_ext.data.probe")


def test_importing_the_deployment_package_loads_no_engine_module():
    """What the graph says, observed: the deploy predictor's modules load nothing of ppcls_ext.engine."""
    code = ("import sys, ppcls_ext.inference, ppcls_ext.cli.predict_cls; "
            "print(sorted(m for m in sys.modules if m.startswith('ppcls_ext.engine')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
