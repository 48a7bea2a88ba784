"""Whether this GPU runs float16 AMP at all: Paddle silently falls back to float32 below compute capability 7.0.

paddle/amp/auto_cast.py: `amp_decorate` returns the models and optimizers untouched when
`_is_gpu_float16_supported()` (capability >= 7) is false — O2's float16 weights are never made, without a
word — and `amp_guard` (auto_cast) turns itself off with a `warnings.warn` per call. So `AMP.level: O2` on a
Pascal or older GPU would train in float32 while the config and the log say O2: refused here. O1 degrades to
float32 the same way; that is logged once and training goes on in float32.
"""
from __future__ import annotations

import logging
from typing import Optional

import paddle

from ..config import ConfigError

logger = logging.getLogger("ppcls_ext")
FLOAT16_MIN_CAPABILITY = (7, 0)


def supported_level(level: Optional[str], device: str) -> Optional[str]:
    """The AMP level that will really run on `device`: `level` unchanged off GPU or with capability >= 7.0;
    None (float32, logged) for O1 below it; a ConfigError for O2 below it."""
    if not level or device != "gpu":
        return level
    capability = tuple(paddle.device.cuda.get_device_capability())
    if capability >= FLOAT16_MIN_CAPABILITY:
        return level
    gpu = f"{paddle.device.cuda.get_device_name()} (compute capability {capability[0]}.{capability[1]})"
    if level == "O2":
        raise ConfigError(f"AMP.level O2 needs float16 support (compute capability 7.0 or higher); {gpu} has none and "
                          "Paddle would silently train in float32: remove the AMP section or use a Volta or newer GPU")
    logger.warning("AMP.level %s: %s has no float16 support (compute capability < 7.0); training in float32", level, gpu)
    return None
