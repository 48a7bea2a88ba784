"""The training step of a distillation run: the trained models (student, and peers in mutual learning)
run through `net`, the frozen teachers without gradients, and the distillation losses read all outputs by
model name. The teachers live here only: never in the optimizer, the EMA, a checkpoint or an export."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import paddle
import paddle.nn as nn

from ..task import TaskResult


class DistillationTask:
    """`model`: the trained models (a DistillationModel, what the optimizer, EMA and checkpoints hold);
    `net`: the same, possibly under DataParallel; `frozen`: {name: teacher}; `order`: every model's name
    in config order; `metric`: scores `metric.select(outputs)`, or None when no training metric is kept."""

    def __init__(self, model: nn.Layer, net: nn.Layer, frozen: Mapping[str, nn.Layer], order: Sequence[str],
                 loss: Callable[..., Mapping[str, paddle.Tensor]], metric: Optional[Any]):
        self.model, self.net, self.frozen, self.order = model, net, dict(frozen), list(order)
        self.loss, self.metric = loss, metric

    def __call__(self, images: paddle.Tensor, labels: paddle.Tensor) -> TaskResult:
        outputs = dict(self.net(images))
        with paddle.no_grad():
            for name, teacher in self.frozen.items():
                outputs[name] = teacher(images)
        outputs = {name: outputs[name] for name in self.order}
        return TaskResult(outputs, dict(self.loss(outputs, labels)))

    def score(self, result: TaskResult, labels: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """The training metric of the scored model's output (nothing when the metric is off)."""
        return dict(self.metric(self.metric.select(result.output), labels)) if self.metric is not None else {}

    def train(self) -> None:
        """Trained models in training mode; frozen teachers stay in evaluation mode."""
        self.net.train()
        for teacher in self.frozen.values():
            teacher.eval()
