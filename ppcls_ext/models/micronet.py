"""MicroNet M0-M3 (Li et al., "MicroNet: Improving Image Recognition with Extremely Low FLOPs", ICCV 2021).

Micro-Factorized convolution (grouped 1x1 + channel shuffle; k x 1 then 1 x k depthwise) and Dynamic
Shift-Max activations. Each variant is a table of `MicroBlockSpec` rows plus one builder; parameter
layout and numerics match PaddleClas's `MicroNet_M*` classes, whose checkpoints load through
`paddleclas_key_map`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .base import ImageClassifier, initialize_once
from .declaration import IMAGENET_MEAN, IMAGENET_STD, PADDLECLAS_PRETRAINED, declare_family, row
from .deploy import fold_linear_bn
from .layers import ConvBNAct, channel_axis, global_avg_pool, make_divisible, maximum


# --- layers -----------------------------------------------------------------------------------------


def shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """Source channel of every output channel of a ShuffleNet channel shuffle with `groups` groups:
    viewing channels as (groups, channels // groups) and transposing."""
    if groups <= 0 or channels % groups:
        raise ValueError(f"channel shuffle: {channels} channels cannot be split into {groups} groups")
    out = np.arange(channels)
    return (out % groups) * (channels // groups) + out // groups


class ChannelShuffle(nn.Layer):
    """One or more channel shuffles applied in order, executed as a single fixed channel gather
    (the same values as reshape -> transpose -> reshape, without the transpose copy)."""

    def __init__(self, channels: int, *groups: int):
        super().__init__()
        perm = np.arange(channels)
        for g in groups:
            perm = perm[shuffle_permutation(channels, g)]
        self.groups = groups
        self.channel_axis = channel_axis()  # of the layout being built
        self.is_identity = bool((perm == np.arange(channels)).all())
        self.register_buffer("perm", paddle.to_tensor(perm.astype("int64")), persistable=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.is_identity:
            return x
        return paddle.index_select(x, self.perm, axis=self.channel_axis)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class MaxGroupPooling(nn.Layer):
    """Channel-wise max over consecutive groups: output channel c = max(x[c*k], ..., x[c*k + k - 1])."""

    def __init__(self, channels_per_group: int = 2):
        super().__init__()
        if channels_per_group < 1:
            raise ValueError(f"channels_per_group must be >= 1, got {channels_per_group}")
        self.channels_per_group = channels_per_group
        self.channel_axis = channel_axis()  # of the layout being built

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        k, channels = self.channels_per_group, x.shape[self.channel_axis]
        if channels % k:
            raise ValueError(f"MaxGroupPooling: {channels} channels are not a multiple of {k}")
        pick = (lambda j: x[:, j::k]) if self.channel_axis == 1 else (lambda j: x[..., j::k])
        return functools.reduce(maximum, [pick(j) for j in range(k)])


class GroupConv(ConvBNAct):
    """Grouped 1x1 convolution + batch norm (the pointwise half of a Micro-Factorized convolution)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__(in_channels, out_channels, 1, groups=groups, act_layer=None)


class _FactorizedConv(nn.Layer):
    """k x 1 convolution + BN, then a depthwise 1 x k convolution + BN; the stride is split the same way."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_size: int, stride: int, first_groups: int):
        super().__init__()
        self.conv_kx1 = ConvBNAct(in_channels, mid_channels, (kernel_size, 1), (stride, 1), groups=first_groups, act_layer=None)
        self.conv_1xk = ConvBNAct(mid_channels, out_channels, (1, kernel_size), (1, stride), groups=mid_channels, act_layer=None)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv_1xk(self.conv_kx1(x))


class DepthSpatialSepConv(_FactorizedConv):
    """Micro-Factorized depthwise convolution, expanding channels by `expansion[0] * expansion[1]`."""

    def __init__(self, in_channels: int, expansion: Tuple[int, int], kernel_size: int, stride: int):
        mid = in_channels * expansion[0]
        super().__init__(in_channels, mid, mid * expansion[1], kernel_size, stride, first_groups=in_channels)


class SpatialSepConvSF(_FactorizedConv):
    """The stem: a full k x 1 convolution to `groups[0]` channels, a depthwise 1 x k multiplying them by
    `groups[1]`, and a channel shuffle over `groups[0]` groups."""

    def __init__(self, in_channels: int, groups: Tuple[int, int], kernel_size: int, stride: int):
        g1, g2 = groups
        super().__init__(in_channels, g1, g1 * g2, kernel_size, stride, first_groups=1)
        self.shuffle = ChannelShuffle(g1 * g2, g1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.shuffle(super().forward(x))


#: the slope of Paddle's F.hardsigmoid (its default, spelled out because the deploy form folds it)
HARDSIGMOID_SLOPE = 0.1666667


def shift_permutation(channels: int, groups: int) -> np.ndarray:
    """Source channel of the circular shift used by Dynamic Shift-Max: channels form a (groups, channels //
    groups) grid and output (i, j) reads input ((i + 1) mod groups, (j + 1) mod (channels // groups))."""
    if groups <= 0 or channels % groups:
        raise ValueError(f"Dynamic Shift-Max: {channels} channels cannot be split into {groups} groups")
    per_group = channels // groups
    group, within = np.divmod(np.arange(channels), per_group)
    return ((group + 1) % groups) * per_group + (within + 1) % per_group


class DYShiftMax(nn.Layer):
    """Dynamic Shift-Max. An SE-like branch predicts per-sample, per-channel coefficients (a_k, b_k) in
    init +- act_max; the output is max_k (a_k * x + b_k * shift(x)) over `branches` (1 or 2) terms, where
    shift(x) is a fixed circular shift of channels across groups."""

    def __init__(
        self,
        channels: int,
        shift_groups: int,
        branches: int,
        reduction: int,
        act_max: float = 2.0,
        init_a: Sequence[float] = (1.0, 1.0),
        init_b: Sequence[float] = (0.0, 0.0),
    ):
        super().__init__()
        if branches not in (1, 2):
            raise ValueError(f"Dynamic Shift-Max has 1 or 2 branches, got {branches}")
        self.branches = branches
        self.act_max = float(act_max)
        self.init_a = tuple(float(v) for v in init_a[:branches])
        self.init_b = tuple(float(v) for v in init_b[:branches])
        squeezed = make_divisible(channels // reduction, 4)
        self.pool = global_avg_pool()
        self.reduce = nn.Linear(channels, squeezed)
        self.expand = nn.Linear(squeezed, channels * 2 * branches)
        shift = shift_permutation(channels, shift_groups).astype("int64")
        self.register_buffer("shift", paddle.to_tensor(shift), persistable=False)
        self.channel_axis = channel_axis()  # of the layout being built
        self.deploy_form = False  # set by to_deploy_form

    def coefficients(self, x: paddle.Tensor) -> List[paddle.Tensor]:
        """[a_1, b_1(, a_2, b_2)], each (N, C, 1, 1) (or (N, 1, 1, C) channels-last), offsets by the init
        values included."""
        y = self.expand(F.relu(self.reduce(self.pool(x).flatten(1))))
        spatial = [2, 3] if self.channel_axis == 1 else [1, 2]
        inits = [v for pair in zip(self.init_a, self.init_b) for v in pair]
        if self.deploy_form:  # expand already holds the scale and the offsets: one clip per coefficient
            parts = paddle.split(y.unsqueeze(spatial), 2 * self.branches, axis=self.channel_axis)
            return [paddle.clip(part, init - self.act_max, init + self.act_max) for part, init in zip(parts, inits)]
        y = (F.hardsigmoid(y, slope=HARDSIGMOID_SLOPE) - 0.5) * (2.0 * self.act_max)
        parts = paddle.split(y.unsqueeze(spatial), 2 * self.branches, axis=self.channel_axis)
        return [part + init for part, init in zip(parts, inits)]

    @paddle.no_grad()
    def to_deploy_form(self) -> None:
        """Fold the coefficient arithmetic into `expand` (evaluation only): (hardsigmoid(z) - 0.5) * 2m + c
        = clip(z * 2m * slope + c, c - m, c + m) for act_max m and init value c, while z * slope + 0.5 stays
        in [0, 1]; outside, both sides are clipped to the same bound."""
        if self.deploy_form:
            return
        gain = 2.0 * self.act_max * HARDSIGMOID_SLOPE
        inits = [v for pair in zip(self.init_a, self.init_b) for v in pair]
        channels = self.expand.weight.shape[1] // len(inits)
        offsets = paddle.to_tensor(np.repeat(np.array(inits, dtype="float32"), channels))
        self.expand.weight.set_value(self.expand.weight * gain)
        self.expand.bias.set_value(self.expand.bias * gain + offsets)
        self.deploy_form = True

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        coeffs = self.coefficients(x)
        shifted = paddle.index_select(x, self.shift, axis=self.channel_axis)
        out = x * coeffs[0] + shifted * coeffs[1]
        if self.branches == 2:
            out = maximum(out, x * coeffs[2] + shifted * coeffs[3])
        return out


# --- architecture as data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MicroBlockSpec:
    """One Micro-Block.

    expansion: (e1, e2); the block's hidden width is in_channels * e1 * e2.
    groups_in: groups of the 1x1 before the depthwise conv and of the Shift-Max after it; a first entry
        of 0 means no 1x1 before the depthwise conv (Micro-Block-A).
    groups_out: groups of the projecting 1x1 and of its Shift-Max; (0, 0) means no projection: the
        block ends after its first 1x1 (Micro-Block-C, the last block).
    dy: branches of the Dynamic Shift-Max after (first 1x1, depthwise, last 1x1); 0 means ReLU6 after
        the first two and nothing after the last.
    reduction: multiplies the Shift-Max squeeze reduction of the network.
    """

    stride: int
    out_channels: int
    kernel_size: int
    expansion: Tuple[int, int]
    groups_in: Tuple[int, int]
    groups_out: Tuple[int, int]
    dy: Tuple[int, int, int]
    reduction: int = 1

    @property
    def kind(self) -> str:
        if self.groups_in[0] == 0:
            return "A"
        return "C" if self.groups_out[1] == 0 else "B"


@dataclass(frozen=True)
class ShiftMaxConfig:
    """Network-wide Dynamic Shift-Max settings (act_max, squeeze reduction, initial a and b)."""

    act_max: float = 2.0
    reduction: int = 8
    init_a: Tuple[float, float] = (1.0, 1.0)
    init_b: Tuple[float, float] = (0.0, 0.0)
    init_ab_out: Tuple[float, float] = (1.0, 0.0)


@dataclass(frozen=True)
class MicroNetSpec:
    stem_channels: int
    stem_groups: Tuple[int, int]
    head_channels: int
    dropout: float
    blocks: Tuple[MicroBlockSpec, ...]
    shift_max: ShiftMaxConfig = ShiftMaxConfig()


B = MicroBlockSpec
#: every MicroNet: its architecture spec (stem, head, dropout, Micro-Blocks), paper top-1 (%) and what
#: differs from the family's defaults below (see `declaration`)
MICRONET = declare_family(
    "MicroNet", "MicroNet_{}",
    defaults=dict(
        train_size=224, eval_size=224, crop_mode="resize_short", crop_pct=0.875, interpolation="bilinear",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, drop_path_rate=0.0, weights_url=PADDLECLAS_PRETRAINED,
        paddleclas_module="micronet", progressive_preset=None, batch_size=128, weight_decay=3.0e-5,
    ),
    derive=lambda spec: {"dropout": spec.dropout},
    rows=[
        row("M0", MicroNetSpec(4, (2, 2), 640, 0.05, (
            B(2, 8, 3, (2, 2), (0, 4), (2, 2), (2, 0, 1)),
            B(2, 12, 3, (2, 2), (0, 8), (4, 4), (2, 2, 1)),
            B(2, 16, 5, (2, 2), (0, 12), (4, 4), (2, 2, 1)),
            B(1, 32, 5, (1, 4), (4, 4), (4, 4), (2, 2, 1)),
            B(2, 64, 5, (1, 4), (8, 8), (8, 8), (2, 2, 1)),
            B(1, 96, 3, (1, 4), (8, 8), (8, 8), (2, 2, 1), reduction=2),
            B(1, 384, 3, (1, 4), (12, 12), (0, 0), (2, 2, 1), reduction=2),
        )), paper_top1=46.6),
        row("M1", MicroNetSpec(6, (3, 2), 960, 0.05, (
            B(2, 8, 3, (2, 2), (0, 6), (2, 2), (2, 0, 1)),
            B(2, 16, 3, (2, 2), (0, 8), (4, 4), (2, 2, 1)),
            B(2, 16, 5, (2, 2), (0, 16), (4, 4), (2, 2, 1)),
            B(1, 32, 5, (1, 6), (4, 4), (4, 4), (2, 2, 1)),
            B(2, 64, 5, (1, 6), (8, 8), (8, 8), (2, 2, 1)),
            B(1, 96, 3, (1, 6), (8, 8), (8, 8), (2, 2, 1), reduction=2),
            B(1, 576, 3, (1, 6), (12, 12), (0, 0), (2, 2, 1), reduction=2),
        )), paper_top1=51.4),
        row("M2", MicroNetSpec(8, (4, 2), 1024, 0.1, (
            B(2, 12, 3, (2, 2), (0, 8), (4, 4), (2, 0, 1)),
            B(2, 16, 3, (2, 2), (0, 12), (4, 4), (2, 2, 1)),
            B(1, 24, 3, (2, 2), (0, 16), (4, 4), (2, 2, 1)),
            B(2, 32, 5, (1, 6), (6, 6), (4, 4), (2, 2, 1)),
            B(1, 32, 5, (1, 6), (8, 8), (4, 4), (2, 2, 1), reduction=2),
            B(1, 64, 5, (1, 6), (8, 8), (8, 8), (2, 2, 1), reduction=2),
            B(2, 96, 5, (1, 6), (8, 8), (8, 8), (2, 2, 1), reduction=2),
            B(1, 128, 3, (1, 6), (12, 12), (8, 8), (2, 2, 1), reduction=2),
            B(1, 768, 3, (1, 6), (16, 16), (0, 0), (2, 2, 1), reduction=2),
        )), paper_top1=59.4),
        row("M3", MicroNetSpec(12, (4, 3), 1024, 0.1, (
            B(2, 16, 3, (2, 2), (0, 12), (4, 4), (0, 2, 0)),
            B(2, 24, 3, (2, 2), (0, 16), (4, 4), (0, 2, 0)),
            B(1, 24, 3, (2, 2), (0, 24), (4, 4), (0, 2, 0)),
            B(2, 32, 5, (1, 6), (6, 6), (4, 4), (0, 2, 0)),
            B(1, 32, 5, (1, 6), (8, 8), (4, 4), (0, 2, 0), reduction=2),
            B(1, 64, 5, (1, 6), (8, 8), (8, 8), (0, 2, 0), reduction=2),
            B(1, 80, 5, (1, 6), (8, 8), (8, 8), (0, 2, 0), reduction=2),
            B(1, 80, 5, (1, 6), (10, 10), (8, 8), (0, 2, 0), reduction=2),
            B(2, 120, 5, (1, 6), (10, 10), (10, 10), (0, 2, 0), reduction=2),
            B(1, 120, 5, (1, 6), (12, 12), (10, 10), (0, 2, 0), reduction=2),
            B(1, 144, 3, (1, 6), (12, 12), (12, 12), (0, 2, 0), reduction=2),
            B(1, 864, 3, (1, 6), (12, 12), (0, 0), (0, 2, 0), reduction=2),
        ), ShiftMaxConfig(init_a=(1.0, 0.5), init_b=(0.0, 0.5))), paper_top1=62.5, weight_decay=4.0e-5),
    ],
)
MICRONET_SPECS: Dict[str, MicroNetSpec] = MICRONET.specs()
del B


# --- blocks and network -----------------------------------------------------------------------------


class DYMicroBlock(nn.Sequential):
    """Micro-Block A (depthwise first), B (1x1, depthwise, 1x1) or C (a single 1x1, at the end), with a
    residual connection when the stride is 1 and the width is kept."""

    def __init__(self, in_channels: int, spec: MicroBlockSpec, shift_max: ShiftMaxConfig):
        out = spec.out_channels
        hidden = in_channels * spec.expansion[0] * spec.expansion[1]
        g_in, g_out = spec.groups_in, spec.groups_out
        y_first, y_depthwise, y_last = spec.dy
        reduction = shift_max.reduction * spec.reduction

        def activation(channels: int, branches: int, shift_groups: int) -> nn.Layer:
            if branches == 0:
                return nn.ReLU6()
            return DYShiftMax(channels, shift_groups, branches, reduction, shift_max.act_max, shift_max.init_a, shift_max.init_b)

        def output_shift_max(channels: int, shift_groups: int, reduction_: int) -> nn.Layer:
            if y_last == 0:
                return nn.Identity()
            init_a, init_b = (shift_max.init_ab_out[0], 0.0), (shift_max.init_ab_out[1], 0.0)
            return DYShiftMax(channels, shift_groups, 1, reduction_, shift_max.act_max, init_a, init_b)

        layers: List[Tuple[str, nn.Layer]] = []
        if spec.kind == "A":
            layers += [
                ("depthwise", DepthSpatialSepConv(in_channels, spec.expansion, spec.kernel_size, spec.stride)),
                ("depthwise_act", activation(hidden, y_depthwise, g_in[1])),
                ("depthwise_shuffle", ChannelShuffle(hidden, g_in[1], *([hidden // 2] if y_depthwise else []))),
                ("project", GroupConv(hidden, out, g_out[0])),
                ("project_act", output_shift_max(out, g_out[1], reduction // 2)),
                ("project_shuffle", ChannelShuffle(out, g_out[1], *([out // 2] if out % 2 == 0 and y_last else []))),
            ]
        elif spec.kind == "C":
            layers += [
                ("expand", GroupConv(in_channels, hidden, g_in[0])),
                ("expand_act", output_shift_max(hidden, g_in[1], reduction)),
            ]
        else:
            mixing = hidden // 4 if (y_first and y_depthwise) else hidden // 2
            layers += [
                ("expand", GroupConv(in_channels, hidden, g_in[0])),
                ("expand_act", activation(hidden, y_first, g_in[1])),
                ("expand_shuffle", ChannelShuffle(hidden, g_in[1])),
                ("depthwise", DepthSpatialSepConv(hidden, (1, 1), spec.kernel_size, spec.stride)),
                # after the depthwise conv the shift runs over hidden // g groups of g channels
                ("depthwise_act", activation(hidden, y_depthwise, hidden // g_in[1] if g_in[1] != 1 else 1)),
                ("depthwise_shuffle", ChannelShuffle(hidden, *([mixing] if (y_first or y_depthwise) else []))),
                ("project", GroupConv(hidden, out, g_out[0])),
                ("project_act", output_shift_max(out, g_out[1], reduction // 2 if out < hidden else reduction)),
                ("project_shuffle", ChannelShuffle(out, g_out[1], *([out // 2] if y_last else []))),
            ]
        super().__init__(*[(name, layer) for name, layer in layers if not _is_identity(layer)])
        self.kind = spec.kind
        self.has_residual = spec.stride == 1 and in_channels == out

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = super().forward(x)
        return out + x if self.has_residual else out


def _is_identity(layer: nn.Layer) -> bool:
    return isinstance(layer, nn.Identity) or (isinstance(layer, ChannelShuffle) and layer.is_identity)


class SwishLinear(nn.Layer):
    """Linear -> BatchNorm1D -> Hardswish, MicroNet's classifier layer."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1D(out_features)
        self.act = nn.Hardswish()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.act(self.bn(self.fc(x)))

    def to_deploy_form(self) -> None:
        """Merge the batch norm into the linear layer (evaluation only)."""
        if isinstance(self.bn, nn.BatchNorm1D):
            fold_linear_bn(self.fc, self.bn)
            self.bn = nn.Identity()


class MicroNetStem(nn.Layer):
    """SpatialSepConvSF to stem_groups[0] * stem_groups[1] channels, then ReLU6, or MaxGroupPooling when
    that is twice `out_channels`."""

    def __init__(self, out_channels: int, groups: Tuple[int, int]):
        super().__init__()
        produced = groups[0] * groups[1]
        if produced not in (out_channels, 2 * out_channels):
            raise ValueError(f"stem groups {groups} give {produced} channels; expected {out_channels} or {2 * out_channels}")
        self.conv = SpatialSepConvSF(3, groups, 3, 2)
        self.act = MaxGroupPooling(2) if produced == 2 * out_channels else nn.ReLU6()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.act(self.conv(x))


class MicroNet(ImageClassifier):
    """MicroNet built from a `MicroNetSpec`; every Micro-Block is one stage of `stages`."""

    def __init__(self, spec: MicroNetSpec, class_num: int = 1000, dropout: Optional[float] = None):
        super().__init__()
        self.spec = spec
        self.stem = MicroNetStem(spec.stem_channels, spec.stem_groups)
        blocks, channels = [], spec.stem_channels
        for block in spec.blocks:
            blocks.append(DYMicroBlock(channels, block, spec.shift_max))
            channels = block.out_channels
        self.stages = nn.LayerList(blocks)
        self.num_features = channels
        self._set_stage_layout(2, [b.stride for b in spec.blocks], [b.out_channels for b in spec.blocks])
        self.pool = global_avg_pool()
        self.embed = SwishLinear(channels, spec.head_channels)
        self.dropout = nn.Dropout(spec.dropout if dropout is None else dropout)
        # class_num=0: no classifier, the model returns the pooled, embedded features (head_channels wide)
        self.classifier = SwishLinear(spec.head_channels, class_num) if class_num else nn.Identity()
        self.apply(_init_weights)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.stem(x)
        for block in self.stages:
            x = block(x)
        return x

    def forward_head(self, x: paddle.Tensor) -> paddle.Tensor:
        x = F.hardswish(self.pool(F.relu6(x))).flatten(1)
        return self.classifier(self.dropout(self.embed(x)))

    def paddleclas_key_map(self) -> Dict[str, str]:
        return self._leaf_key_map(_paddleclas_module_pairs(self))


# Positions of the learned layers inside PaddleClas's per-kind nn.Sequential of a DYMicroBlock, and the
# leaf layers inside each of its sub-layers.
_PADDLECLAS_BLOCK_INDEX = {
    "A": {"depthwise": 0, "depthwise_act": 1, "project": 4, "project_act": 5},
    "B": {"expand": 0, "expand_act": 1, "depthwise": 3, "depthwise_act": 5, "project": 7, "project_act": 8},
    "C": {"expand": 0, "expand_act": 1},
}
_PADDLECLAS_LEAVES = {
    GroupConv: {"conv.0": "conv", "conv.1": "bn"},
    _FactorizedConv: {"conv.0": "conv_kx1.conv", "conv.1": "conv_kx1.bn", "conv.2": "conv_1xk.conv", "conv.3": "conv_1xk.bn"},
    DYShiftMax: {"fc.0": "reduce", "fc.2": "expand"},
}


def _leaf_pairs(theirs: str, ours: str, layer: nn.Layer) -> Iterator[Tuple[str, str]]:
    for layer_type, leaves in _PADDLECLAS_LEAVES.items():
        if isinstance(layer, layer_type):
            for their_leaf, our_leaf in leaves.items():
                yield f"{theirs}.{their_leaf}", f"{ours}.{our_leaf}"


def _paddleclas_module_pairs(model: MicroNet) -> Iterator[Tuple[str, str]]:
    yield from _leaf_pairs("features.0.stem.0", "stem.conv", model.stem.conv)
    for index, block in enumerate(model.stages):
        for name, position in _PADDLECLAS_BLOCK_INDEX[block.kind].items():
            layer = getattr(block, name, None)
            if layer is not None:
                yield from _leaf_pairs(f"features.{index + 1}.layers.{position}", f"stages.{index}.{name}", layer)
    for theirs, ours in (("classifier.0.linear", "embed"), ("classifier.2.linear", "classifier")):
        yield f"{theirs}.0", f"{ours}.fc"
        yield f"{theirs}.1", f"{ours}.bn"


def _init_weights(layer: nn.Layer) -> None:
    """He-normal convolutions (fan-out) and N(0, 0.01) linear weights, as in the official code."""
    if isinstance(layer, nn.Conv2D):
        kh, kw = layer.weight.shape[2:]
        std = math.sqrt(2.0 / (kh * kw * layer.weight.shape[0]))
        nn.initializer.Normal(std=std)(layer.weight)
    elif isinstance(layer, nn.Linear):
        nn.initializer.Normal(std=0.01)(layer.weight)


@initialize_once
def micronet(variant: str, class_num: int = 1000, dropout: Optional[float] = None) -> MicroNet:
    """Build MicroNet M0, M1, M2 or M3."""
    if variant not in MICRONET_SPECS:
        raise ValueError(f"unknown MicroNet variant {variant!r}; choose from {sorted(MICRONET_SPECS)}")
    return MicroNet(MICRONET_SPECS[variant], class_num=class_num, dropout=dropout)
