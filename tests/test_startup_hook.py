"""ppcls_ext_hook: the start-up file loads only the hook (no Paddle, no ppcls_ext); the first import of
PaddleClas brings ppcls_ext in first (CPU settings before Paddle loads) and our names into PaddleClas; it can be
switched off, is idempotent, lives beside other import hooks without recursion, survives a broken ppcls_ext,
and ships in the wheel build. Each case runs in a fresh interpreter whose site folder holds the .pth, as
site-packages would after `pip install`."""
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

import ppcls_ext_hook
from conftest import REPO


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    (folder / ppcls_ext_hook.PTH_NAME).write_text(ppcls_ext_hook.PTH_LINE)
    return str(folder)


def run_python(code, site=None, env=None, pythonpath=(), flags=()):
    """Run `code` in a fresh interpreter, with `site` processed as a site-packages folder first; returns the
    JSON printed after RESULT, and stderr."""
    prologue = f"import site; site.addsitedir({site!r})\n" if site else ""
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([*pythonpath, REPO]), **(env or {}))
    proc = subprocess.run([sys.executable, *flags, "-c", prologue + textwrap.dedent(code)], capture_output=True, text=True,
                          env=environ, timeout=300, cwd=tempfile.gettempdir())  # not the checkout: "" leads sys.path
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):]), proc.stderr


MODULES_AFTER_STARTUP = """
import json, sys
print("RESULT" + json.dumps(sorted(sys.modules)))
"""


def test_the_startup_file_loads_the_hook_and_nothing_heavy(site_dir, tmp_path):
    """-S: this environment's own site-packages (which may hold the hook already) stay out of the comparison."""
    with_hook, _ = run_python(MODULES_AFTER_STARTUP, site=site_dir, flags=["-S"])
    without, _ = run_python(MODULES_AFTER_STARTUP, site=str(tmp_path), flags=["-S"])  # an empty site folder
    assert set(with_hook) - set(without) == {"ppcls_ext_hook"}


IMPORT_ORDER = """
import json, sys
order = []
class Recorder:
    def find_spec(self, name, path=None, target=None):
        order.append(name)
sys.meta_path.insert(0, Recorder())
from paddleclas.ppcls import arch
import ppcls_ext.cpu_env
print("RESULT" + json.dumps({"order": [n for n in order if n in ("paddle", "ppcls_ext", "ppcls_ext.cpu_env", "paddleclas")],
                             "registered": [hasattr(arch, n) for n in ppcls_ext.list_models()],
                             "module": arch.EfficientNetV2_B0.__module__, "cpu_notes": ppcls_ext.cpu_env.APPLIED,
                             "finders": sum(getattr(f, "ppcls_ext_hook", False) for f in sys.meta_path)}))
"""


def test_first_paddleclas_import_brings_ppcls_ext_before_paddle(site_dir):
    """PaddleClas's wheel imports Paddle first thing: ppcls_ext (and its CPU settings, which must precede
    Paddle's MKL) comes in just before, and every zoo name is on PaddleClas's arch module."""
    result, _ = run_python(IMPORT_ORDER, site=site_dir)
    assert result["order"][:4] == ["paddleclas", "ppcls_ext", "ppcls_ext.cpu_env", "paddle"]
    assert all(result["registered"]) and result["module"] == "ppcls_ext.paddleclas_plugin"
    assert not any("imported before ppcls_ext" in note for note in result["cpu_notes"])
    assert result["finders"] == 1


def test_the_environment_switch_turns_the_automatic_import_off(site_dir):
    code = """
    import json, sys
    from paddleclas.ppcls import arch
    print("RESULT" + json.dumps(["ppcls_ext" in sys.modules, hasattr(arch, "EfficientNetV2_B0")]))
    """
    assert run_python(code, site=site_dir, env={ppcls_ext_hook.SWITCH: "0"})[0] == [False, False]
    assert run_python(code, site=site_dir, env={ppcls_ext_hook.SWITCH: "1"})[0] == [True, True]


