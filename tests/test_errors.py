"""The one error hierarchy (ppcls_ext.errors): every exception class of the package derives from
PpclsExtError and keeps the built-in base it had, its category gives the exit status the command lines
use, the module docstring lists every class, and each command line reports errors in one `except` clause."""
from __future__ import annotations

import ast
import importlib
import os
import pickle

import pytest

from conftest import REPO
from ppcls_ext import errors
from ppcls_ext.cli.boundary import report

#: every exception class of ppcls_ext -> (its category, the built-in base it had before the hierarchy)
EXPECTED = {
    "ppcls_ext.config.ConfigError": (errors.UserError, (ValueError,)),
    "ppcls_ext.data.dataset.DataError": (errors.UserError, (ValueError,)),
    "ppcls_ext.registry.UnknownModelError": (errors.UserError, (KeyError, ValueError)),
    "ppcls_ext.weights.IncompatibleWeightsError": (errors.UserError, (ValueError,)),
    "ppcls_ext.weights.WeightsDownloadError": (errors.UserError, (OSError,)),
    "ppcls_ext.convert.layouts.LayoutError": (errors.UserError, (ValueError,)),
    "ppcls_ext.convert.torch_file.TorchFileError": (errors.UserError, (ValueError,)),
    "ppcls_ext.safe_pickle.PickleDataError": (errors.UserError, (pickle.UnpicklingError,)),
    "ppcls_ext.safe_pickle.UnsafePickleError": (errors.UserError, (pickle.UnpicklingError,)),
    "ppcls_ext.output_paths.WriteError": (errors.UserError, (OSError,)),
    "ppcls_ext.output_paths.IncompleteWrite": (errors.InternalError, (OSError,)),
    "ppcls_ext.models.declaration.DeclarationError": (errors.InternalError, (ValueError,)),
    "ppcls_ext.inference.classifier.ExportError": (errors.UserError, (ValueError,)),
    "ppcls_ext.inference.options.DeploymentError": (errors.UserError, (RuntimeError,)),
    "ppcls_ext.inference.trt_runtime.TensorRTError": (errors.UserError, (RuntimeError,)),
    "ppcls_ext.quant.post_static.BudgetNotMet": (errors.UserError, ()),
    "ppcls_ext.errors.NonFiniteError": (errors.NonFiniteError, (RuntimeError,)),
}
#: the one exception outside the hierarchy: a signal, not an error (130 / 143, like KeyboardInterrupt)
OUTSIDE = {"ppcls_ext.interrupts.Interrupted"}
CATEGORIES = {"PpclsExtError", "UserError", "NonFiniteError", "InternalError"}


def exception_classes():
    """Every exception class defined in ppcls_ext, found in the source and then imported."""
    found = {}
    for folder, _, names in os.walk(os.path.join(REPO, "ppcls_ext")):
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            with open(path, encoding="utf-8") as f:
                classes = [node.name for node in ast.parse(f.read()).body if isinstance(node, ast.ClassDef) and node.bases]
            if not classes:
                continue
            loaded = importlib.import_module(module)
            for cls_name in classes:
                cls = getattr(loaded, cls_name)
                if isinstance(cls, type) and issubclass(cls, BaseException):
                    found[f"{module}.{cls_name}"] = cls
    return found


def test_every_exception_class_is_in_the_hierarchy_and_keeps_its_builtin_base():
    found = exception_classes()
    only_categories = {f"ppcls_ext.errors.{name}" for name in CATEGORIES - {"NonFiniteError"}}
    assert set(found) - only_categories - OUTSIDE == set(EXPECTED)
    for name, (category, builtins) in EXPECTED.items():
        cls = found[name]
        assert issubclass(cls, errors.PpclsExtError) and issubclass(cls, category), name
        assert all(issubclass(cls, base) for base in builtins), name
        assert cls.exit_status == category.exit_status, name
    assert not issubclass(found["ppcls_ext.interrupts.Interrupted"], Exception)


def test_the_exit_statuses_are_the_documented_ones():
    from ppcls_ext.config import ConfigError
    from ppcls_ext.output_paths import IncompleteWrite

    assert (errors.UserError.exit_status, errors.NonFiniteError.exit_status, errors.InternalError.exit_status) == (2, 3, 1)
    assert errors.exit_status(ConfigError("x")) == 2 and errors.exit_status(errors.NonFiniteError("x")) == 3
    assert errors.exit_status(FileNotFoundError("x")) == 2
    assert not isinstance(IncompleteWrite("x"), errors.REPORTED)  # internal: its traceback is kept


def test_the_docstring_lists_every_class():
    doc = errors.__doc__
    for name in sorted(set(EXPECTED) | OUTSIDE):
        where = name.replace("ppcls_ext.errors.", "").replace("ppcls_ext.", "")  # as the tree writes it
        assert where in doc, name
    assert all(name in doc for name in CATEGORIES)


def test_user_code_catching_the_builtin_types_still_catches():
    from ppcls_ext.registry import UnknownModelError, get_model_config

    with pytest.raises(KeyError) as caught:
        get_model_config("NoSuchNet")
    assert isinstance(caught.value, UnknownModelError) and isinstance(caught.value, ValueError)
    assert "NoSuchNet" in str(caught.value) and not str(caught.value).startswith("'")  # its own message, unquoted
    from ppcls_ext.weights import WeightsDownloadError

    assert isinstance(WeightsDownloadError("x"), OSError) and str(WeightsDownloadError("x")) == "x"


def test_report_prints_one_line_and_returns_the_class_status(capsys):
    assert report(errors.NonFiniteError("training stopped: loss is nan")) == 3
    assert report(FileNotFoundError("weights file not found: w.pdparams")) == 2
    worker = errors.UserError("DataLoader worker(0) caught\nTraceback (most recent call last):\n  File x\n"
                              "DataError: labels.txt, line 3: cannot read a.jpg")
    assert report(worker) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: training stopped: loss is nan", "error: weights file not found: w.pdparams",
        "error: labels.txt, line 3: cannot read a.jpg"]


def command_line_handlers():
    """(file, line, handler source) of every `except` clause in a `main` of ppcls_ext/cli."""
    folder = os.path.join(REPO, "ppcls_ext", "cli")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                source = f.read()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef) and node.name == "main":
                    for handler in ast.walk(node):
                        if isinstance(handler, ast.ExceptHandler):
                            yield name, handler.lineno, ast.get_source_segment(source, handler.type)


def test_each_command_line_reports_errors_in_one_except_clause():
    handlers = list(command_line_handlers())
    reporting = {(name, text) for name, _, text in handlers if "REPORTED" in text}
    assert {name for name, _ in reporting} >= {"__init__.py", "predict_cls.py", "convert_weights.py",
                                               "split_dataset.py", "quant_post_static.py"}
    # besides: gpu_check's ValueError is argparse's --only/--skip check; make_configs names the config it failed to
    # write before the error (exit status 2, a user error's), also when its folder cannot be made (a plain OSError)
    allowed = {("gpu_check.py", "ValueError"), ("make_configs.py", "(OSError, WriteError)")}
    others = [(name, line, text) for name, line, text in handlers if "REPORTED" not in text
              and text != "Interrupted" and (name, text) not in allowed]
    assert not others, others
    assert len(reporting) == len({name for name, _ in reporting})  # one clause per command line
