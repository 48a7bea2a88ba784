"""Exponential moving average of a model's weights and BN statistics (PaddleClas's `EMA: {decay}`)."""
from __future__ import annotations

import copy
from typing import Dict

import paddle
import paddle.nn as nn


class ModelEMA:
    """`ema = d * ema + (1 - d) * current` after every optimizer step. With `warmup` (the official
    TensorFlow EfficientNet behaviour) d = min(decay, (1 + n) / (10 + n)) after n updates, so that short
    runs are not dominated by the initial weights."""

    def __init__(self, model: nn.Layer, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model)
        self.module.eval()
        for param in self.module.parameters():
            param.stop_gradient = True
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates)) if self.warmup else self.decay

    @paddle.no_grad()
    def update(self, model: nn.Layer) -> None:
        """One step of the average. It reads the model's own tensors: under AMP O2 (`paddle.amp.decorate`
        with `save_dtype`) `state_dict()` would run hooks that make a float32 copy of every tensor."""
        decay = self.current_decay()
        self.updates += 1
        current = model.state_dict(use_hook=False)
        for key, average in self.module.state_dict(use_hook=False).items():
            value = current[key]
            if paddle.is_floating_point(average):
                average.set_value(average * decay + value.astype(average.dtype) * (1.0 - decay))
            else:
                average.set_value(value)

    def state_dict(self) -> Dict[str, paddle.Tensor]:
        return self.module.state_dict()

    def set_state_dict(self, state: Dict[str, paddle.Tensor], updates: int) -> None:
        self.module.set_state_dict(state)
        self.updates = int(updates)
