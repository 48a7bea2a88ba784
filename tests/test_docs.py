"""The README and docs/ say what the tree does: the README is short and holds the two set-up commands that
.ci/run mirrors, every relative link resolves (anchors included), every script, config and module a page names
exists, and every `-o Section.key=` a page shows is a key the tools accept. Reads files and imports modules;
trains and runs nothing but setup.py's metadata.

The key lists are found by reading the package, not by module path (modules move): a module-level constant of
the given name whose content identifies it (e.g. the `GLOBAL_KEYS` that holds `epochs` is the engine's)."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README] + sorted((REPO / "docs").rglob("*.md"))
# the two set-up commands, byte for byte: users copy them and .ci/run mirrors them
INSTALL_AND_RUN = ('pip install -e ".[test]" && python -m ppcls_ext_hook install && python tools/make_demo_data.py && '
                   "python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py -c "
                   "configs/quick_start/micronet_m0_digits.yaml && python tools/infer.py -c "
                   "configs/quick_start/micronet_m0_digits.yaml -o Global.pretrained_model=output/quick_start/MicroNet_M0/best_model")
RUN_TESTS = "python -m pytest -q tests"
README_LINE_LIMIT = 200

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")
# a file of the repository named in a page: scripts, configs, the deploy config (not PaddleClas's paths, which
# follow a folder name: PaddleClas/ppcls/configs/..., nor ~/.cache/... or /path/to/...)
REPO_FILE = re.compile(r"(?<![\w./~$-])((?:tools|deploy|bench|tests|configs)/[\w./-]*\.(?:py|ya?ml))\b")
PACKAGE_PATH = re.compile(r"(?<![\w./~$-])(ppcls_ext/[\w/]*(?:\.py|/))")
DOTTED = re.compile(r"(?<![\w.])(ppcls_ext(?:\.[A-Za-z_]\w*)+)")
RUN_MODULE = re.compile(r"python -m (ppcls_ext[\w.]*)")
OVERRIDE = re.compile(r"""-o\s+["']?([A-Za-z_][\w.\[\]-]*)=""")
PLACEHOLDER = re.compile(r"^[A-Z]+$")  # KEY, PATH: a placeholder in prose, not a key


def page_text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def relative(page: Path) -> str:
    return str(page.relative_to(REPO))


def split_code(text: str) -> Tuple[List[Tuple[int, str]], List[Tuple[int, str]]]:
    """(prose lines, lines inside fenced code blocks), each as (line number, text)."""
    prose, code, inside = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        (code if inside or line.startswith("    ") else prose).append((number, line))
    return prose, code


