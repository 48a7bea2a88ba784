"""Top-k accuracy (PaddleClas's `TopkAcc`), per batch for logging and per sample for exact evaluation,
and the running means of the training log, kept on the device."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import paddle
import paddle.distributed as dist

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