def test_install_is_idempotent_and_callbacks_run_once_per_import(site_dir):
    code = """
    import json, sys
    import ppcls_ext_hook
    calls = []
    for _ in range(3):
        ppcls_ext_hook.autoload()
        ppcls_ext_hook.when_imported("json.decoder", calls.append)  # already imported: called at once, once
    import ppcls_ext
    ppcls_ext.paddleclas_plugin.install()
    from paddleclas.ppcls import arch
    print("RESULT" + json.dumps({"finders": sum(getattr(f, "ppcls_ext_hook", False) for f in sys.meta_path),
                                 "calls": len(calls), "registered": hasattr(arch, "EfficientNetL2")}))
    """
    assert run_python(code, site=site_dir)[0] == {"finders": 1, "calls": 3, "registered": True}


CONSULTING_FINDER = """
import json, sys
class Consulting:
    '''Another library's finder that, like ours, asks the other finders (skipping only itself).'''
    def find_spec(self, name, path=None, target=None):
        if not name.startswith("paddleclas"):
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    return spec
        return None
sys.meta_path.insert({position}, Consulting())
from paddleclas.ppcls import arch
print("RESULT" + json.dumps(arch.EfficientNetB8.__module__))
"""


@pytest.mark.parametrize("position", [0, 1, "len(sys.meta_path)"])
def test_beside_a_finder_that_also_consults_the_others_there_is_no_recursion(site_dir, position):
    assert run_python(CONSULTING_FINDER.format(position=position), site=site_dir)[0] == "ppcls_ext.paddleclas_plugin"


def test_a_broken_ppcls_ext_warns_once_and_paddleclas_still_imports(site_dir, tmp_path):
    broken = tmp_path / "ppcls_ext"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('half-installed')\n")
    code = """
    import json, sys
    from paddleclas.ppcls import arch
    print("RESULT" + json.dumps([hasattr(arch, "MicroNet_M0"), hasattr(arch, "EfficientNetV2_B0")]))
    """
    result, stderr = run_python(code, site=site_dir, pythonpath=[str(tmp_path)])
    assert result == [True, False]  # PaddleClas's own models still there, ours not
    assert stderr.count("ppcls_ext_hook: could not import ppcls_ext (RuntimeError: half-installed)") == 1
    assert f"Set {ppcls_ext_hook.SWITCH}=0" in stderr and "Traceback" not in stderr


def test_module_command_writes_and_removes_the_startup_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / ppcls_ext_hook.PTH_NAME
    monkeypatch.setattr(ppcls_ext_hook, "pth_path", lambda: str(target))
    assert ppcls_ext_hook.main(["install"]) == 0 and target.read_text() == ppcls_ext_hook.PTH_LINE
    assert ppcls_ext_hook.main(["status"]) == 0 and "present; automatic import on" in capsys.readouterr().out
    assert ppcls_ext_hook.main(["uninstall"]) == 0 and not target.exists()
    assert ppcls_ext_hook.main(["bogus"]) == 2 and "usage: python -m ppcls_ext_hook" in capsys.readouterr().err


def test_the_startup_line_survives_an_uninstalled_hook(tmp_path):
    """After `pip uninstall`, a left-over .pth (editable set-up) must not print errors at every start-up. (-S and no
    PYTHONPATH: nothing can import ppcls_ext_hook.)"""
    (tmp_path / ppcls_ext_hook.PTH_NAME).write_text(ppcls_ext_hook.PTH_LINE)
    proc = subprocess.run([sys.executable, "-S", "-c", f"import site; site.addsitedir({str(tmp_path)!r}); print('ok')"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=""), cwd=str(tmp_path), timeout=60)
    assert proc.stdout.strip() == "ok" and proc.stderr == ""


def test_the_package_build_puts_the_startup_file_beside_the_hook_module(tmp_path):
    """setup.py's build_py (what a wheel and `pip install .` are made from) writes ppcls_ext_hook.pth at the top."""
    pytest.importorskip("setuptools", reason="setuptools is not installed in this environment")
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / ppcls_ext_hook.PTH_NAME).read_text() == ppcls_ext_hook.PTH_LINE
    assert (tmp_path / "ppcls_ext_hook.py").is_file() and (tmp_path / "ppcls_ext" / "__init__.py").is_file()
