"""Activation recomputation for training: blocks keep only their inputs in the forward pass and run again
in the backward pass (Paddle's `paddle.distributed.fleet.utils.recompute`), trading compute (about one
more forward) for the memory of their intermediate activations.

Gradients are those of the normal run (the random state is replayed, so drop-path masks repeat); batch
norm running statistics, which the second forward would update a second time, are restored after it.
"""
from __future__ import annotations

from typing import FrozenSet, Iterable, Sequence, Union

import paddle
import paddle.nn as nn
from paddle.distributed.fleet.utils import recompute

RecomputeOption = Union[bool, Sequence[int]]


def recompute_stages(option: RecomputeOption, stage_count: int) -> FrozenSet[int]:
    """The stage indices an `Arch.recompute` option selects: True (all), False (none) or a list of indices."""
    if isinstance(option, bool):
        return frozenset(range(stage_count)) if option else frozenset()
    if isinstance(option, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in option):
        wrong = [i for i in option if not 0 <= i < stage_count]
        if not wrong:
            return frozenset(option)
    raise ValueError(f"recompute must be true, false or a list of stage indices in 0..{stage_count - 1}, got {option!r}")


class _RecomputedBlock:
    """`block` as the function given to recompute: its second call (the recomputation during backward)
    puts back the batch norm running statistics that this call updates again."""

    def __init__(self, block: nn.Layer):
        self.block = block
        self.calls = 0

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        self.calls += 1
        if self.calls == 1:
            return self.block(x)
        frozen = [(p, p.clone()) for p in self.block.parameters() if p.stop_gradient]  # running mean / variance
        out = self.block(x)
        for parameter, value in frozen:
            parameter.set_value(value)
        return out


def run_recomputed(blocks: Iterable[nn.Layer], x: paddle.Tensor) -> paddle.Tensor:
    """`x` through `blocks` in turn, each under recompute (only block inputs are kept for backward)."""
    for block in blocks:
        x = recompute(_RecomputedBlock(block), x, use_reentrant=False)
    return x
