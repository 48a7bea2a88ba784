"""Make PaddleClas build our models by name.

PaddleClas's `build_model(config)` looks `Arch.name` up as an attribute of its `arch` module (and
`RecModel` evaluates backbone names in that module's namespace), so registering means setting every zoo
name on `arch` and `arch.backbone` - for the wheel layout (`paddleclas.ppcls.arch`) and a source checkout
(`ppcls.arch`). Modules already imported are patched at once; later imports are patched by an import hook
as soon as they finish executing, so `import ppcls_ext` stays cheap (it never imports PaddleClas).
"""
from __future__ import annotations

import importlib.abc
import sys
from types import ModuleType
from typing import Callable

import paddle
import paddle.nn as nn

from .registry import create_model, list_models, paddleclas_arch_options

ARCH_MODULES = ("paddleclas.ppcls.arch", "ppcls.arch")
TARGET_MODULES = ARCH_MODULES + tuple(f"{name}.backbone" for name in ARCH_MODULES)
#: the variants PaddleClas has its own class for -> their module under paddleclas.ppcls.arch.backbone.model_zoo
PADDLECLAS_MODULES = {
    **{f"MicroNet_M{i}": "micronet" for i in range(4)},
    **{f"EfficientNetB{i}": "efficientnet" for i in range(8)},
    **{f"EfficientNetV2_{v}": "efficientnet_v2" for v in ("S", "M", "L", "XL")},
}


def paddleclas_original(name: str, **kwargs) -> nn.Layer:
    """PaddleClas's own class for `name` (not ours, even after registration), in eval mode: the reference
    that tests and benchmarks compare against. Built in a fresh unique-name scope: PaddleClas's
    EfficientNet gives its parameters fixed names and cannot be built twice in one process otherwise."""
    if name not in PADDLECLAS_MODULES:
        raise ValueError(f"PaddleClas has no class for {name!r}; it has {', '.join(PADDLECLAS_MODULES)}")
    module = importlib.import_module(f"paddleclas.ppcls.arch.backbone.model_zoo.{PADDLECLAS_MODULES[name]}")
    with paddle.utils.unique_name.guard():
        model = getattr(module, name)(**kwargs)
    model.eval()
    return model


def paddleclas_builder(name: str) -> Callable[..., nn.Layer]:
    """The callable PaddleClas finds under `name`: takes an `Arch` section's keyword arguments."""

    def build(**arch_options) -> nn.Layer:
        return create_model(name, **paddleclas_arch_options(name, arch_options))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"ppcls_ext's {name}; see ppcls_ext.create_model."
    return build


def register_models(module: ModuleType) -> None:
    """Set every zoo model name on `module`, replacing PaddleClas's own classes of the same name."""
    for name in list_models():
        setattr(module, name, paddleclas_builder(name))


class _RegisteringLoader(importlib.abc.Loader):
    """Delegates to the real loader and registers the models once the module has executed."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        register_models(module)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds PaddleClas's arch modules through the other finders and wraps their loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGET_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Register into the PaddleClas modules imported so far and into those imported later (idempotent)."""
    for name in TARGET_MODULES:
        if name in sys.modules:
            register_models(sys.modules[name])
    if not any(isinstance(finder, _RegisterOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
