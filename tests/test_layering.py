"""The layers of ppcls_ext hold: the import graph read by tools/module_graph.py (ast; nothing imported, imports
inside functions counted too) has no import against its LAYERS, FORBIDDEN pairs or script rule; deployment
(`ppcls_ext.inference`) reaches nothing of the training package (`ppcls_ext.engine`), directly or through other
modules; the exceptions kept on purpose (DELIBERATE) are real imports, lazy, and say why. The layers themselves
are explained in docs/architecture.md."""
from __future__ import annotations

import subprocess
import sys
from typing import Dict, Set

import pytest

from conftest import REPO

GRAPH_TOOL = f"{REPO}/tools/module_graph.py"


@pytest.fixture(scope="module")
def modules(graph):
    return graph.read_modules(REPO)


def reachable(modules, start: str) -> Set[str]:
    """The modules that the modules of package `start` import, directly or through others (lazy imports too)."""
    following: Dict[str, Set[str]] = {name: {i.target for i in m.imports} for name, m in modules.items()}
    seen = {name for name in modules if name == start or name.startswith(start + ".")}
    todo = list(seen)
    while todo:
        for name in following.get(todo.pop(), ()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def test_every_module_is_placed_in_a_layer(graph, modules):
    unplaced = sorted(name for name in modules if graph.layer_of(name) is None)
    assert not unplaced, f"place these modules in LAYERS of tools/module_graph.py: {unplaced}"


def test_no_import_runs_against_the_layering(graph, modules):
    found = graph.all_violations(modules, REPO)
    assert not found, "\n".join(found)


def test_inference_imports_nothing_from_engine(graph, modules):
    direct = [f"{m.path}:{i.line} imports {i.target}" for m in modules.values() for i in m.imports
              if graph.package_of(m.name) == "ppcls_ext.inference" and graph.package_of(i.target) == "ppcls_ext.engine"]
    assert not direct, "\n".join(direct)
    through = reachable(modules, "ppcls_ext.inference")
    assert not sorted(n for n in through if graph.package_of(n) == "ppcls_ext.engine")
    assert {"ppcls_ext.serving.export", "ppcls_ext.serving.predict", "ppcls_ext.serving.postprocess"} <= through


def test_no_cycle_at_module_level(graph, modules):
    assert graph.cycles(modules) == []


def test_the_deliberate_imports_exist_are_lazy_and_say_why(graph, modules):
    for importer, imported, why in graph.DELIBERATE:
        edges = [i for i in modules[importer].imports if i.target == imported]
        assert edges, f"DELIBERATE names an import that no longer exists: {importer} -> {imported}"
        assert all(i.lazy for i in edges), f"{importer} -> {imported} is kept only as a lazy import"
        assert len(why.split()) >= 8, f"say why {importer} -> {imported} is kept"


def test_a_script_past_the_command_line_layer_is_found(graph, tmp_path):
    """The check reads tools/ and deploy/ scripts too: a script may call ppcls_ext.cli only."""
    for name, source in {"ppcls_ext/__init__.py": "", "ppcls_ext/cli/__init__.py": "", "ppcls_ext/registry.py": "",
                         "tools/good.py": "from ppcls_ext.cli import main\n",
                         "deploy/python/bad.py": "import os\nfrom ppcls_ext.registry import create_model\n"}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    found = graph.script_violations(graph.read_modules(str(tmp_path)), str(tmp_path))
    assert found == ["deploy/python/bad.py:2: the script imports ppcls_ext.registry: scripts call the command-line "
                     "layer only"]


def test_check_exits_zero_on_the_tree():
    done = subprocess.run([sys.executable, GRAPH_TOOL, "--check", "--format", "text"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_importing_the_deployment_package_loads_no_engine_module():
    """What the graph says, observed: the deploy predictor's modules load nothing of ppcls_ext.engine."""
    code = ("import sys, ppcls_ext.inference, ppcls_ext.cli.predict_cls; "
            "print(sorted(m for m in sys.modules if m.startswith('ppcls_ext.engine')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
