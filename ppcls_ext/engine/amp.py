"""The AMP policy of a run (PaddleClas's `AMP` section): the auto_cast level for training and evaluation,
and the object that owns backward, loss scaling and the optimizer step, so the loops never ask whether a
loss scaler is there (timm's `NativeScaler` is the model)."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Mapping, Optional

import numpy as np
import paddle

from ..config import ConfigError
from .amp_support import supported_level
from .log import logger
from .optim import update_skipped

# the scaler's settings that stay as configured when a checkpoint's loss scale is restored
_CONFIGURED_SCALER_KEYS = ("incr_ratio", "decr_ratio", "incr_every_n_steps", "decr_every_n_nan_or_inf",
                           "use_dynamic_loss_scaling")


class Unscaled:
    """float32 training: plain backward and step; nothing to save."""

    scaler = None

    def backward(self, loss: paddle.Tensor) -> None:
        loss.backward()

    def step(self, optimizer: paddle.optimizer.Optimizer) -> bool:
        """Apply the gradients; returns whether the update was applied (always)."""
        optimizer.step()
        return True

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def restore(self, saved: Optional[Mapping[str, Any]]) -> None:
        """Nothing was scaled, so nothing is restored."""

    def current_scale(self) -> Optional[float]:
        return None


class LossScaled:
    """Mixed-precision training with Paddle's `GradScaler`: scaled backward, a step that the scaler skips on
    inf/NaN gradients, and the loss scale saved in and restored from checkpoints."""

    def __init__(self, scaler: paddle.amp.GradScaler):
        self.scaler = scaler

    def backward(self, loss: paddle.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: paddle.optimizer.Optimizer) -> bool:
        """Apply the gradients unless they overflowed; returns whether the update was applied."""
        self.scaler.step(optimizer)
        applied = not update_skipped(self.scaler)
        self.scaler.update()
        return applied

    def state_dict(self) -> Dict[str, Any]:
        """{"amp_scaler": state} for a checkpoint's states; empty when Paddle disabled the scaler."""
        return {"amp_scaler": self.scaler.state_dict()} if self.scaler.is_enable() else {}

    def restore(self, saved: Optional[Mapping[str, Any]]) -> None:
        """The loss scale and its counters from a checkpoint; the ratios and intervals stay as configured."""
        if not self.scaler.is_enable():
            return
        if not saved:
            logger.info("[AMP] the checkpoint has no loss-scaler state: starting at the configured scale")
            return
        configured = self.scaler.state_dict()
        if not configured["use_dynamic_loss_scaling"]:
            return  # a fixed scale is the configured one
        self.scaler.load_state_dict({**saved, **{key: configured[key] for key in _CONFIGURED_SCALER_KEYS}})
        logger.info("[AMP] loss scale %g restored from the checkpoint", float(np.asarray(saved["scale"]).reshape(-1)[0]))

    def current_scale(self) -> Optional[float]:
        scale = self.scaler.state_dict().get("scale")
        return float(np.ravel(scale)[0]) if scale is not None else float("nan")


class AmpPolicy:
    """`level` ("O1"/"O2", or None when AMP is off), whether evaluation runs under auto_cast, and the
    training's `scaling` (Unscaled or LossScaled)."""

    def __init__(self, level: Optional[str] = None, eval_autocast: bool = False, scaling: Any = None):
        self.level = level
        self.eval_autocast = eval_autocast
        self.scaling = scaling if scaling is not None else Unscaled()

    @classmethod
    def from_config(cls, amp: Optional[Mapping[str, Any]], device: str, mode: str, evaluates: bool) -> "AmpPolicy":
        """The `AMP` section as PaddleClas reads it, for training and tools/eval.py: `level` O1/O2, loss
        scaling, and `use_fp16_test` (evaluation under auto_cast). O2 keeps float16 weights, which run only
        under auto_cast: training at O2 therefore evaluates under auto_cast whatever `use_fp16_test` says
        (as PaddleClas). `evaluates`: the run has an evaluation set."""
        amp = amp or {}
        level = str(amp.get("level", "O1")).upper() if amp and amp.get("use_amp", True) else None
        if level not in (None, "O1", "O2"):
            raise ConfigError(f"AMP.level must be O1 or O2, got {amp.get('level')!r}")
        if level and device != "gpu":
            logger.warning("AMP (mixed precision) needs a GPU; %s in float32 on CPU",
                           "training" if mode == "train" else "evaluating")
            level = None
        level = supported_level(level, device)
        fp16_test = bool(amp.get("use_fp16_test", False))
        eval_autocast = bool(level) and (fp16_test or (mode == "train" and level == "O2"))
        if eval_autocast and not fp16_test and evaluates:
            logger.info("AMP.level O2 trains float16 weights: evaluation runs under auto_cast (AMP.use_fp16_test "
                        "is forced on, as in PaddleClas)")
        scaling = None
        if level and mode == "train":
            scaling = LossScaled(paddle.amp.GradScaler(init_loss_scaling=float(amp.get("scale_loss", 65536.0)),
                                                       use_dynamic_loss_scaling=bool(amp.get("use_dynamic_loss_scaling", True))))
        return cls(level, eval_autocast, scaling)

    def decorate_for_training(self, model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer):
        """(model, optimizer), decorated at O2 (float16 weights, float32 master weights and saves)."""
        if self.level == "O2":
            return paddle.amp.decorate(model, optimizer, level="O2", save_dtype="float32")
        return model, optimizer

    def decorate_for_evaluation(self, model: paddle.nn.Layer) -> paddle.nn.Layer:
        """tools/eval.py with `use_fp16_test` at O2 decorates the model as training did (as PaddleClas)."""
        if self.level == "O2" and self.eval_autocast:
            return paddle.amp.decorate(model, level="O2", save_dtype="float32")
        return model

    def autocast(self, enabled: bool = True):
        """auto_cast at the configured level when `enabled` and AMP is on, else nothing."""
        return paddle.amp.auto_cast(enable=True, level=self.level) if enabled and self.level else contextlib.nullcontext()

    def evaluation_autocast(self):
        return self.autocast(self.eval_autocast)

    def backward(self, loss: paddle.Tensor) -> None:
        self.scaling.backward(loss)

    def step(self, optimizer: paddle.optimizer.Optimizer) -> bool:
        return self.scaling.step(optimizer)

    def divergence_details(self) -> Optional[Dict[str, Any]]:
        """{"level", "scale"} for the divergence message of a loss-scaled run, else None."""
        scale = self.scaling.current_scale()
        return None if scale is None else {"level": self.level, "scale": scale}
