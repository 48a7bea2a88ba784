"""Losses from a PaddleClas `Loss.<Train|Eval>` list: `[{CELoss: {weight: 1.0, epsilon: 0.1}}, ...]`."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..config import ConfigError, build_from_registry, single_entry


class CELoss(nn.Layer):
    """Cross-entropy against integer labels or soft labels ([N, C], from mixup/cutmix), with optional
    label smoothing `epsilon` (the target becomes (1 - eps) * one_hot + eps / C)."""

    def __init__(self, epsilon: Optional[float] = None, reduction: str = "mean"):
        super().__init__()
        if epsilon is not None and not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.epsilon = epsilon or 0.0
        self.reduction = reduction

    def forward(self, logits: paddle.Tensor, label: paddle.Tensor) -> paddle.Tensor:
        classes = logits.shape[-1]
        if label.ndim == logits.ndim and label.shape[-1] == classes and label.dtype in (paddle.float32, paddle.float16, paddle.float64):
            target = label.astype(logits.dtype)
        else:
            target = F.one_hot(label.reshape([-1]).astype("int64"), classes).astype(logits.dtype)
        if self.epsilon:
            target = target * (1.0 - self.epsilon) + self.epsilon / classes
        loss = -(target * F.log_softmax(logits, axis=-1)).sum(axis=-1)
        return loss.mean() if self.reduction == "mean" else loss


LOSSES = {"CELoss": CELoss}


class CombinedLoss(nn.Layer):
    """Weighted sum of the configured losses; returns {name: value, ..., "loss": total} as PaddleClas."""

    def __init__(self, terms: List[Tuple[str, float, nn.Layer]]):
        super().__init__()
        self.names = [name for name, _, _ in terms]
        self.weights = [weight for _, weight, _ in terms]
        self.terms = nn.LayerList([loss for _, _, loss in terms])

    def forward(self, logits: paddle.Tensor, label: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        values = {name: loss(logits, label) for name, loss in zip(self.names, self.terms)}
        values["loss"] = paddle.add_n([w * values[n] for n, w in zip(self.names, self.weights)])
        return values


def build_loss(entries: Any, where: str, reduction: str = "mean") -> CombinedLoss:
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: expected a non-empty list of losses, e.g. [{{CELoss: {{weight: 1.0}}}}]")
    terms = []
    for position, entry in enumerate(entries):
        name, args = single_entry(entry, f"{where}[{position}]")
        weight = float(args.pop("weight", 1.0))
        args.setdefault("reduction", reduction)
        terms.append((name, weight, build_from_registry("loss", LOSSES, name, args, f"{where}[{position}]")))
    return CombinedLoss(terms)
