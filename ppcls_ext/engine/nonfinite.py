"""Non-finite numbers (NaN, Inf) stop a run: a diverged training run ends with one line naming where it
diverged and the likely cause, and nothing non-finite is saved, evaluated or reported as a score.

The training loop must not wait for the device every step, so the loss is watched on the device
(`LossWatch`) and read back only where the loop reads its log values anyway."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import paddle
import paddle.distributed as dist


def nonfinite_tensors(state: Mapping[str, paddle.Tensor]) -> List[str]:
    """Names of the floating-point tensors of `state` holding a NaN or Inf (one transfer for all)."""
    names = [name for name, tensor in state.items() if paddle.is_floating_point(tensor)]
    if not names:
        return []
    finite = paddle.stack([paddle.isfinite(state[name]).all() for name in names]).numpy()
    return [name for name, ok in zip(names, finite) if not ok]


def describe_nonfinite_weights(state: Mapping[str, paddle.Tensor], source: str) -> Optional[str]:
    """A one-line report when weights loaded from `source` hold NaN/Inf, else None."""
    bad = nonfinite_tensors(state)
    if not bad:
        return None
    total = sum(1 for tensor in state.values() if paddle.is_floating_point(tensor))
    return (f"{source}: {len(bad)} of {total} weight tensors hold NaN or Inf (e.g. {bad[0]}), as a diverged training "
            f"run leaves them; they cannot give meaningful scores")


class LossWatch:
    """Counts, on the device, consecutive iterations whose loss is NaN or Inf. The run trips when the count
    reaches `patience`; the watch keeps the iteration where that run of bad losses began and the loss value
    there. `update` launches a few scalar device operations and never waits for the device; `tripped` reads
    the state back (one transfer, and one gather across ranks so that every rank decides alike)."""

    def __init__(self, patience: int):
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.patience = patience
        self.reset()

    def reset(self) -> None:
        """Start a new epoch: iterations are counted from 0 again."""
        self._iteration = paddle.full([], -1, "int64")
        self._streak = paddle.zeros([], "int64")
        self._streak_start = paddle.full([], -1, "int64")
        self._streak_value = paddle.zeros([], "float64")
        self._tripped = paddle.zeros([], "bool")
        self._first = paddle.full([], -1, "int64")
        self._value = paddle.zeros([], "float64")

    @paddle.no_grad()
    def update(self, loss: paddle.Tensor) -> None:
        """Record the loss of the next iteration."""
        loss = paddle.cast(loss.detach().reshape([]), "float64")
        self._iteration = self._iteration + 1
        bad = paddle.logical_not(paddle.isfinite(loss))
        starts = paddle.logical_and(bad, self._streak == 0)
        self._streak_start = paddle.where(starts, self._iteration, self._streak_start)
        self._streak_value = paddle.where(starts, loss, self._streak_value)
        self._streak = paddle.where(bad, self._streak + 1, paddle.zeros_like(self._streak))
        trips = paddle.logical_and(self._streak >= self.patience, paddle.logical_not(self._tripped))
        self._first = paddle.where(trips, self._streak_start, self._first)
        self._value = paddle.where(trips, self._streak_value, self._value)
        self._tripped = paddle.logical_or(self._tripped, trips)

    def tripped(self, world_size: int = 1) -> Optional[Tuple[int, float]]:
        """(iteration where the bad run began, the loss there) when any rank tripped, else None. With
        `world_size > 1` this is a collective call: every rank must call it at the same point."""
        state = paddle.stack([paddle.cast(self._tripped, "float64"), paddle.cast(self._first, "float64"), self._value])
        if world_size > 1:
            gathered: List[paddle.Tensor] = []
            dist.all_gather(gathered, state)
            state = paddle.stack(gathered)
        rows = state.numpy().reshape(-1, 3)
        rows = rows[rows[:, 0] > 0]
        if not len(rows):
            return None
        first = rows[np.argmin(rows[:, 1])]
        return int(first[1]), float(first[2])


def divergence_message(epoch: int, iteration: int, value: float, patience: int, lr: float, lr_key: str,
                       amp: Optional[Dict[str, object]], kept: str) -> str:
    """The one line that ends a diverged training run; `lr_key` is the config key that sets the learning
    rate, `kept` says which checkpoints remain."""
    what = "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    where = (f"the loss is {what} at epoch {epoch}, iteration {iteration}" if patience == 1 else
             f"the loss has been NaN/Inf for {patience} consecutive iterations from epoch {epoch}, iteration {iteration} "
             f"(first {what})")
    cause = f"the learning rate ({lr:.6g} at that iteration; {lr_key}) is likely too high"
    if amp:
        cause += (f", or float16 overflows under AMP {amp['level']} (loss scale {amp['scale']:.6g}): lower the learning "
                  f"rate, or train with AMP.use_amp: False to check")
    return f"training stopped: {where}; {cause}; {kept}"
