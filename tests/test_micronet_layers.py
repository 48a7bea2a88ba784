"""MicroNet's layers one by one: hand-computed values and PaddleClas's layers as references."""
import numpy as np
import paddle
import pytest
from paddleclas.ppcls.arch.backbone.model_zoo import micronet as pc_micronet

from ppcls_ext.models.micronet import (
    MICRONET_SPECS,
    ChannelShuffle,
    DepthSpatialSepConv,
    DYMicroBlock,
    DYShiftMax,
    GroupConv,
    MaxGroupPooling,
    SpatialSepConvSF,
    shift_permutation,
    shuffle_permutation,
)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_max_group_pooling_hand_values_at_any_batch(batch):
    x = paddle.to_tensor(np.array([1, 5, 3, 2, -1, -4], dtype="float32").reshape(1, 6, 1, 1).repeat(batch, axis=0))
    np.testing.assert_array_equal(MaxGroupPooling(2)(x).numpy().reshape(batch, 3), [[5, 3, -1]] * batch)
    np.testing.assert_array_equal(MaxGroupPooling(3)(x).numpy().reshape(batch, 2), [[5, 2]] * batch)
    assert MaxGroupPooling(2)(paddle.randn([batch, 8, 7, 5])).shape == [batch, 4, 7, 5]


def test_paddleclas_max_group_pooling_is_broken_where_ours_is_not():
    """The bug we fix: `out, _ = paddle.max(...)` unpacks the batch dimension."""
    theirs = pc_micronet.MaxGroupPooling(2)
    with pytest.raises(ValueError):
        theirs(paddle.randn([1, 4, 3, 3]))
    assert theirs(paddle.randn([2, 4, 3, 3])).shape == [2, 3, 3]  # wrong: should be [2, 2, 3, 3]
    assert MaxGroupPooling(2)(paddle.randn([2, 4, 3, 3])).shape == [2, 2, 3, 3]


def test_max_group_pooling_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="5 channels are not a multiple of 2"):
        MaxGroupPooling(2)(paddle.randn([1, 5, 2, 2]))


def reference_shuffle(x: np.ndarray, groups: int) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


@pytest.mark.parametrize("channels,groups", [(12, 3), (16, 4), (24, 2), (8, 8), (6, 1)])
def test_channel_shuffle_equals_reshape_transpose(channels, groups, rng):
    x = rng.standard_normal((2, channels, 3, 4)).astype("float32")
    np.testing.assert_array_equal(ChannelShuffle(channels, groups)(paddle.to_tensor(x)).numpy(), reference_shuffle(x, groups))
    np.testing.assert_array_equal(shuffle_permutation(6, 2), [0, 3, 1, 4, 2, 5])


def test_composed_shuffles_equal_applying_them_in_turn(rng):
    x = rng.standard_normal((1, 24, 2, 2)).astype("float32")
    expected = reference_shuffle(reference_shuffle(x, 4), 12)
    np.testing.assert_array_equal(ChannelShuffle(24, 4, 12)(paddle.to_tensor(x)).numpy(), expected)
    # the same shuffle with the reference class of PaddleClas
    theirs = pc_micronet.ChannelShuffle(12)(pc_micronet.ChannelShuffle(4)(paddle.to_tensor(x)))
    np.testing.assert_array_equal(theirs.numpy(), expected)
    assert ChannelShuffle(8, 1).is_identity and ChannelShuffle(8, 8).is_identity
    assert not ChannelShuffle(8, 2).is_identity


def test_channel_shuffle_rejects_indivisible_groups():
    with pytest.raises(ValueError, match="10 channels cannot be split into 4 groups"):
        ChannelShuffle(10, 4)


def test_shift_permutation_matches_paddleclas_index():
    theirs = pc_micronet.DYShiftMax(8, 8, reduction=4, g=(0, 2))
    np.testing.assert_array_equal(shift_permutation(8, 2), theirs.index.numpy())
    np.testing.assert_array_equal(shift_permutation(8, 2), [5, 6, 7, 4, 1, 2, 3, 0])
    theirs = pc_micronet.DYShiftMax(24, 24, reduction=4, g=(0, 6), expansion=True)  # 24 // 6 = 4 groups
    np.testing.assert_array_equal(shift_permutation(24, 4), theirs.index.numpy())


def _fixed_coefficients(layer: DYShiftMax, expand_bias):
    """Zero the squeeze path so that the coefficients come from the expand bias alone:
    delta = (hardsigmoid(z) - 0.5) * 2 * act_max = 2z/3 for act_max 2 and |z| <= 3."""
    for p in layer.parameters():
        p.set_value(paddle.zeros(p.shape))
    layer.expand.bias.set_value(paddle.to_tensor(np.array(expand_bias, dtype="float32")))


