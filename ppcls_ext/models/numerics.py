"""The numerics a model computes with that its weights must match: the padding of the strided convolutions
and the batch norms' epsilon, which differ between the implementations weights are trained with (TensorFlow
"SAME" padding and epsilon 1e-3, PyTorch's symmetric padding and 1e-5). A model says which it was built with
(`ImageClassifier.numerics()`); weights files record them (`ppcls_ext.convert.numerics`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Numerics:
    """padding: "same" (TensorFlow's) or "symmetric" (PyTorch's k // 2); bn_epsilon: the batch norms'."""

    padding: str
    bn_epsilon: float

    def describe(self) -> str:
        return f"padding={self.padding}, bn_epsilon={self.bn_epsilon:g}"

    def options(self) -> Dict[str, object]:
        """As keyword options of `create_model` / an `Arch` section."""
        return {"padding": self.padding, "bn_epsilon": self.bn_epsilon}
