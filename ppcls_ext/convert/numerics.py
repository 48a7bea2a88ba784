"""The numerics a set of weights was trained with - padding of strided convolutions, batch-norm epsilon,
activation - read from and set on a built EfficientNet, so that imported weights give the logits of the
implementation that trained them.

Paddle offers no public setter for these after construction: the epsilon is the batch norm's `_epsilon`
(read in `BatchNorm2D.forward`, paddle/nn/layer/norm.py), and a convolution's padding is fixed in
`Conv2D.__init__` (paddle/nn/layer/conv.py), so convolutions are rebuilt with the same arguments and
weights and the new padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import paddle.nn as nn

from ..models.efficientnet import EfficientNet
from ..models.layers import ConvBNAct, SiLU, conv_padding

ACTIVATIONS: Dict[str, type] = {"silu": SiLU, "relu6": nn.ReLU6}


@dataclass(frozen=True)
class Numerics:
    """padding: "same" (TensorFlow's) or "symmetric" (PyTorch's k // 2); activation: "silu" or "relu6"."""

    padding: str
    bn_epsilon: float
    activation: str

    def describe(self) -> str:
        return f"padding={self.padding}, bn_epsilon={self.bn_epsilon:g}, activation={self.activation}"


def _conv_bn_acts(model: EfficientNet) -> List[ConvBNAct]:
    return [layer for layer in model.sublayers() if isinstance(layer, ConvBNAct)]


def _activation_name(layer: nn.Layer) -> str:
    for name, kind in ACTIVATIONS.items():
        if type(layer) is kind:
            return name
    raise ValueError(f"unsupported activation {type(layer).__name__}")


def model_numerics(model: EfficientNet) -> Numerics:
    """The numerics `model` computes with now (read from its stem, a 3x3 stride-2 convolution)."""
    stem = model.stem
    padding = "same" if stem.conv._padding == "SAME" else "symmetric"
    return Numerics(padding, float(stem.bn._epsilon), _activation_name(stem.act))


def _with_padding(conv: nn.Conv2D, padding: str) -> nn.Conv2D:
    """A copy of `conv` (same shape, stride, groups, layout and weights) with `padding`."""
    rebuilt = nn.Conv2D(conv._in_channels, conv._out_channels, conv._kernel_size, stride=conv._stride,
                        padding=conv_padding(tuple(conv._kernel_size), tuple(conv._stride), padding),
                        groups=conv._groups, bias_attr=False if conv.bias is None else None,
                        data_format=conv._data_format)
    rebuilt.weight.set_value(conv.weight)
    if conv.bias is not None:
        rebuilt.bias.set_value(conv.bias)
    return rebuilt


def apply_numerics(model: EfficientNet, numerics: Numerics) -> List[str]:
    """Make `model` compute with `numerics` (every conv-BN-activation unit and batch norm); returns what
    changed, e.g. ["padding same -> symmetric"], empty when it already did. Call before creating an
    optimizer: rebuilt convolutions are new parameters."""
    if numerics.padding not in ("same", "symmetric") or numerics.activation not in ACTIVATIONS:
        raise ValueError(f"unsupported numerics {numerics}")
    current = model_numerics(model)
    for unit in _conv_bn_acts(model):
        if current.padding != numerics.padding:
            unit.conv = _with_padding(unit.conv, numerics.padding)
        if not isinstance(unit.act, nn.Identity) and current.activation != numerics.activation:
            unit.act = ACTIVATIONS[numerics.activation]()
    if current.bn_epsilon != numerics.bn_epsilon:
        for layer in model.sublayers():
            if isinstance(layer, nn.BatchNorm2D):
                layer._epsilon = numerics.bn_epsilon
    return [f"{field} {getattr(current, field)} -> {getattr(numerics, field)}"
            for field in ("padding", "bn_epsilon", "activation") if getattr(current, field) != getattr(numerics, field)]


#: entry of a converted .pdparams that records the numerics of the weights' source (not a tensor)
NUMERICS_KEY = "SourceNumerics@@"


def numerics_entry(numerics: Numerics, origin: str) -> Dict[str, object]:
    return {"padding": numerics.padding, "bn_epsilon": float(numerics.bn_epsilon), "activation": numerics.activation,
            "origin": origin}


def numerics_from_entry(entry: object, source: str) -> Numerics:
    try:
        return Numerics(str(entry["padding"]), float(entry["bn_epsilon"]), str(entry["activation"]))  # type: ignore[index]
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"{source}: malformed {NUMERICS_KEY} entry {entry!r}") from error
