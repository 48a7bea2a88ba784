"""Which layers to keep in float: rank every quantizable layer by the damage that quantizing it alone does to
the model's output (mean KL from the float model on the calibration images), then keep the worst ones in
float, as few as the budget allows (measured on the held-out images)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .gate import Agreement, Budget, mean_kl, probabilities
from .onnx_int8 import Layer, OnnxRunner, Quantizer

logger = logging.getLogger("ppcls_ext")


@dataclass(frozen=True)
class Ranked:
    layer: Layer
    damage: float  # mean KL (nats) of the model with only this layer quantized, against the float model


def rank_layers(quantizer: Quantizer, images: np.ndarray, softmax_in_model: bool, threads: int = 0) -> List[Ranked]:
    """Every quantizable layer of `quantizer` with the damage of quantizing it alone, worst first."""
    reference = probabilities(OnnxRunner(quantizer.float_model, threads).run(images), softmax_in_model)
    ranked = []
    for index, layer in enumerate(quantizer.layers):
        outputs = OnnxRunner(quantizer.build(only=[layer.name]), threads).run(images)
        ranked.append(Ranked(layer, mean_kl(reference, probabilities(outputs, softmax_in_model))))
        if (index + 1) % 25 == 0:
            logger.info("sensitivity: %d of %d layers measured", index + 1, len(quantizer.layers))
    return sorted(ranked, key=lambda item: -item.damage)


@dataclass(frozen=True)
class Search:
    """The outcome of keeping the worst layers in float: the layers kept, the agreement reached with them,
    and every count tried with its agreement."""

    kept: List[Layer]
    result: Optional[Agreement]  # None when no layer may stay float
    tried: List[Tuple[int, Agreement]]
    held: bool


def keep_worst_in_float(ranking: Sequence[Ranked], budget: Budget, limit: int,
                        evaluate: Callable[[List[str]], Agreement]) -> Search:
    """The fewest worst-ranked layers (at most `limit`) to keep in float for `evaluate(excluded names)` to hold
    the budget: counts 1, 2, 4, ... up to `limit`, then a bisection between the last count that missed and the
    first that held. When even `limit` layers miss it, the result with `limit` layers and held=False."""
    tried: List[Tuple[int, Agreement]] = []

    def attempt(count: int) -> Agreement:
        result = evaluate([item.layer.name for item in ranking[:count]])
        tried.append((count, result))
        logger.info("int8 with the %d most damaging layers in float: top-1 agreement %.2f%%, mean KL %.3g", count,
                    result.top1_agreement * 100, result.mean_kl)
        return result

    if limit < 1:
        return Search([], None, tried, False)
    missed, count = 0, 1
    while True:
        result = attempt(count)
        if not budget.misses(result):
            break
        if count == limit:
            return Search([item.layer for item in ranking[:limit]], result, tried, False)
        missed, count = count, min(count * 2, limit)
    held_at, held_result = count, result
    while held_at - missed > 1:
        middle = (missed + held_at) // 2
        result = attempt(middle)
        if budget.misses(result):
            missed = middle
        else:
            held_at, held_result = middle, result
    return Search([item.layer for item in ranking[:held_at]], held_result, tried, True)


def float_limit(configured: Optional[int], layers: int) -> int:
    """The most layers that may stay float: as configured, else a quarter of the quantizable layers (more would
    leave little of the model in int8)."""
    return min(layers, configured if configured is not None else max(1, layers // 4))


def ranking_table(ranking: Sequence[Ranked], kept: Sequence[Layer] = ()) -> List[List[str]]:
    """Rows (rank, layer, damage, kept in float) for the report and the refusal."""
    kept_names = {layer.name for layer in kept}
    return [[str(i + 1), item.layer.describe(), f"{item.damage:.3g}", "yes" if item.layer.name in kept_names else ""]
            for i, item in enumerate(ranking)]

