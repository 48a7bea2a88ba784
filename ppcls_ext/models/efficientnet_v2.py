"""EfficientNetV2 S/M/L/XL and B0-B3 (Tan & Le, "EfficientNetV2: Smaller Models and Faster Training",
ICML 2021), as in the official `effnetv2_configs`.

Fused-MBConv in the early stages, MBConv + SE later, SiLU, head 1280 (scaled for B2/B3). Channels round
to multiples of 8 without the 10% guard. Parameter layout and numerics match PaddleClas's
`EfficientNetV2_*` classes (their checkpoints load through `paddleclas_key_map`), with TF-"SAME"
padding computed from the actual input instead of PaddleClas's table for 384 px.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from .base import initialize_once
from .declaration import HALF_MEAN, HALF_STD, PADDLECLAS_PRETRAINED, declare_family, row, tf_crop_pct
from .efficientnet import EfficientNet, StageSpec
from .layers import make_divisible


def _stages(*rows: Tuple[str, int, int, int, int, float]) -> Tuple[StageSpec, ...]:
    """Rows of (block, repeats, stride, expand_ratio, out_channels, se_ratio); every kernel is 3x3."""
    return tuple(StageSpec(block, repeats, 3, stride, expand, out, se) for block, repeats, stride, expand, out, se in rows)


class V2Variant(NamedTuple):
    stem_channels: int
    stages: Tuple[StageSpec, ...]
    width: float
    depth: float
    train_size: int
    eval_size: int
    dropout: float


_BASE = _stages(
    ("fused", 1, 1, 1, 16, 0), ("fused", 2, 2, 4, 32, 0), ("fused", 2, 2, 4, 48, 0),
    ("mbconv", 3, 2, 4, 96, 0.25), ("mbconv", 5, 1, 6, 112, 0.25), ("mbconv", 8, 2, 6, 192, 0.25),
)
_S = _stages(
    ("fused", 2, 1, 1, 24, 0), ("fused", 4, 2, 4, 48, 0), ("fused", 4, 2, 4, 64, 0),
    ("mbconv", 6, 2, 4, 128, 0.25), ("mbconv", 9, 1, 6, 160, 0.25), ("mbconv", 15, 2, 6, 256, 0.25),
)
_M = _stages(
    ("fused", 3, 1, 1, 24, 0), ("fused", 5, 2, 4, 48, 0), ("fused", 5, 2, 4, 80, 0),
    ("mbconv", 7, 2, 4, 160, 0.25), ("mbconv", 14, 1, 6, 176, 0.25), ("mbconv", 18, 2, 6, 304, 0.25),
    ("mbconv", 5, 1, 6, 512, 0.25),
)
_L = _stages(
    ("fused", 4, 1, 1, 32, 0), ("fused", 7, 2, 4, 64, 0), ("fused", 7, 2, 4, 96, 0),
    ("mbconv", 10, 2, 4, 192, 0.25), ("mbconv", 19, 1, 6, 224, 0.25), ("mbconv", 25, 2, 6, 384, 0.25),
    ("mbconv", 7, 1, 6, 640, 0.25),
)
_XL = _stages(
    ("fused", 4, 1, 1, 32, 0), ("fused", 8, 2, 4, 64, 0), ("fused", 8, 2, 4, 96, 0),
    ("mbconv", 16, 2, 4, 192, 0.25), ("mbconv", 24, 1, 6, 256, 0.25), ("mbconv", 32, 2, 6, 512, 0.25),
    ("mbconv", 8, 1, 6, 640, 0.25),
)

#: progressive learning, the paper's Table 6 (start -> end over the stages; the official code ramps RandAugment
#: 5 -> 10 / 15 / 20 instead). Read by `engine.progressive` (its PRESETS).
PROGRESSIVE_PRESETS: Dict[str, Dict[str, Sequence[float]]] = {
    "S": {"image_size": (128, 300), "magnitude": (5, 15), "mixup_alpha": (0, 0), "cutmix_alpha": (0, 0), "dropout": (0.1, 0.3)},
    "M": {"image_size": (128, 380), "magnitude": (5, 20), "mixup_alpha": (0, 0.2), "cutmix_alpha": (0, 0), "dropout": (0.1, 0.4)},
    "L": {"image_size": (128, 380), "magnitude": (5, 25), "mixup_alpha": (0, 0.4), "cutmix_alpha": (0, 0), "dropout": (0.1, 0.5)},
}


def _v2_facts(spec: V2Variant) -> Dict[str, object]:
    """What a V2Variant row fixes: its train / eval sizes (centre crop of size / (size + 32), then resize, as
    the official eval) and its dropout."""
    return {"train_size": spec.train_size, "eval_size": spec.eval_size, "crop_pct": tf_crop_pct(spec.eval_size),
            "dropout": spec.dropout}


#: PaddleClas has a class and pretrained weights for S, M, L and XL
_PADDLECLAS = dict(weights_url=PADDLECLAS_PRETRAINED, paddleclas_module="efficientnet_v2")

#: every EfficientNetV2: stem, stages, (width, depth) multipliers, official train/eval sizes and dropout, then the
#: paper's top-1 (%; XL's after ImageNet-21k pre-training, the only one published), the shipped recipe's per-device
#: batch and, for the progressively trained S-XL, the preset of Table 6 (XL, absent from it, takes L's)
EFFICIENTNET_V2 = declare_family(
    "EfficientNetV2", "EfficientNetV2_{}",
    defaults=dict(
        crop_mode="crop_at_ratio", interpolation="bilinear", mean=HALF_MEAN, std=HALF_STD, drop_path_rate=0.2,
        weights_url=None, paddleclas_module=None, progressive_preset=None, weight_decay=1.0e-5,
    ),
    derive=_v2_facts,
    presets=PROGRESSIVE_PRESETS,
    rows=[
        row("S", V2Variant(24, _S, 1.0, 1.0, 300, 384, 0.2), paper_top1=83.9, batch_size=64, progressive_preset="S", **_PADDLECLAS),
        row("M", V2Variant(24, _M, 1.0, 1.0, 384, 480, 0.3), paper_top1=85.1, batch_size=32, progressive_preset="M", **_PADDLECLAS),
        row("L", V2Variant(32, _L, 1.0, 1.0, 384, 480, 0.4), paper_top1=85.7, batch_size=16, progressive_preset="L", **_PADDLECLAS),
        row("XL", V2Variant(32, _XL, 1.0, 1.0, 384, 512, 0.4), paper_top1=87.3, batch_size=8, progressive_preset="L", **_PADDLECLAS),
        row("B0", V2Variant(32, _BASE, 1.0, 1.0, 192, 224, 0.2), paper_top1=78.7, batch_size=128),
        row("B1", V2Variant(32, _BASE, 1.0, 1.1, 192, 240, 0.2), paper_top1=79.8, batch_size=128),
        row("B2", V2Variant(32, _BASE, 1.1, 1.2, 208, 260, 0.3), paper_top1=80.5, batch_size=96),
        row("B3", V2Variant(32, _BASE, 1.2, 1.4, 240, 300, 0.3), paper_top1=82.1, batch_size=64),
    ],
)
EFFICIENTNET_V2_VARIANTS: Dict[str, V2Variant] = EFFICIENTNET_V2.specs()


class EfficientNetV2(EfficientNet):
    """The EfficientNet network with V2 stages; differs from V1 only in how PaddleClas names its tensors."""

    def paddleclas_key_map(self) -> Dict[str, str]:
        pairs = [("_stem._conv_stem._conv", "stem.conv"), ("_stem._norm", "stem.bn"),
                 ("_head._conv_head", "head.conv"), ("_head._norm", "head.bn"), ("_fc", "classifier")]
        for index, (s, j, block) in enumerate(self.blocks()):
            theirs, ours = f"_blocks.{index}.", f"stages.{s}.{j}."
            # PaddleClas numbers the BNs of the parts that exist: _norm0 (expand), _norm1, _norm2
            norms = iter(["_norm0", "_norm1", "_norm2"] if block.expand is not None else ["_norm1", "_norm2"])
            for part, their_conv in (("expand", "_expand_conv._conv"), ("dw", "_depthwise_conv._conv"), ("project", "_project_conv._conv")):
                if getattr(block, part) is not None:
                    pairs += [(theirs + their_conv, ours + part + ".conv"), (theirs + next(norms), ours + part + ".bn")]
            if block.se is not None:
                pairs += [(theirs + "_se._se_reduce._conv", ours + "se.reduce"), (theirs + "_se._se_expand._conv", ours + "se.expand")]
        return self._leaf_key_map(pairs)


@initialize_once
def efficientnet_v2(variant: str, class_num: int = 1000, dropout: Optional[float] = None, **options) -> EfficientNetV2:
    """Build EfficientNetV2 S, M, L, XL or B0-B3. `options`: `EfficientNet`'s (drop_path_rate, padding,
    bn_epsilon, recompute)."""
    if variant not in EFFICIENTNET_V2_VARIANTS:
        raise ValueError(f"unknown EfficientNetV2 variant {variant!r}; choose from {list(EFFICIENTNET_V2_VARIANTS)}")
    spec = EFFICIENTNET_V2_VARIANTS[variant]
    round_channels = partial(make_divisible, divisor=8, guard=False)
    return EfficientNetV2(
        [stage.scaled(spec.width, spec.depth, round_channels) for stage in spec.stages],
        stem_channels=round_channels(spec.stem_channels * spec.width),
        head_channels=round_channels(1280 * spec.width),
        class_num=class_num,
        dropout=spec.dropout if dropout is None else dropout,
        bn_momentum=0.9,
        **options,
    )
