"""The accuracy gate of an int8 model: how far its predictions are from the float model's on held-out images
(top-1 agreement, mean KL divergence of the probabilities, top-1/top-5 against the labels), and the budget
they must stay within."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..config import ConfigError


def probabilities(outputs: np.ndarray, softmax_in_model: bool) -> np.ndarray:
    """Class probabilities from a model's outputs: as they are when the export ends in softmax, else softmax."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if softmax_in_model:
        return outputs
    shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over images of KL(reference || other), in nats (probabilities floored at 1e-12; rounding can make
    an image's sum a hair below 0 where the two agree, which counts as 0)."""
    p = np.maximum(reference, 1e-12)
    q = np.maximum(other, 1e-12)
    return float(np.mean(np.maximum(np.sum(p * (np.log(p) - np.log(q)), axis=-1), 0.0)))


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=-1)))


@dataclass(frozen=True)
class Agreement:
    """int8 against float on `images` held-out images; accuracies are None without labels."""

    images: int
    top1_agreement: float
    mean_kl: float
    float_top1: Optional[float] = None
    float_top5: Optional[float] = None
    int8_top1: Optional[float] = None
    int8_top5: Optional[float] = None

    @property
    def top1_drop(self) -> Optional[float]:
        return None if self.float_top1 is None else self.float_top1 - self.int8_top1

    def as_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "top1_drop": self.top1_drop}


def compare(float_probs: np.ndarray, int8_probs: np.ndarray, labels: Optional[Sequence[int]] = None) -> Agreement:
    """The agreement of two models' probabilities on the same images (labels: their true classes, if known)."""
    agreement = float(np.mean(float_probs.argmax(-1) == int8_probs.argmax(-1)))
    accuracies: Dict[str, float] = {}
    if labels is not None:
        truth = np.asarray(labels)
        k = min(5, float_probs.shape[-1])
        accuracies = {"float_top1": topk_accuracy(float_probs, truth, 1), "float_top5": topk_accuracy(float_probs, truth, k),
                      "int8_top1": topk_accuracy(int8_probs, truth, 1), "int8_top5": topk_accuracy(int8_probs, truth, k)}
    return Agreement(len(float_probs), agreement, mean_kl(float_probs, int8_probs), **accuracies)


@dataclass(frozen=True)
class Budget:
    """What an int8 model must reach on the held-out images: top-1 agreement with the float model of at
    least `min_agreement`; optionally a top-1 drop against the labels of at most `max_top1_drop` (a fraction:
    0.01 is one point) and a mean KL of at most `max_kl`."""

    min_agreement: float = 0.99
    max_top1_drop: Optional[float] = None
    max_kl: Optional[float] = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"min_agreement must be between 0 and 1, got {self.min_agreement}")

    def describe(self) -> str:
        parts = [f"top-1 agreement >= {self.min_agreement:.2%}"]
        if self.max_top1_drop is not None:
            parts.append(f"top-1 drop <= {self.max_top1_drop * 100:.2f} points")
        if self.max_kl is not None:
            parts.append(f"mean KL <= {self.max_kl:.3g}")
        return ", ".join(parts)

    def misses(self, result: Agreement) -> List[str]:
        """What `result` misses of the budget, as phrases naming the limit and the value reached (empty: held)."""
        missed = []
        if result.top1_agreement < self.min_agreement:
            missed.append(f"top-1 agreement {result.top1_agreement:.2%} < {self.min_agreement:.2%}")
        if self.max_top1_drop is not None and result.top1_drop is not None and result.top1_drop > self.max_top1_drop:
            missed.append(f"top-1 drop {result.top1_drop * 100:.2f} > {self.max_top1_drop * 100:.2f} points")
        if self.max_kl is not None and result.mean_kl > self.max_kl:
            missed.append(f"mean KL {result.mean_kl:.3g} > {self.max_kl:.3g}")
        return missed

    def images_to_decide(self) -> int:
        """The fewest held-out images on which one disagreement shows against `min_agreement` (1 / (1 - p)):
        with fewer, 'no disagreement' is all the gate can see, whatever the model does on other images."""
        if self.min_agreement >= 1.0:
            return 1
        return math.ceil(1.0 / (1.0 - self.min_agreement) - 1e-9)
