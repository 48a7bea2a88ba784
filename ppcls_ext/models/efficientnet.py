"""EfficientNet B0-B8 and L2 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019),
EfficientNet-Lite0-4 (the official TensorFlow "lite" builder), and the network and blocks that
EfficientNetV2 reuses.

One B0 stage table, scaled by the official (width, depth, resolution, dropout) tables or by compound
scaling from phi. Parameter layout and numerics match PaddleClas's `EfficientNetB*` classes (their
checkpoints load through `paddleclas_key_map`), but TF-"SAME" padding is computed from the actual input,
so every input size is padded right, not only the nominal one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Dict, Iterator, Literal, NamedTuple, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn

from .base import ImageClassifier, initialize_once
from .declaration import (IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, PADDLECLAS_PRETRAINED, declare_family, row,
                          tf_crop_pct)
from .layers import (ActLayer, ConvBNAct, DropPath, PaddingMode, SiLU, SqueezeExcite, global_avg_pool, make_divisible,
                     round_repeats)
from .numerics import Numerics
from .recompute import RecomputeOption, recompute_stages, run_recomputed


@dataclass(frozen=True)
class StageSpec:
    """A stage of identical blocks; only the first one has the stride."""

    block: Literal["mbconv", "fused"]
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int
    se_ratio: float = 0.0

    def scaled(self, width: float, depth: float, round_channels: Callable[[float], int]) -> "StageSpec":
        return replace(self, out_channels=round_channels(self.out_channels * width), repeats=round_repeats(self.repeats, depth))


class _MobileBlock(nn.Layer):
    """Runs the parts that exist of expand -> dw -> se -> project, plus a residual (with drop-path) when
    the stride is 1 and the width is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, drop_path: float):
        super().__init__()
        self.has_residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path) if self.has_residual and drop_path > 0 else None
        self.expand = self.dw = self.se = None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = x
        for part in (self.expand, self.dw, self.se, self.project):
            if part is not None:
                out = part(out)
        if not self.has_residual:
            return out
        if self.drop_path is not None:
            out = self.drop_path(out)
        return out + x


def _squeeze_excite(in_channels: int, hidden: int, se_ratio: float) -> Optional[SqueezeExcite]:
    """SE on the hidden width, squeezed to se_ratio times the block *input* width (as officially)."""
    return SqueezeExcite(hidden, max(1, int(in_channels * se_ratio))) if se_ratio > 0 else None


class MBConv(_MobileBlock):
    """Inverted residual: 1x1 expand, depthwise k x k, squeeze-excite, 1x1 linear projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int,
                 se_ratio: float, drop_path: float, conv: Callable[..., ConvBNAct]):
        super().__init__(in_channels, out_channels, stride, drop_path)
        hidden = in_channels * expand_ratio
        self.expand = conv(in_channels, hidden, 1) if expand_ratio != 1 else None
        self.dw = conv(hidden, hidden, kernel_size, stride, groups=hidden)
        self.se = _squeeze_excite(in_channels, hidden, se_ratio)
        self.project = conv(hidden, out_channels, 1, act_layer=None)


class FusedMBConv(_MobileBlock):
    """EfficientNetV2's Fused-MBConv: one k x k convolution replaces 1x1 expand + depthwise; without
    expansion that convolution is the whole block (with its activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int,
                 se_ratio: float, drop_path: float, conv: Callable[..., ConvBNAct]):
        super().__init__(in_channels, out_channels, stride, drop_path)
        if expand_ratio == 1:
            self.se = _squeeze_excite(in_channels, in_channels, se_ratio)
            self.project = conv(in_channels, out_channels, kernel_size, stride)
        else:
            hidden = in_channels * expand_ratio
            self.expand = conv(in_channels, hidden, kernel_size, stride)
            self.se = _squeeze_excite(in_channels, hidden, se_ratio)
            self.project = conv(hidden, out_channels, 1, act_layer=None)


BLOCK_TYPES = {"mbconv": MBConv, "fused": FusedMBConv}