def without_inline_code(line: str) -> str:
    return re.sub(r"`[^`]*`", "", line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces
    to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> Set[str]:
    seen: Dict[str, int] = {}
    found = set()
    prose, _ = split_code(page_text(page))
    for _, line in prose:
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def commands(page: Path) -> Iterator[Tuple[int, str]]:
    """Logical command lines of a page's code blocks (backslash continuations joined) and its inline code spans,
    with the line each starts on."""
    prose, code = split_code(page_text(page))
    pending, start = "", 0
    for number, line in code:
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending
    lines = dict(prose)
    numbers = sorted(lines)
    text = "\n".join(lines[n] for n in numbers)
    for span in re.finditer(r"`([^`]+)`", text):  # inline code may run over a line break
        yield numbers[text.count("\n", 0, span.start())], " ".join(span.group(1).split())


# ------------------------------------------------------------------------------------------- the README

def test_readme_is_short():
    lines = page_text(README).splitlines()
    assert len(lines) < README_LINE_LIMIT, f"README.md has {len(lines)} lines; keep it under {README_LINE_LIMIT} (move sections to docs/)"


def setup_block() -> List[str]:
    text = page_text(README)
    assert "\n## Set-up\n" in text, "README.md has no '## Set-up' section"
    section = text.split("\n## Set-up\n", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", section, re.S)
    assert block, "README.md's Set-up section has no ```bash block"
    return block.group(1).split("\n")


def test_readme_has_the_two_setup_commands_byte_for_byte():
    assert setup_block() == [INSTALL_AND_RUN, RUN_TESTS]


def _ci_steps() -> List[List[str]]:
    """.ci/run's commands as word lists, `python -m pip` as `pip` and `--` options dropped (they change output,
    not what is installed or run)."""
    steps = []
    for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = [w for w in shlex.split(line) if not w.startswith("--")]
        if words[:3] == ["python", "-m", "pip"]:
            words = words[2:]
        steps.append(words)
    return steps


def test_ci_mirrors_the_readme_setup():
    install, run_tests = setup_block()
    steps = _ci_steps()
    install_steps = [part for part in install.split(" && ") if part.startswith(("pip install", "python -m ppcls_ext_hook"))]
    assert len(install_steps) == 2, install_steps
    for part in install_steps:
        assert shlex.split(part) in steps, f".ci/run does not run the README's set-up step: {part}"
    assert shlex.split(run_tests) in steps, f".ci/run does not run the README's test command: {run_tests}"


def test_setup_py_long_description_is_the_readme():
    done = subprocess.run([sys.executable, "setup.py", "--long-description"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == page_text(README).strip()


@pytest.mark.parametrize("index", [README, REPO / "docs" / "README.md"], ids=relative)
def test_the_indexes_link_every_docs_page(index):
    linked = {os.path.normpath(index.parent / target.split("#")[0]) for _, target in LINK.findall(page_text(index))}
    pages = {str(p) for p in PAGES if p not in (README, index)}
    assert not pages - linked, f"{relative(index)} does not link {sorted(relative(Path(p)) for p in pages - linked)}"


def test_zoo_table_has_latency_for_micronet_and_mobilenetv3_small():
    rows = [line for line in page_text(README).splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    latency = next(i for i, cell in enumerate(header) if cell.lower().startswith("latency"))
    by_model = {cells[0]: cells for cells in ([c.strip() for c in row.strip("|").split("|")] for row in rows[1:])}
    wanted = [f"MicroNet_M{i}" for i in range(4)] + [f"MobileNetV3_small_{w} (PaddleClas)¹" for w in ("x0_35", "x0_5", "x0_75")]
    for name in wanted:
        assert name in by_model, f"README.md's model table has no row {name}"
        assert re.fullmatch(r"\d+(\.\d+)?", by_model[name][latency]), f"{name}: latency {by_model[name][latency]!r}"
    from ppcls_ext import list_models

    missing = [name for name in list_models() if name not in by_model]
    assert not missing, f"README.md's model table lacks {missing}"


def test_zoo_table_rows_are_what_tools_model_zoo_prints():
    """The README's command, on the small models (the big ones take minutes to build): the same parameters,
    sizes, top-1 and weights columns."""
    done = subprocess.run([sys.executable, "tools/model_zoo.py", "-n", "MicroNet*", "-n", "EfficientNetB0", "-n",
                           "EfficientNetLite0", "-n", "EfficientNetV2_B0", "--no-flops"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    readme = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                            for line in page_text(README).splitlines() if line.startswith("| "))}
    printed = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(printed) == 7, done.stdout
    for cells in printed:
        name = cells[0]
        columns = (1, 3, 4, 5)  # params, train / eval size, paper top-1, official weights (FLOPs: --no-flops)
        assert [readme[name][i] for i in columns] == [cells[i] for i in columns], name


# ------------------------------------------------------------------------------------------- links

@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_relative_links_resolve(page):
    broken = []
    prose, _ = split_code(page_text(page))
    for number, line in prose:
        for _, target in LINK.findall(without_inline_code(line)):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            if not destination.exists():
                broken.append(f"{relative(page)}:{number}: {target} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{relative(page)}:{number}: {target} (no heading '#{anchor}' in {destination.name})")
    assert not broken, "\n".join(broken)


# ------------------------------------------------------------------------------------------- files and modules

@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_named_scripts_and_configs_exist(page):
    missing = []
    folder = ""  # in a layout listing ("    deploy/      python/predict_cls.py, ..."), paths may be the folder's
    for number, line in enumerate(page_text(page).splitlines(), 1):
        listing = re.match(r"^    ([\w.-]+/)\s{2,}", line)
        folder = listing.group(1) if listing else folder if re.match(r"^\s{8,}\S", line) else ""
        for path in REPO_FILE.findall(line):
            if not ((REPO / path).is_file() or (folder and (REPO / folder / path).is_file())):
                missing.append(f"{relative(page)}:{number}: {path}")
        for path in PACKAGE_PATH.findall(line):
            if not (REPO / path).exists():
                missing.append(f"{relative(page)}:{number}: {path}")
    assert not missing, "pages name files the tree does not have:\n" + "\n".join(missing)


def _resolves(dotted: str) -> bool:
    """A module, or an attribute of the longest importable module prefix."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            value = importlib.import_module(name)
            for attribute in parts[end:]:
                if not hasattr(value, attribute):
                    return False
                value = getattr(value, attribute)
            return True
    return False


# architecture.md states the layering to reach (e.g. ppcls_ext.errors); its module list is generated from the tree
@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "architecture.md"], ids=relative)
def test_named_modules_and_attributes_exist(page):
    missing = []
    for number, line in enumerate(page_text(page).splitlines(), 1):
        for dotted in set(DOTTED.findall(line)) | set(RUN_MODULE.findall(line)):
            if not _resolves(dotted):
                missing.append(f"{relative(page)}:{number}: {dotted}")
    assert not missing, "pages name modules or attributes the package does not have:\n" + "\n".join(missing)


# ------------------------------------------------------------------------------------------- the module graph

def test_architecture_page_has_the_generated_part(graph):
    text = page_text(REPO / "docs" / "architecture.md")
    assert text.count(graph.BEGIN_MARK) == 1 and text.count(graph.END_MARK) == 1
    generated = text.split(graph.BEGIN_MARK)[1].split(graph.END_MARK)[0]
    assert "### Modules" in generated, "run python tools/module_graph.py --write docs/architecture.md"


def _write_tree(root: Path, files: Dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")


def test_module_graph_reads_imports_layers_and_cycles(graph, tmp_path):
    _write_tree(tmp_path, {
        "ppcls_ext/__init__.py": '"""The package."""\nfrom . import registry\n',
        "ppcls_ext/config.py": '"""Configs. More words."""\n',
        "ppcls_ext/registry.py": '"""Names."""\nfrom .models import net\nfrom ppcls_ext import config\n',
        "ppcls_ext/models/__init__.py": "",
        "ppcls_ext/models/net.py": "import ppcls_ext.models\n\ndef late():\n    from ..engine import train\n",
        "ppcls_ext/engine/__init__.py": "",
        "ppcls_ext/engine/train.py": "from ..registry import x\nfrom typing import TYPE_CHECKING\n"
                                     "if TYPE_CHECKING:\n    from ppcls_ext.inference import serve\n",
        "ppcls_ext/inference/__init__.py": "",
        "ppcls_ext/inference/serve.py": "from ppcls_ext.engine.train import step\n",
        "ppcls_ext/inference/a.py": "from . import b\n",
        "ppcls_ext/inference/b.py": "from .a import thing\n",
        "ppcls_ext/newroom.py": "",
    })
    modules = graph.read_modules(str(tmp_path))
    imports = {name: {(i.target, i.lazy) for i in module.imports} for name, module in modules.items()}
    assert imports["ppcls_ext.registry"] == {("ppcls_ext.models.net", False), ("ppcls_ext.config", False)}
    assert imports["ppcls_ext.models.net"] == {("ppcls_ext.models", False), ("ppcls_ext.engine.train", True)}
    assert imports["ppcls_ext.engine.train"] == {("ppcls_ext.registry", False)}  # TYPE_CHECKING imports left out
    assert modules["ppcls_ext.config"].doc == "Configs."
    found = graph.violations(modules)
    assert any("ppcls_ext.models.net imports ppcls_ext.engine.train (lazily)" in v and "higher layer" in v for v in found)
    assert any("ppcls_ext.inference.serve imports ppcls_ext.engine.train" in v and "training package" in v for v in found)
    assert len(found) == 2, found
    assert graph.cycles(modules) == [["ppcls_ext.inference.a", "ppcls_ext.inference.b"]]
    assert ["ppcls_ext.engine.train", "ppcls_ext.models.net", "ppcls_ext.registry"] in graph.cycles(modules, eager_only=False)
    page = graph.markdown(modules)
    assert "**unplaced**" in page and "`newroom`" in page
    assert "engine -> registry" in page and "models -> engine (lazy)" in page


def test_module_graph_writes_between_its_markers_only(graph, tmp_path):
    page = tmp_path / "architecture.md"
    page.write_text(f"# Title\n\nhand-written\n\n{graph.BEGIN_MARK}\nold\n{graph.END_MARK}\n\nafter\n", encoding="utf-8")
    graph.write_into(str(page), "new graph")
    assert page.read_text(encoding="utf-8") == (f"# Title\n\nhand-written\n\n{graph.BEGIN_MARK}\n\nnew graph\n\n"
                                                f"{graph.END_MARK}\n\nafter\n")
    page.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="expected the two markers"):
        graph.write_into(str(page), "new graph")
    assert page.read_text(encoding="utf-8") == "no markers\n"


def test_module_graph_command_line():
    done = subprocess.run([sys.executable, "tools/module_graph.py", "--format", "text"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = {line.split(" ")[0] for line in done.stdout.splitlines() if line.startswith("ppcls_ext")}
    on_disk = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
               for p in (REPO / "ppcls_ext").rglob("*.py")}
    assert on_disk <= listed


# ------------------------------------------------------------------------------------------- -o keys

def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _constants(name: str) -> List[Tuple[str, object]]:
    """(module, value) of every module-level assignment to `name` in the package, found by reading the source."""
    found = []
    for path in sorted((REPO / "ppcls_ext").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                module = _module_name(path)
                found.append((module, getattr(importlib.import_module(module), name)))
    return found


def _one(name: str, holding: str) -> object:
    """The module-level `name` whose value holds `holding`; exactly one must exist."""
    matches = [(module, value) for module, value in _constants(name) if holding in value]
    assert len(matches) == 1, (f"expected one module-level {name} holding {holding!r} in ppcls_ext, found "
                               f"{[module for module, _ in matches]}: the docs test reads the tools' key lists from it")
    return matches[0][1]


def _dataclass(name: str) -> Set[str]:
    for path in sorted((REPO / "ppcls_ext").rglob("*.py")):
        if any(isinstance(n, ast.ClassDef) and n.name == name for n in ast.parse(path.read_text(encoding="utf-8")).body):
            return {f.name for f in dataclasses.fields(getattr(importlib.import_module(_module_name(path)), name))}
    raise AssertionError(f"no class {name} in ppcls_ext: the docs test reads the Global.tensorrt keys from it")


@pytest.fixture(scope="module")
def accepted():
    """The tools' own key lists."""
    quant_section = _constants("SETTINGS_SECTION")
    assert len(quant_section) == 1, quant_section
    quant_module, section = quant_section[0]
    return {
        "train_sections": set(_one("SECTIONS", "Optimizer")) | set(_one("IGNORED_SECTIONS", "Slim")),
        "train_global": set(_one("GLOBAL_KEYS", "epochs")) | set(_one("IGNORED_GLOBAL_KEYS", "use_dali")),
        "progressive": set(_one("KNOBS", "image_size")) | {"stages", "preset"},
        "loader": set(_one("LOADER_KEYS", "num_workers")),
        "deploy_sections": set(_one("SECTIONS", "PreProcess")),
        "deploy_global": set(_one("GLOBAL_KEYS", "inference_model_dir")),
        "tensorrt": _dataclass("TensorRTOptions"),
        "quant_section": section,
        "quant": set(importlib.import_module(quant_module).SETTINGS),
    }


def _sectioned_key_error(key: str, sections, global_keys, nested: Dict[str, Tuple[object, str]], tool: str) -> Optional[str]:
    """Why `key` is not a key of a tool whose config has `sections`, `Global` keys `global_keys` and, under a
    Global key named in `nested`, the sub-keys given there (with the words for them), or None."""
    parts = key.split(".")
    if parts[0] not in sections:
        return f"section {parts[0]!r} is not one of {sorted(sections)}"
    if parts[0] == "Global" and len(parts) > 1:
        if parts[1] not in global_keys:
            return f"Global.{parts[1]} is not a Global key of {tool}"
        sub_keys, words = nested.get(parts[1], (None, ""))
        if sub_keys is not None and len(parts) > 2 and parts[2] not in sub_keys:
            return f"Global.{parts[1]}.{parts[2]} is not a {words}"
    return None


def training_key_error(key: str, keys: Dict[str, object]) -> Optional[str]:
    """Why a training config (tools/*.py, deploy/slim) does not accept `key`, or None."""
    error = _sectioned_key_error(key, keys["train_sections"], keys["train_global"],
                                 {"progressive": (keys["progressive"], "progressive-learning key")}, "the tools")
    if error:
        return error
    parts = key.split(".")
    if parts[0] == "Slim" and len(parts) > 1:
        if ".".join(parts[:2]) != keys["quant_section"] or (len(parts) > 2 and parts[2] not in keys["quant"]):
            return f"{key} is not a {keys['quant_section']} setting"
    if parts[0] == "DataLoader" and len(parts) > 3 and parts[2] == "loader" and parts[3] not in keys["loader"]:
        return f"{key}: {parts[3]!r} is not a loader key"
    return None


def deploy_key_error(key: str, keys: Dict[str, object]) -> Optional[str]:
    """Why deploy/python/predict_cls.py's config does not accept `key`, or None."""
    return _sectioned_key_error(key, keys["deploy_sections"], keys["deploy_global"],
                                {"tensorrt": (keys["tensorrt"], "TensorRT setting")}, "predict_cls.py")


def overrides(page: Path) -> Iterator[Tuple[int, str, str]]:
    """(line, key, which tool reads it: 'deploy', 'train' or 'any') for every -o the page shows."""
    for number, command in commands(page):
        tool = ("deploy" if "predict_cls.py" in command else
                "train" if re.search(r"tools/\w+\.py|quant_post_static\.py", command) else "any")
        for key in OVERRIDE.findall(command):
            if not any(PLACEHOLDER.match(part) for part in key.split(".")):
                yield number, key, tool


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_override_keys_are_accepted_by_the_tools(page, accepted):
    wrong = []
    for number, key, tool in overrides(page):
        train, deploy = training_key_error(key, accepted), deploy_key_error(key, accepted)
        why = {"train": train, "deploy": deploy, "any": train and deploy}[tool]
        if why:
            wrong.append(f"{relative(page)}:{number}: -o {key}= ({tool}): {why}")
    assert not wrong, "\n".join(wrong)


def test_the_key_checks_catch_wrong_keys(accepted, tmp_path):
    """The checks above can fail: misspelt or misplaced keys are caught, the right ones pass."""
    assert training_key_error("Global.epochs", accepted) is None
    assert training_key_error("Global.epoch", accepted)
    assert training_key_error("Optimiser.lr", accepted)
    assert training_key_error("Global.inference_model_dir", accepted)  # a deploy key, not a training one
    assert training_key_error("Slim.quant_post_static.batch_nums", accepted) is None
    assert training_key_error("Slim.quant_post_static.batch_num", accepted)
    assert deploy_key_error("Global.inference_model_dir", accepted) is None
    assert deploy_key_error("Global.tensorrt.calibration", accepted) is None
    assert deploy_key_error("Global.tensorrt.calibrate", accepted)
    assert deploy_key_error("Global.epochs", accepted)
    assert slug("`tools/gpu_check.py`") == "toolsgpu_checkpy"
    assert slug("PaddleClas's tools: train, eval, infer, export") == "paddleclass-tools-train-eval-infer-export"
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n**Bold**\n\n## Twice\n\n```bash\n# a comment\n```\n\n## Twice\n", encoding="utf-8")
    assert anchors(page) == {"title", "twice", "twice-1"}  # bold text and code comments are not headings
