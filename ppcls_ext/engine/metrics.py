"""Top-k accuracy (PaddleClas's `TopkAcc`), per batch for logging and per sample for exact evaluation,
and the running means of the training log, kept on the device."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import paddle
import paddle.distributed as dist

from ..config import ConfigError, int_list, integer
from ..config_registry import ConfigRegistry

METRICS = ConfigRegistry("metric")
_K = integer(1, expected="a positive integer or a list of them")
_KS = int_list(None, 1, optional=False, expected="a positive integer or a list of them")


def check_topk(topk: Any, where: str) -> List[int]:
    """`topk` as a list of positive integers (one integer is a list of one)."""
    if isinstance(topk, (list, tuple)):
        return [int(k) for k in _KS(topk, where)]
    return [int(_K(topk, where))]


@METRICS.register
class TopkAcc:
    """Accuracy at each k of `topk`; k larger than the class count is capped at it."""

    def __init__(self, topk: Sequence[int] = (1, 5)):
        self.topk = check_topk(topk, f"{type(self).__name__}: topk")

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

    def __call__(self, logits: paddle.Tensor, label: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """The batch's accuracy at each k, as 0-d float32 tensors left on the device."""
        means = self.hits(logits, label).mean(axis=0)
        return {name: means[position] for position, name in enumerate(self.names())}


class RunningMeans:
    """Sample-weighted means of per-batch scalars (losses, accuracies) over an epoch. The sums stay on the
    device, in float64 and in the order a host-side `sum += float(value) * n` would add them, so adding a
    batch never waits for the device and `read()` gives the same numbers with one transfer."""

    def __init__(self) -> None:
        self.names: List[str] = []
        self.count = 0
        self._sums: Optional[paddle.Tensor] = None

    def add(self, values: Mapping[str, paddle.Tensor], n: int) -> None:
        """Add one batch of `n` samples; `values` are 0-d tensors, always with the same names."""
        batch = paddle.stack([paddle.cast(v.detach().reshape([]), "float64") for v in values.values()]) * float(n)
        if self._sums is None:
            self.names, self._sums = list(values), batch
        else:
            self._sums = self._sums + batch
        self.count += n

    def read(self, world_size: int = 1) -> Dict[str, float]:
        """The means so far; with `world_size > 1`, over the samples of every rank (a collective call:
        every rank must read at the same point)."""
        if self._sums is None:
            return {}
        totals = paddle.concat([self._sums, paddle.full([1], float(self.count), "float64")])
        if world_size > 1:
            dist.all_reduce(totals)
        host = totals.numpy()
        return {name: float(total / host[-1]) for name, total in zip(self.names, host[:-1])}


def build_metric(entries, where: str) -> TopkAcc:
    """The metric list of `Metric.<Train|Eval>`; TopkAcc is the one supported."""
    if not entries:
        return TopkAcc()
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected a list of metrics, e.g. [{{TopkAcc: {{topk: [1, 5]}}}}], got {entries!r}")
    if len(entries) != 1:
        raise ConfigError(f"{where}: only one metric (TopkAcc) is supported, got {len(entries)}")
    return METRICS.build(entries[0], f"{where}[0]")
