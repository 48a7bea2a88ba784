"""What a model family declares about each of its variants, in one row beside its architecture table.

A row holds the variant's architecture spec and the defaults that travel with it (as timm's `default_cfgs`
beside its model functions and torchvision's weights enums carrying their transforms and metadata): paper
top-1, official weights, train / eval size, the eval preprocessing its weights were evaluated with, dropout
and drop-path, PaddleClas's module for it, its progressive-learning preset, and the two numbers of the
shipped training recipe that differ by variant. Facts the spec already holds (EfficientNet's resolution
and dropout) are derived from it by the family's rule, never restated. Upper layers read the result
(`registry`, the PaddleClas plugin, progressive learning, the config generator); this module is plain
data and imports nothing from them. A row that misses a fact, restates a derived one or holds a value of
the wrong kind raises `DeclarationError` naming the model, when the family's module is imported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Collection, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from ..errors import InternalError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: (x - 0.5) / 0.5 per channel, EfficientNetV2's input (PaddleClas's and the official code's)
HALF_MEAN = HALF_STD = (0.5, 0.5, 0.5)
#: EfficientNet-Lite's inception-style input, (x - 127) / 128 (MEAN_RGB / STDDEV_RGB of the official lite builder)
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
#: PaddleClas's pretrained weights; `{name}` is the model's name. The host publishes no checksum: a download is
#: pinned to the digest of its first download (`weights.download`). A torch.hub-style URL (a digest prefix in
#: the file name, as torchvision's) is checked against that digest too.
PADDLECLAS_PRETRAINED = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/{name}_pretrained.pdparams"

#: "resize_short": resize the short side to eval_size / crop_pct, centre-crop eval_size (ResizeImage + CropImage);
#: "crop_at_ratio": centre-crop crop_pct of the short side, resize to eval_size (CropImageAtRatio)
CROP_MODES = ("resize_short", "crop_at_ratio")
#: the interpolations PaddleClas's resize ops accept with either backend
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
#: the official TensorFlow eval crop: centre crop of size / (size + CROP_PADDING) of the short side
CROP_PADDING = 32


def tf_crop_pct(size: int) -> float:
    """The official TensorFlow EfficientNet eval crop fraction at `size`."""
    return size / (size + CROP_PADDING)


class DeclarationError(InternalError, ValueError):
    """A family's row for a variant is incomplete or invalid; raised where the family is declared (a mistake in
    the code, so it keeps its traceback)."""


@dataclass(frozen=True)
class VariantDeclaration:
    """One model of a family, as its row declares it (with the family's defaults and derived facts)."""

    family: str
    variant: str  # the key the family's builder takes
    name: str  # PaddleClas's Arch.name
    spec: Any  # the architecture row the builder reads
    paper_top1: Optional[float]  # ImageNet-1k top-1 (%) reported by the paper / official repository
    train_size: int
    eval_size: int
    crop_mode: str  # one of CROP_MODES
    crop_pct: float
    interpolation: str  # of the eval resize
    mean: Tuple[float, float, float]  # of x / 255, per RGB channel
    std: Tuple[float, float, float]
    dropout: float  # before the classifier
    drop_path_rate: float  # stochastic depth at the last block
    weights_url: Optional[str]  # the official pretrained weights
    paddleclas_module: Optional[str]  # PaddleClas's arch.backbone.model_zoo module with its own class of this name
    progressive_preset: Optional[str]  # the progressive-learning preset its shipped config uses
    batch_size: int  # per device, of the shipped training recipe (configs/ImageNet)
    weight_decay: float  # L2 coefficient of the shipped training recipe


#: the facts a row (with its family's defaults and derived facts) must supply
FACTS = tuple(f.name for f in fields(VariantDeclaration) if f.name not in ("family", "variant", "name", "spec"))


@dataclass(frozen=True)
class Row:
    """A variant as written in its family's table: key, architecture spec, facts beyond the family's defaults."""

    variant: str
    spec: Any
    facts: Mapping[str, Any]


def row(variant: str, spec: Any, **facts: Any) -> Row:
    """One row of a family's table (see `declare_family`)."""
    return Row(variant, spec, facts)


@dataclass(frozen=True)
class FamilyDeclaration:
    """A family's variants in table order."""

    family: str
    variants: Tuple[VariantDeclaration, ...]

    def __iter__(self) -> Iterator[VariantDeclaration]:
        return iter(self.variants)

    def specs(self) -> Dict[str, Any]:
        """variant -> architecture spec, the table the family's builder reads."""
        return {v.variant: v.spec for v in self.variants}


def declare_family(family: str, name_format: str, rows: Sequence[Row], defaults: Mapping[str, Any],
                   derive: Callable[[Any], Mapping[str, Any]] = lambda spec: {},
                   presets: Collection[str] = ()) -> FamilyDeclaration:
    """The declarations of `rows`: each row's facts over `derive(spec)` (facts its spec holds) over the family's
    `defaults`. `name_format` makes PaddleClas's name from the variant key ("MicroNet_{}"); `presets` are the
    progressive-learning presets a row may name."""
    unknown = sorted(set(defaults) - set(FACTS))
    if unknown:
        raise DeclarationError(f"{family}: defaults name unknown facts {unknown}; facts: {', '.join(FACTS)}")
    declared: Dict[str, VariantDeclaration] = {}
    for entry in rows:
        name = name_format.format(entry.variant)
        if name in declared:
            raise DeclarationError(f"{name}: declared twice in {family}'s table")
        derived = dict(derive(entry.spec))
        restated = sorted(set(entry.facts) & set(derived))
        if restated:
            raise DeclarationError(f"{name}: {', '.join(restated)} derive(s) from its {type(entry.spec).__name__} spec; "
                                   f"change the spec, do not restate it in the row")
        facts = {**defaults, **derived, **entry.facts}
        unknown = sorted(set(facts) - set(FACTS))
        missing = [fact for fact in FACTS if fact not in facts]
        if unknown or missing:
            problems = ([f"unknown fact(s) {unknown}"] if unknown else []) + ([f"missing {', '.join(missing)}"] if missing else [])
            raise DeclarationError(f"{name}: {'; '.join(problems)} ({family} rows give: {', '.join(FACTS)}, "
                                   f"or take the family's default)")
        url = facts["weights_url"]
        if isinstance(url, str):
            facts["weights_url"] = url.format(name=name)
        declaration = VariantDeclaration(family=family, variant=entry.variant, name=name, spec=entry.spec, **facts)
        _check(declaration, presets)
        declared[name] = declaration
    return FamilyDeclaration(family, tuple(declared.values()))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_rgb(value: Any, positive: bool) -> bool:
    return (isinstance(value, tuple) and len(value) == 3 and all(_is_number(v) for v in value)
            and (not positive or min(value) > 0))


def _check(d: VariantDeclaration, presets: Collection[str]) -> None:
    """Each fact of `d` of the kind its field says, else a DeclarationError naming the model and the fact."""
    checks = {
        "paper_top1": (d.paper_top1 is None or (_is_number(d.paper_top1) and 0 < d.paper_top1 <= 100), "a percentage or None"),
        "train_size": (_is_size(d.train_size), "a positive int"),
        "eval_size": (_is_size(d.eval_size), "a positive int"),
        "crop_mode": (d.crop_mode in CROP_MODES, f"one of {', '.join(CROP_MODES)}"),
        "crop_pct": (_is_number(d.crop_pct) and 0 < d.crop_pct <= 1, "in (0, 1]"),
        "interpolation": (d.interpolation in INTERPOLATIONS, f"one of {', '.join(INTERPOLATIONS)}"),
        "mean": (_is_rgb(d.mean, positive=False), "a tuple of 3 numbers"),
        "std": (_is_rgb(d.std, positive=True), "a tuple of 3 positive numbers"),
        "dropout": (_is_number(d.dropout) and 0 <= d.dropout < 1, "in [0, 1)"),
        "drop_path_rate": (_is_number(d.drop_path_rate) and 0 <= d.drop_path_rate < 1, "in [0, 1)"),
        "weights_url": (d.weights_url is None or (isinstance(d.weights_url, str) and d.weights_url.startswith("https://")),
                        "an https URL or None"),
        "paddleclas_module": (d.paddleclas_module is None or (isinstance(d.paddleclas_module, str)
                                                             and d.paddleclas_module.isidentifier()), "a module name or None"),
        "progressive_preset": (d.progressive_preset is None or d.progressive_preset in presets,
                               f"one of {', '.join(presets)} or None" if presets else f"None ({d.family} has no presets)"),
        "batch_size": (_is_size(d.batch_size), "a positive int"),
        "weight_decay": (_is_number(d.weight_decay) and d.weight_decay >= 0, "a number >= 0"),
    }
    for fact, (ok, expected) in checks.items():
        if not ok:
            raise DeclarationError(f"{d.name}: {fact} must be {expected}, got {getattr(d, fact)!r}")
