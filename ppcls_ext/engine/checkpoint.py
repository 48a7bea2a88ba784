"""Checkpoints in PaddleClas's layout: `<prefix>.pdparams` (model), `.pdopt` (optimizer and schedule),
`.pdema` (EMA weights) and `.pdstates` (epoch, best metrics, counters).

Every file is written to a temporary name and renamed into place, so a run killed at any moment leaves
each file either the old complete one or the new complete one; `.pdstates`, which says which epoch the
checkpoint belongs to, is renamed last.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

import paddle

from ..config import ConfigError
from ..safe_load import load_paddle_file


def atomic_save(obj: Any, path: str) -> None:
    """paddle.save to `path` via a temporary file in the same directory and an atomic rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        paddle.save(obj, temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_checkpoint(prefix: str, model_state: Dict[str, Any], optimizer_state: Optional[Dict[str, Any]] = None,
                    states: Optional[Dict[str, Any]] = None, ema_state: Optional[Dict[str, Any]] = None) -> None:
    atomic_save(model_state, prefix + ".pdparams")
    if optimizer_state is not None:
        atomic_save(optimizer_state, prefix + ".pdopt")
    if ema_state is not None:
        atomic_save(ema_state, prefix + ".pdema")
    if states is not None:
        atomic_save(states, prefix + ".pdstates")


def load_training_checkpoint(prefix: str, with_ema: bool) -> Dict[str, Any]:
    """The files of a checkpoint to resume from, checked to be there: model, optimizer, states (and EMA)."""
    if prefix.endswith(".pdparams"):
        prefix = prefix[: -len(".pdparams")]
    suffixes = [".pdparams", ".pdopt", ".pdstates"] + ([".pdema"] if with_ema else [])
    missing = [prefix + s for s in suffixes if not os.path.isfile(prefix + s)]
    if missing:
        raise ConfigError(f"Global.checkpoints={prefix!r}: cannot resume, missing {', '.join(missing)}")
    loaded = {}
    for suffix in suffixes:
        try:
            loaded[suffix[1:]] = load_paddle_file(prefix + suffix)
        except Exception as error:  # unpickling raises many types for truncated, foreign or refused files
            raise ConfigError(f"Global.checkpoints: {prefix + suffix} is not readable: {error}") from error
    return loaded


def _rename_by_prefix(state: Mapping[str, Any], renames: Mapping[str, str]) -> Dict[str, Any]:
    """Rename keys of the form `<old>_<suffix>` (and `<old>` itself) to `<new>_<suffix>`, longest `<old>`
    first; other keys are kept."""
    olds = sorted(renames, key=len, reverse=True)
    result: Dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Mapping) and key == "master_weights":
            value = _rename_by_prefix(value, renames)
        old = next((o for o in olds if key == o or key.startswith(o + "_")), None)
        result[renames[old] + key[len(old):] if old else key] = value
    return result


def portable_optimizer_state(state: Mapping[str, Any], model: paddle.nn.Layer) -> Dict[str, Any]:
    """Paddle keys optimizer state by generated parameter names (`conv2d_24.w_0_velocity_0`), which
    depend on construction order; store it under structured names (`stem.conv.weight_velocity_0`)."""
    return _rename_by_prefix(state, {param.name: name for name, param in model.named_parameters()})


def restore_optimizer_state(state: Mapping[str, Any], model: paddle.nn.Layer) -> Dict[str, Any]:
    """The inverse of `portable_optimizer_state` for `model` as built now."""
    return _rename_by_prefix(state, {name: param.name for name, param in model.named_parameters()})
