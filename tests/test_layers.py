"""Shared layers: rounding rules, TF-SAME padding, squeeze-excite, drop-path."""
import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddleclas.ppcls.arch.backbone.model_zoo import efficientnet as pc_v1
from paddleclas.ppcls.arch.backbone.model_zoo import efficientnet_v2 as pc_v2

from ppcls_ext.models.layers import ConvBNAct, DropPath, SqueezeExcite, conv_padding, make_divisible, round_repeats


def test_make_divisible_hand_values():
    assert make_divisible(32 * 1.2) == 40  # 38.4 -> nearest multiple of 8
    assert make_divisible(20, 16) == 32  # 16 would lose 20%: the guard bumps it
    assert make_divisible(20, 16, guard=False) == 16
    assert make_divisible(3, 8) == 8  # never below the divisor
    assert make_divisible(3, 4, min_value=2) == 4


@pytest.mark.parametrize("width", [1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 4.3])
def test_make_divisible_matches_official_rounding(width):
    v1 = pc_v1.GlobalParams(width_coefficient=width, depth_divisor=8, min_depth=None)
    for channels in (16, 24, 32, 40, 80, 112, 192, 320, 1280):
        assert make_divisible(channels * width, 8) == pc_v1.round_filters(channels, v1)
        assert make_divisible(channels * width, 8, guard=False) == pc_v2.round_filters(channels, width, 8, 8)


@pytest.mark.parametrize("depth", [1.0, 1.1, 1.2, 1.4, 1.8, 2.2, 2.6, 3.1, 3.6, 5.3])
def test_round_repeats_is_ceil_like_official(depth):
    v1 = pc_v1.GlobalParams(depth_coefficient=depth, depth_trunc="ceil")
    for repeats in range(1, 9):
        assert round_repeats(repeats, depth) == pc_v1.round_repeats(repeats, v1) == math.ceil(repeats * depth)


def tf_same_conv(x, weight, stride, groups=1):
    """Reference TF SAME: pad (total // 2, total - total // 2) with total from the output size."""
    pads = []
    for size, k in zip(x.shape[2:], weight.shape[2:]):
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    x = F.pad(x, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]])
    return F.conv2d(x, weight, stride=stride, groups=groups)


@pytest.mark.parametrize("size", [224, 225, 97, 15, 8])
@pytest.mark.parametrize("kernel,stride,depthwise", [(3, 2, False), (5, 2, True), (3, 1, True), (5, 1, False)])
def test_same_padding_equals_tensorflow_at_every_size(size, kernel, stride, depthwise):
    paddle.seed(0)
    channels = 4
    layer = ConvBNAct(channels, channels, kernel, stride, groups=channels if depthwise else 1, act_layer=None, padding="same")
    layer.eval()
    x = paddle.randn([2, channels, size, size + 3])
    expected = layer.bn(tf_same_conv(x, layer.conv.weight, stride, groups=channels if depthwise else 1))
    got = layer(x)
    assert got.shape == [2, channels, -(-size // stride), -(-(size + 3) // stride)]
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


def test_symmetric_padding_is_half_kernel():
    assert conv_padding(5, 2, "symmetric") == (2, 2)
    assert conv_padding((3, 1), (2, 1), "symmetric") == (1, 0)
    assert conv_padding(3, 1, "same") == (1, 1)  # stride 1, odd kernel: SAME is symmetric anyway
    assert conv_padding(3, 2, "same") == "SAME"
    layer = ConvBNAct(3, 4, 3, 2, padding="symmetric")
    assert layer(paddle.randn([1, 3, 9, 9])).shape == [1, 4, 5, 5]


def test_padding_mode_is_validated():
    with pytest.raises(ValueError, match=r"padding must be one of \('same', 'symmetric'\), got 'valid'"):
        ConvBNAct(3, 4, 3, padding="valid")


def test_squeeze_excite_hand_computed():
    paddle.seed(1)
    se = SqueezeExcite(6, 2)
    x = paddle.randn([2, 6, 5, 7])
    mean = x.numpy().mean(axis=(2, 3))
    w1, b1 = se.reduce.weight.numpy()[:, :, 0, 0], se.reduce.bias.numpy()
    w2, b2 = se.expand.weight.numpy()[:, :, 0, 0], se.expand.bias.numpy()
    hidden = mean @ w1.T + b1
    hidden = hidden / (1 + np.exp(-hidden))
    gate = 1 / (1 + np.exp(-(hidden @ w2.T + b2)))
    np.testing.assert_allclose(se(x).numpy(), x.numpy() * gate[:, :, None, None], rtol=1e-5, atol=1e-6)


def test_drop_path_identity_in_eval_and_per_sample_in_training():
    layer = DropPath(0.5)
    x = paddle.ones([400, 3, 2, 2])
    layer.eval()
    assert (layer(x) == x).all()
    layer.train()
    paddle.seed(3)
    out = layer(x).numpy()
    per_sample = out.reshape(400, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}  # kept samples are scaled by 1 / keep
    assert (per_sample.min(axis=1) == per_sample.max(axis=1)).all()  # whole sample dropped or kept
    assert 0.4 < (per_sample[:, 0] == 0).mean() < 0.6
    assert (DropPath(0.0)(x) == x).all()


def test_drop_path_rate_is_validated():
    with pytest.raises(ValueError, match=r"drop-path rate must be in \[0, 1\), got 1.0"):
        DropPath(1.0)
