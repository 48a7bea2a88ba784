"""Top-k accuracy (PaddleClas's `TopkAcc`), per batch for logging and per sample for exact evaluation."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import paddle

from ..config import ConfigError, single_entry


class TopkAcc:
    """Accuracy at each k of `topk`; k larger than the class count is capped at it."""

    def __init__(self, topk: Sequence[int] = (1, 5)):
        topk = [topk] if isinstance(topk, int) else list(topk)
        if not topk or any(not isinstance(k, int) or k < 1 for k in topk):
            raise ValueError(f"topk must be positive integers, got {topk!r}")
        self.topk = topk

    def hits(self, logits: paddle.Tensor, label: paddle.Tensor) -> paddle.Tensor:
        """[N, len(topk)] float: 1 where the label is among the top k. Soft labels count by argmax."""
        if label.ndim == logits.ndim and label.shape[-1] == logits.shape[-1]:
            label = label.argmax(axis=-1)
        label = label.reshape([-1, 1]).astype("int64")
        k_max = min(max(self.topk), logits.shape[-1])
        top = paddle.topk(logits, k=k_max, axis=-1)[1]
        match = (top == label).astype("float32")
        return paddle.stack([match[:, : min(k, k_max)].sum(axis=-1) for k in self.topk], axis=-1)

    def names(self) -> Sequence[str]:
        return [f"top{k}" for k in self.topk]

    def __call__(self, logits: paddle.Tensor, label: paddle.Tensor) -> Dict[str, float]:
        means = self.hits(logits, label).mean(axis=0).numpy()
        return dict(zip(self.names(), (float(v) for v in np.atleast_1d(means))))


METRICS = {"TopkAcc": TopkAcc}


def build_metric(entries, where: str) -> TopkAcc:
    """The metric list of `Metric.<Train|Eval>`; TopkAcc is the one supported."""
    if not entries:
        return TopkAcc()
    if len(entries) != 1:
        raise ConfigError(f"{where}: only one metric (TopkAcc) is supported, got {len(entries)}")
    name, args = single_entry(entries[0], f"{where}[0]")
    if name not in METRICS:
        raise ConfigError(f"{where}[0]: unknown metric {name!r}; valid: {', '.join(METRICS)}")
    try:
        return METRICS[name](**args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}[0]: bad arguments for {name}: {error}") from error