def test_dy_shift_max_two_branches_hand_computed():
    layer = DYShiftMax(4, shift_groups=2, branches=2, reduction=4, act_max=2.0, init_a=(1.0, 1.0), init_b=(0.0, 0.0))
    # a1 = 1 + [0, 1, -1, 2], b1 = [1, 0, 0, -1], a2 = 1, b2 = 2
    _fixed_coefficients(layer, [0, 1.5, -1.5, 3] + [1.5, 0, 0, -1.5] + [0] * 4 + [3] * 4)
    x = paddle.to_tensor(np.array([1, -2, 3, -4], dtype="float32").reshape(1, 4, 1, 1))
    # shift(x) = x[[3, 2, 1, 0]] = [-4, 3, -2, 1]
    # branch 1: [1 - 4, -4 + 0, 0 + 0, -12 - 1] = [-3, -4, 0, -13]; branch 2: [-7, 4, -1, -2]
    np.testing.assert_allclose(layer(x).numpy().ravel(), [-3, 4, 0, -2], atol=1e-6)


def test_dy_shift_max_one_branch_hand_computed():
    layer = DYShiftMax(4, shift_groups=2, branches=1, reduction=4, act_max=2.0, init_a=(1.0, 0.0), init_b=(0.0, 0.0))
    _fixed_coefficients(layer, [0, 1.5, -1.5, 3] + [1.5, 0, 0, -1.5])
    x = paddle.to_tensor(np.array([1, -2, 3, -4], dtype="float32").reshape(1, 4, 1, 1))
    np.testing.assert_allclose(layer(x).numpy().ravel(), [-3, -4, 0, -13], atol=1e-6)


@pytest.mark.parametrize("branches,init_a,init_b", [(2, (1.0, 0.5), (0.0, 0.5)), (1, (1.0, 0.0), (0.0, 0.0))])
def test_dy_shift_max_equals_paddleclas_with_same_weights(branches, init_a, init_b):
    paddle.seed(5)
    theirs = pc_micronet.DYShiftMax(16, 16, reduction=4, act_max=2.0, act_relu=branches == 2,
                                    init_a=list(init_a), init_b=list(init_b), g=(0, 4))
    ours = DYShiftMax(16, shift_groups=4, branches=branches, reduction=4, init_a=init_a, init_b=init_b)
    ours.reduce.set_state_dict(theirs.fc[0].state_dict())
    ours.expand.set_state_dict(theirs.fc[2].state_dict())
    x = paddle.randn([3, 16, 5, 6])
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), atol=1e-6)


def test_dy_shift_max_rejects_bad_arguments():
    with pytest.raises(ValueError, match="1 or 2 branches, got 3"):
        DYShiftMax(8, 2, branches=3, reduction=4)
    with pytest.raises(ValueError, match="6 channels cannot be split into 4 groups"):
        DYShiftMax(6, 4, branches=1, reduction=2)


def test_factorized_convolutions_shapes():
    x = paddle.randn([2, 6, 15, 16])
    assert DepthSpatialSepConv(6, (2, 3), 5, 2)(x).shape == [2, 36, 8, 8]
    assert DepthSpatialSepConv(6, (1, 1), 3, 1)(x).shape == [2, 6, 15, 16]
    assert GroupConv(6, 12, groups=3)(x).shape == [2, 12, 15, 16]
    stem = SpatialSepConvSF(3, (4, 3), 3, 2)
    assert stem(paddle.randn([1, 3, 33, 32])).shape == [1, 12, 17, 16]
    # the depthwise 1 x k conv really is depthwise over the k x 1 output
    assert stem.conv_1xk.conv.weight.shape == [12, 1, 1, 3] and stem.conv_kx1.conv.weight.shape == [4, 3, 3, 1]


@pytest.mark.parametrize("variant,index,kind,residual", [
    ("M0", 0, "A", False), ("M2", 2, "A", False), ("M0", 3, "B", False), ("M3", 4, "B", True), ("M0", 6, "C", False)])
def test_micro_blocks_of_each_kind(variant, index, kind, residual):
    spec = MICRONET_SPECS[variant]
    in_channels = spec.stem_channels if index == 0 else spec.blocks[index - 1].out_channels
    block = DYMicroBlock(in_channels, spec.blocks[index], spec.shift_max)
    assert block.kind == kind and block.has_residual == residual
    x = paddle.randn([2, in_channels, 14, 13])
    stride = spec.blocks[index].stride
    assert block(x).shape == [2, spec.blocks[index].out_channels, -(-14 // stride), -(-13 // stride)]
