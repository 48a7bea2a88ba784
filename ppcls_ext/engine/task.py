"""What one training step computes, as an object the loop calls: `task(images, labels)` returns the
losses (the total under "loss") and the output the metric scores (timm's `timm/task/` is the model). The
classification task here; other tasks (distillation) keep the same shape."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping

import paddle
import paddle.nn as nn


@dataclass
class TaskResult:
    """`losses`: named terms and their weighted total "loss", as PaddleClas's loss dict; `output`: what
    the training metric scores."""

    output: Any
    losses: Dict[str, paddle.Tensor]

    @property
    def loss(self) -> paddle.Tensor:
        return self.losses["loss"]


def gradient_sync(net: nn.Layer, boundary: bool):
    """Under gradient accumulation, data-parallel gradients are all-reduced only at the optimizer step."""
    return net.no_sync() if not boundary and isinstance(net, paddle.DataParallel) else contextlib.nullcontext()


class ClassificationTask:
    """A classifier trained with a loss on its logits. `model`: the layer the optimizer, EMA and
    checkpoints hold; `net`: the same, possibly wrapped by DataParallel, which the step runs."""

    def __init__(self, model: nn.Layer, net: nn.Layer, loss: Callable[..., Mapping[str, paddle.Tensor]],
                 metric: Callable[..., Mapping[str, paddle.Tensor]]):
        self.model, self.net, self.loss, self.metric = model, net, loss, metric

    def __call__(self, images: paddle.Tensor, labels: paddle.Tensor) -> TaskResult:
        logits = self.net(images)
        return TaskResult(logits, dict(self.loss(logits, labels)))

    def score(self, result: TaskResult, labels: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """The training metric of one step's output."""
        return dict(self.metric(result.output, labels))

    def train(self) -> None:
        self.net.train()

