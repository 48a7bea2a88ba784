"""Make PaddleClas build our models by name.

PaddleClas's `build_model(config)` looks `Arch.name` up as an attribute of its `arch` module (and
`RecModel` evaluates backbone names in that module's namespace), so registering means setting every zoo
name on `arch` and `arch.backbone` - for the wheel layout (`paddleclas.ppcls.arch`) and a source checkout
(`ppcls.arch`). Likewise the learning-rate schedules our configs use that PaddleClas lacks (`Exponential`)
go into its `optimizer.learning_rate`. Modules already imported are patched at once; later imports are
patched by `ppcls_ext_hook`'s import hook as soon as they finish executing, so `import ppcls_ext` stays
cheap (it never imports PaddleClas).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable

import paddle
import paddle.nn as nn
from paddle.optimizer.lr import LRScheduler

from ppcls_ext_hook import when_imported

from .registry import create_model, declarations, list_models, paddleclas_arch_options

#: PaddleClas's layouts: the wheel (`paddleclas.ppcls`) and a source checkout (`ppcls`)
PACKAGES = ("paddleclas.ppcls", "ppcls")
ARCH_MODULES = tuple(f"{package}.arch" for package in PACKAGES)
LR_MODULES = tuple(f"{package}.optimizer.learning_rate" for package in PACKAGES)
#: the variants PaddleClas has its own class for -> their module under paddleclas.ppcls.arch.backbone.model_zoo
#: (each family's declaration says)
PADDLECLAS_MODULES = {d.name: d.paddleclas_module for d in declarations() if d.paddleclas_module is not None}


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
    """Set every zoo model name on `module`, replacing PaddleClas's own classes of the same name. The names
    come from the registry when the module is imported, so models added to the zoo later are included."""
    for name in list_models():
        setattr(module, name, paddleclas_builder(name))


def paddleclas_schedule(name: str) -> Callable[..., LRScheduler]:
    """Our learning-rate schedule `name` behind PaddleClas's calling convention: `build_lr_scheduler` calls
    it with the `Optimizer.lr` keys plus `epochs` and `step_each_epoch`, and steps the result every
    iteration, or once per epoch when it has `by_epoch` set (then our schedule counts epochs)."""

    def build(epochs: int, step_each_epoch: int, **lr_config) -> LRScheduler:
        from .engine.optim import build_lr_schedule

        by_epoch = bool(lr_config.get("by_epoch", False))
        schedule = build_lr_schedule({"name": name, **lr_config}, int(epochs), 1 if by_epoch else int(step_each_epoch))
        schedule.by_epoch = by_epoch
        return schedule

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"ppcls_ext's {name} learning-rate schedule; see ppcls_ext.engine.optim.build_lr_schedule."
    return build


def register_schedules(module: ModuleType) -> None:
    """Add to PaddleClas's `optimizer.learning_rate` module the schedules our configs use that it lacks
    (its own schedules of the same name are kept)."""
    from .engine.optim import SCHEDULES

    for name in SCHEDULES:
        if not hasattr(module, name) or getattr(getattr(module, name), "__module__", None) == __name__:
            setattr(module, name, paddleclas_schedule(name))


def install() -> None:
    """Register into the PaddleClas modules imported so far and into those imported later (idempotent)."""
    for name in ARCH_MODULES:
        when_imported(name, register_models)
        when_imported(f"{name}.backbone", register_models)
    for name in LR_MODULES:
        when_imported(name, register_schedules)
