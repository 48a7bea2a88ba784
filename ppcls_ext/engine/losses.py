"""Losses from a PaddleClas `Loss.<Train|Eval>` list: `[{CELoss: {weight: 1.0, epsilon: 0.1}}, ...]`."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..config import ConfigError, number, one_of, single_entry
from ..config_registry import ConfigRegistry

LOSSES = ConfigRegistry("loss")
#: the weight of a loss in the total (every entry of a Loss list may set it)
LOSS_WEIGHT = number()
#: label smoothing: None, or a fraction of the target mass spread over the classes
EPSILON = number(0, optional=True, expected="a number in [0, 1) or null")


def check_epsilon(epsilon: Optional[float], where: str) -> float:
    """A label-smoothing epsilon in [0, 1) (None: 0)."""
    if EPSILON(epsilon, where) is not None and epsilon >= 1.0:
        raise ConfigError(f"{where} must be a number in [0, 1) or null, got {epsilon!r}")
    return float(epsilon or 0.0)


@LOSSES.register
class CELoss(nn.Layer):
    """Cross-entropy against integer labels or soft labels ([N, C], from mixup/cutmix), with optional
    label smoothing `epsilon` (the target becomes (1 - eps) * one_hot + eps / C)."""

    def __init__(self, epsilon: Optional[float] = None, reduction: str = "mean"):
        super().__init__()
        self.epsilon = check_epsilon(epsilon, "CELoss: epsilon")
        self.reduction = one_of(("mean", "none"))(reduction, "CELoss: reduction")

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
        weight = float(LOSS_WEIGHT(args.pop("weight", 1.0), f"{where}[{position}].{name}.weight"))
        args.setdefault("reduction", reduction)
        terms.append((name, weight, LOSSES.build({name: args}, f"{where}[{position}]")))
    return CombinedLoss(terms)