class EfficientNet(ImageClassifier):
    """Stem (3x3 stride 2), stages of MBConv / Fused-MBConv blocks, 1x1 head conv, pool, dropout, linear.

    `stages` are already scaled; drop-path rate grows linearly with the global block index
    (drop_path_rate * index / number_of_blocks, as in the official code). `class_num=0` drops the
    classifier: the model then returns pooled features. `recompute` (True, or a list of stage indices)
    recomputes those stages' block activations in the backward pass instead of keeping them (training
    only; see `recompute.py`).
    """

    def __init__(
        self,
        stages: Sequence[StageSpec],
        stem_channels: int,
        head_channels: int,
        class_num: int = 1000,
        dropout: float = 0.2,
        drop_path_rate: float = 0.2,
        padding: PaddingMode = "same",
        bn_momentum: float = 0.99,
        bn_epsilon: float = 1e-3,
        act_layer: ActLayer = SiLU,
        recompute: RecomputeOption = False,
    ):
        super().__init__()
        # the numerics the weights are trained with (`numerics()`); checkpoints record them (weights.numerics_record)
        self.padding, self.bn_epsilon = padding, float(bn_epsilon)
        conv = partial(ConvBNAct, padding=padding, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, act_layer=act_layer)
        self.stage_specs = tuple(stages)
        self.stem = conv(3, stem_channels, 3, 2)
        total_blocks = sum(spec.repeats for spec in stages)
        channels, index, stage_layers = stem_channels, 0, []
        for spec in stages:
            blocks = []
            for repeat in range(spec.repeats):
                blocks.append(BLOCK_TYPES[spec.block](
                    channels, spec.out_channels, spec.kernel_size, spec.stride if repeat == 0 else 1,
                    spec.expand_ratio, spec.se_ratio, drop_path_rate * index / total_blocks, conv))
                channels, index = spec.out_channels, index + 1
            stage_layers.append(nn.Sequential(*blocks))
        self.stages = nn.LayerList(stage_layers)
        self.recompute_stages = recompute_stages(recompute, len(stage_layers))
        self._set_stage_layout(2, [s.stride for s in stages], [s.out_channels for s in stages])
        self.head = conv(channels, head_channels, 1)
        self.pool = global_avg_pool()
        self.dropout = nn.Dropout(dropout)
        self.num_features = head_channels
        self.classifier = nn.Linear(head_channels, class_num) if class_num else nn.Identity()
        self.apply(_init_weights)

    def numerics(self) -> Numerics:
        return Numerics(self.padding, self.bn_epsilon)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.stem(x)
        for index, stage in enumerate(self.stages):
            x = run_recomputed(stage, x) if self.training and index in self.recompute_stages else stage(x)
        return self.head(x)

    def forward_head(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.classifier(self.dropout(self.pool(x).flatten(1)))

    def blocks(self) -> Iterator[Tuple[int, int, _MobileBlock]]:
        """(stage index, index within the stage, block) for every block in order."""
        for s, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                yield s, j, block

    def paddleclas_key_map(self) -> Dict[str, str]:
        pairs = [("_ef._conv_stem._conv._conv._conv", "stem.conv"), ("_ef._conv_stem._conv._bn", "stem.bn"),
                 ("_conv._conv._conv", "head.conv"), ("_conv._bn", "head.bn"), ("_fc", "classifier")]
        for index, (s, j, block) in enumerate(self.blocks()):
            # PaddleClas registers the first block of a stage as "_blocks.N." and the others as "block.N."
            theirs = f"_ef.{'_blocks' if j == 0 else 'block'}.{index}.."
            ours = f"stages.{s}.{j}."
            for part, (their_conv, their_bn) in _V1_PARTS.items():
                if getattr(block, part) is not None:
                    pairs += [(theirs + their_conv, ours + part + ".conv"), (theirs + their_bn, ours + part + ".bn")]
            if block.se is not None:
                pairs += [(theirs + "_se._conv1._conv", ours + "se.reduce"), (theirs + "_se._conv2._conv", ours + "se.expand")]
        return self._leaf_key_map(pairs)


_V1_PARTS = {
    "expand": ("_ecn._conv._conv._conv", "_ecn._conv._bn"),
    "dw": ("_dcn._conv._conv._conv", "_dcn._conv._bn"),
    "project": ("_pcn._conv._conv._conv", "_pcn._conv._bn"),
}


def _init_weights(layer: nn.Layer) -> None:
    """The official TF initialisers: conv N(0, sqrt(2 / fan_out)) (fan_out counts one output per group
    for depthwise kernels), dense U(+-1 / sqrt(out_features)), zero bias."""
    if isinstance(layer, nn.Conv2D):
        out_channels, in_per_group, kh, kw = layer.weight.shape
        fan_out = kh * kw * (out_channels // layer._groups if in_per_group == 1 and layer._groups > 1 else out_channels)
        nn.initializer.Normal(std=math.sqrt(2.0 / fan_out))(layer.weight)
    elif isinstance(layer, nn.Linear):
        bound = 1.0 / math.sqrt(layer.weight.shape[1])
        nn.initializer.Uniform(-bound, bound)(layer.weight)
        nn.initializer.Constant(0.0)(layer.bias)


# --- EfficientNet (V1) ------------------------------------------------------------------------------

EFFICIENTNET_B0_STAGES: Tuple[StageSpec, ...] = (
    StageSpec("mbconv", 1, 3, 1, 1, 16, 0.25),
    StageSpec("mbconv", 2, 3, 2, 6, 24, 0.25),
    StageSpec("mbconv", 2, 5, 2, 6, 40, 0.25),
    StageSpec("mbconv", 3, 3, 2, 6, 80, 0.25),
    StageSpec("mbconv", 3, 5, 1, 6, 112, 0.25),
    StageSpec("mbconv", 4, 5, 2, 6, 192, 0.25),
    StageSpec("mbconv", 1, 3, 1, 6, 320, 0.25),
)


class Scaling(NamedTuple):
    width: float
    depth: float
    resolution: int
    dropout: float


def scaling_facts(scaling: Scaling) -> Dict[str, object]:
    """What a Scaling row fixes: train and evaluate at its resolution (the official eval crop, a centre
    crop of size / (size + 32) of the short side) and its dropout."""
    size = scaling.resolution
    return {"train_size": size, "eval_size": size, "crop_pct": tf_crop_pct(size), "dropout": scaling.dropout}


#: every named EfficientNet: the official (width, depth, resolution, dropout), the paper's top-1 (%) - B8
#: AdvProp's and L2 Noisy Student's (trained with extra unlabeled JFT images) - and the shipped recipe's
#: per-device batch; see `declaration` for the rest
EFFICIENTNET = declare_family(
    "EfficientNet", "EfficientNet{}",
    defaults=dict(
        crop_mode="resize_short", interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD, drop_path_rate=0.2,
        weights_url=PADDLECLAS_PRETRAINED, paddleclas_module="efficientnet", progressive_preset=None, weight_decay=1.0e-5,
    ),
    derive=scaling_facts,
    rows=[
        row("B0", Scaling(1.0, 1.0, 224, 0.2), paper_top1=77.1, batch_size=128),
        row("B1", Scaling(1.0, 1.1, 240, 0.2), paper_top1=79.1, batch_size=96),
        row("B2", Scaling(1.1, 1.2, 260, 0.3), paper_top1=80.1, batch_size=96),
        row("B3", Scaling(1.2, 1.4, 300, 0.3), paper_top1=81.6, batch_size=64),
        row("B4", Scaling(1.4, 1.8, 380, 0.4), paper_top1=82.9, batch_size=32),
        row("B5", Scaling(1.6, 2.2, 456, 0.4), paper_top1=83.6, batch_size=16),
        row("B6", Scaling(1.8, 2.6, 528, 0.5), paper_top1=84.0, batch_size=12),
        row("B7", Scaling(2.0, 3.1, 600, 0.5), paper_top1=84.3, batch_size=8),
        row("B8", Scaling(2.2, 3.6, 672, 0.5), paper_top1=85.5, batch_size=6, weights_url=None, paddleclas_module=None),
        row("L2", Scaling(4.3, 5.3, 800, 0.5), paper_top1=88.4, batch_size=2, weights_url=None, paddleclas_module=None),
    ],
)
EFFICIENTNET_SCALING: Dict[str, Scaling] = EFFICIENTNET.specs()


def compound_scaling(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15,
                     base_resolution: int = 224, dropout: float = 0.2) -> Scaling:
    """Compound scaling from the paper: depth alpha**phi, width beta**phi, resolution gamma**phi times the
    base (rounded to a multiple of 8). The named B1-B7 were tuned by hand and differ slightly from this."""
    resolution = int(round(base_resolution * gamma ** phi / 8.0)) * 8
    return Scaling(width=beta ** phi, depth=alpha ** phi, resolution=resolution, dropout=dropout)


@initialize_once
def efficientnet(
    width: float = 1.0,
    depth: float = 1.0,
    *,
    phi: Optional[float] = None,
    class_num: int = 1000,
    dropout: float = 0.2,
    drop_path_rate: float = 0.2,
    padding: PaddingMode = "same",
    bn_epsilon: float = 1e-3,
    recompute: RecomputeOption = False,
) -> EfficientNet:
    """An EfficientNet scaled from B0 by explicit width/depth multipliers or, given `phi`, by compound
    scaling (which then overrides width and depth; see `compound_scaling` for its resolution)."""
    if phi is not None:
        scaling = compound_scaling(phi)
        width, depth = scaling.width, scaling.depth
    if width <= 0 or depth <= 0:
        raise ValueError(f"width and depth multipliers must be positive, got width={width}, depth={depth}")
    round_channels = partial(make_divisible, divisor=8, guard=True)
    return EfficientNet(
        [stage.scaled(width, depth, round_channels) for stage in EFFICIENTNET_B0_STAGES],
        stem_channels=round_channels(32 * width),
        head_channels=round_channels(1280 * width),
        class_num=class_num,
        dropout=dropout,
        drop_path_rate=drop_path_rate,
        padding=padding,
        bn_epsilon=bn_epsilon,
        recompute=recompute,
    )


def efficientnet_variant(variant: str, class_num: int = 1000, dropout: Optional[float] = None, **kwargs) -> EfficientNet:
    """Build a named EfficientNet: B0 ... B8 or L2."""
    if variant not in EFFICIENTNET_SCALING:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; choose from {list(EFFICIENTNET_SCALING)}")
    scaling = EFFICIENTNET_SCALING[variant]
    return efficientnet(scaling.width, scaling.depth, class_num=class_num,
                        dropout=scaling.dropout if dropout is None else dropout, **kwargs)


# --- EfficientNet-Lite ----------------------------------------------------------------------------

#: EfficientNet-Lite0-4: the official (width, depth, resolution, dropout) (efficientnet_lite_builder.py) and
#: top-1 (%); evaluated as officially: centre crop of size / (size + 32) of the short side, bicubic resize
EFFICIENTNET_LITE = declare_family(
    "EfficientNetLite", "EfficientNet{}",
    defaults=dict(
        crop_mode="crop_at_ratio", interpolation="bicubic", mean=LITE_MEAN, std=LITE_STD, drop_path_rate=0.2,
        weights_url=None, paddleclas_module=None, progressive_preset=None, batch_size=128, weight_decay=1.0e-5,
    ),
    derive=scaling_facts,
    rows=[
        row("Lite0", Scaling(1.0, 1.0, 224, 0.2), paper_top1=75.1),
        row("Lite1", Scaling(1.0, 1.1, 240, 0.2), paper_top1=76.7),
        row("Lite2", Scaling(1.1, 1.2, 260, 0.3), paper_top1=77.6),
        row("Lite3", Scaling(1.2, 1.4, 280, 0.3), paper_top1=79.8),
        row("Lite4", Scaling(1.4, 1.8, 300, 0.3), paper_top1=81.5),
    ],
)
EFFICIENTNET_LITE_SCALING: Dict[str, Scaling] = EFFICIENTNET_LITE.specs()


@initialize_once
def efficientnet_lite(variant: str, class_num: int = 1000, dropout: Optional[float] = None, **options) -> EfficientNet:
    """Build EfficientNet-Lite0 ... Lite4: the B0 stages without squeeze-excite, ReLU6 everywhere, stem (32)
    and head (1280) not widened, and the first and last stages' repeats not deepened (the official builder's
    `fix_head_stem`); everything else scales as in EfficientNet. `options`: `EfficientNet`'s
    (drop_path_rate, padding, bn_epsilon, recompute)."""
    if variant not in EFFICIENTNET_LITE_SCALING:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {list(EFFICIENTNET_LITE_SCALING)}")
    scaling = EFFICIENTNET_LITE_SCALING[variant]
    round_channels = partial(make_divisible, divisor=8, guard=True)
    last = len(EFFICIENTNET_B0_STAGES) - 1
    stages = [replace(stage.scaled(scaling.width, 1.0 if index in (0, last) else scaling.depth, round_channels), se_ratio=0.0)
              for index, stage in enumerate(EFFICIENTNET_B0_STAGES)]
    return EfficientNet(
        stages,
        stem_channels=32,
        head_channels=1280,
        class_num=class_num,
        dropout=scaling.dropout if dropout is None else dropout,
        act_layer=nn.ReLU6,
        **options,
    )
