"""The record, in a `.pdparams` file, of the numerics a set of weights was trained with (`models.numerics`:
padding of the strided convolutions and batch-norm epsilon, which the EfficientNet families take as build
options `padding`, `bn_epsilon`), so that whoever loads the file later builds the model the same way.

The activation is not among them: every implementation we import from uses the one of the model it
matches by its keys (SiLU for EfficientNet and V2, ReLU6 for EfficientNet-Lite, the only ones without
squeeze-excite), so weights of the other kind fail to load instead of computing with another activation.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

from ..models.layers import PADDING_MODES
from ..models.numerics import Numerics
from ..safe_pickle import describe

#: entry of a `.pdparams` (and of a checkpoint's `.pdstates`) that records the numerics; not a tensor
NUMERICS_KEY = "SourceNumerics@@"


def numerics_entry(numerics: Numerics, origin: Optional[str] = None) -> Dict[str, object]:
    """The record of `numerics` (and of the file they were first read from, if known) stored under NUMERICS_KEY."""
    entry: Dict[str, object] = {"padding": numerics.padding, "bn_epsilon": float(numerics.bn_epsilon)}
    if origin:
        entry["origin"] = origin
    return entry


def numerics_from_entry(entry: object, source: str) -> Numerics:
    """The numerics recorded by `numerics_entry` (other keys, such as the `activation` that earlier versions
    wrote, are informative only); a malformed record is a ValueError naming `source`."""
    try:
        numerics = Numerics(str(entry["padding"]), float(entry["bn_epsilon"]))  # type: ignore[index]
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"{source}: malformed {NUMERICS_KEY} entry {describe(entry)}") from error
    if numerics.padding not in PADDING_MODES or not (math.isfinite(numerics.bn_epsilon) and numerics.bn_epsilon > 0):
        raise ValueError(f"{source}: malformed {NUMERICS_KEY} entry {describe(entry)} (padding one of {PADDING_MODES}, "
                         "bn_epsilon a positive number)")
    return numerics


def recorded_numerics(state: Mapping[str, object], source: str) -> Optional[Numerics]:
    """The numerics that a state dict (or a checkpoint's training states) records, if any."""
    entry = state.get(NUMERICS_KEY)
    return None if entry is None else numerics_from_entry(entry, source)
