"""The deploy form of a model: the same function with batch norms folded into the layer before them,
and layers that can compute more cheaply in evaluation (a `to_deploy_form` method) re-parameterized.

Paddle Inference's CPU passes leave every batch norm of these models standing (the profile of MicroNet_M0
shows all 26 running; 12% of its time), and ONNX Runtime fuses them only where it recognises the
pattern. Folding them into the convolution (or linear layer) before them is exact up to float rounding.
MicroNet goes further: `micronet_deploy` rebuilds it as a chain of large standard operators (shuffles
absorbed into weights, static reshapes; docs/micronet-speed.md).
"""
from __future__ import annotations

import copy

import paddle
import paddle.nn as nn

from .layers import ConvBNAct


def _bn_scale_shift(bn: nn.Layer):
    """(scale, shift) with bn(x) = x * scale + shift in evaluation."""
    scale = bn.weight / paddle.sqrt(bn._variance + bn._epsilon)
    return scale, bn.bias - bn._mean * scale


def _set_bias(layer: nn.Layer, value: paddle.Tensor) -> None:
    if layer.bias is None:
        layer.bias = layer.create_parameter(value.shape, is_bias=True)
    layer.bias.set_value(value)


def fold_conv_bn(block: ConvBNAct) -> None:
    """conv (no bias) -> BN becomes one conv with a bias."""
    scale, shift = _bn_scale_shift(block.bn)
    conv = block.conv
    conv.weight.set_value(conv.weight * scale.reshape([-1, 1, 1, 1]))
    _set_bias(conv, shift if conv.bias is None else conv.bias * scale + shift)
    block.bn = nn.Identity()


def fold_linear_bn(linear: nn.Linear, bn: nn.Layer) -> None:
    """linear -> BatchNorm1D becomes one linear layer (Paddle's weight is [in, out])."""
    scale, shift = _bn_scale_shift(bn)
    linear.weight.set_value(linear.weight * scale.reshape([1, -1]))
    _set_bias(linear, shift if linear.bias is None else linear.bias * scale + shift)


@paddle.no_grad()
def fold_batch_norms(model: nn.Layer) -> nn.Layer:
    """A copy of `model` in evaluation mode with every batch norm folded away and every layer with a
    `to_deploy_form` method converted; `model` is untouched."""
    model = copy.deepcopy(model)
    model.eval()
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, ConvBNAct) and isinstance(layer.bn, nn.BatchNorm2D):
            fold_conv_bn(layer)
        elif hasattr(layer, "to_deploy_form"):
            layer.to_deploy_form()
    return model


def deploy_form(model: nn.Layer) -> nn.Layer:
    """What tools/export_model.py exports: MicroNet rebuilt for inference engines where it can be
    (`micronet_deploy`), any other model with its batch norms folded (`fold_batch_norms`). `model` is
    untouched; the result is in evaluation mode."""
    from .micronet_deploy import expressible, micronet_deploy_form  # micronet imports this module

    return micronet_deploy_form(model) if expressible(model) else fold_batch_norms(model)
