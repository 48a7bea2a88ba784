"""Model names (PaddleClas's) -> builder and per-model defaults: image sizes, eval crop, normalisation,
regularisation and the official weights. Each family registers its builder, the options a user may
override and its declaration (`models.declaration`: one row per variant, beside its architecture table);
everything here is read from those rows."""
from __future__ import annotations

import difflib
import fnmatch
import logging
import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Collection, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

import paddle.nn as nn

from .errors import UserError
from .models import (
    EFFICIENTNET,
    EFFICIENTNET_LITE,
    EFFICIENTNET_V2,
    MICRONET,
    FamilyDeclaration,
    FeatureExtractor,
    ImageClassifier,
    VariantDeclaration,
    efficientnet_lite,
    efficientnet_v2,
    efficientnet_variant,
    micronet,
)
from .models.layers import DATA_FORMATS, building_in
from .weights import SourceNumerics, WeightsFile, load_weights_file, read_weights_file

logger = logging.getLogger("ppcls_ext")


@dataclass(frozen=True)
class ModelConfig:
    """Defaults of one model. The eval preprocessing is the one its official weights were evaluated with:
    `crop_mode` "resize_short" resizes the short side to `resize_short` then center-crops `eval_size`
    (ResizeImage + CropImage); "crop_at_ratio" center-crops `crop_pct` of the image then resizes it to
    `eval_size` (CropImageAtRatio, as EfficientNetV2 and the official TF code do)."""

    name: str
    family: str
    variant: str
    train_size: int
    eval_size: int
    crop_pct: float
    crop_mode: str
    interpolation: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    dropout: float
    drop_path_rate: float
    weights_url: Optional[str]
    paper_top1: Optional[float]

    @property
    def resize_short(self) -> int:
        return int(round(self.eval_size / self.crop_pct))


@dataclass(frozen=True)
class _Family:
    build: Callable[..., ImageClassifier]
    options: FrozenSet[str]  # keyword options a user may override besides class_num


_FAMILIES: Dict[str, _Family] = {}
_REGISTRY: Dict[str, ModelConfig] = {}
_DECLARATIONS: Dict[str, VariantDeclaration] = {}


def register_family(declaration: FamilyDeclaration, build: Callable[..., ImageClassifier], options: Collection[str]) -> None:
    """Add a family's models: `build(variant, class_num=..., **options)` builds one, `options` are the keyword
    options a user may override besides class_num, `declaration` gives every variant's defaults."""
    if declaration.family in _FAMILIES:
        raise ValueError(f"model family {declaration.family!r} is registered already")
    taken = sorted(v.name for v in declaration if v.name in _REGISTRY)
    if taken:
        raise ValueError(f"{declaration.family}: model name(s) {taken} are registered already")
    _FAMILIES[declaration.family] = _Family(build, frozenset(options))
    for variant in declaration:
        _DECLARATIONS[variant.name] = variant
        _REGISTRY[variant.name] = ModelConfig(**{f.name: getattr(variant, f.name) for f in fields(ModelConfig)})


_EFFICIENTNET_OPTIONS = ("dropout", "drop_path_rate", "padding", "bn_epsilon", "recompute")
register_family(MICRONET, micronet, ("dropout",))
register_family(EFFICIENTNET, efficientnet_variant, _EFFICIENTNET_OPTIONS)
register_family(EFFICIENTNET_V2, efficientnet_v2, _EFFICIENTNET_OPTIONS)
register_family(EFFICIENTNET_LITE, efficientnet_lite, _EFFICIENTNET_OPTIONS)


class UnknownModelError(UserError, KeyError, ValueError):
    """Raised for a model name that is not in the zoo; the message lists the valid names."""

    def __str__(self) -> str:
        return self.args[0]


def list_models(pattern: Optional[str] = None, family: Optional[str] = None) -> List[str]:
    """Names of the zoo's models, in zoo order, optionally filtered by a glob `pattern` and a family."""
    if family is not None and family not in _FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {list(_FAMILIES)}")
    return [name for name, config in _REGISTRY.items()
            if (pattern is None or fnmatch.fnmatchcase(name, pattern)) and (family is None or config.family == family)]


def get_model_config(name: str) -> ModelConfig:
    """The defaults of model `name`."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Available models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def declarations() -> List[VariantDeclaration]:
    """Every registered model's declaration, in zoo order (PaddleClas modules, progressive presets, recipes)."""
    return list(_DECLARATIONS.values())


def get_declaration(name: str) -> VariantDeclaration:
    """The declaration of model `name` (its `ModelConfig` plus its spec, PaddleClas module, preset, recipe)."""
    get_model_config(name)  # the unknown-name error
    return _DECLARATIONS[name]


def _normalize_args(mean: Sequence[float], std: Sequence[float]) -> Dict[str, Any]:
    """NormalizeImage's arguments for (x / 255 - mean) / std. Whole pixel values (EfficientNet-Lite's 127 and
    128) are written in pixel units with scale 1.0, as the official lite code states them; others in units of
    x / 255 with scale 1.0/255.0."""
    pixels = [v * 255.0 for v in (*mean, *std)]
    if all(abs(p - round(p)) < 1e-6 for p in pixels):
        return {"scale": 1.0, "mean": [float(round(v * 255.0)) for v in mean],
                "std": [float(round(v * 255.0)) for v in std], "order": ""}
    return {"scale": "1.0/255.0", "mean": list(mean), "std": list(std), "order": ""}


def eval_transform_ops(name: str) -> List[Dict[str, Any]]:
    """The evaluation preprocessing of model `name` as PaddleClas's op list (`DataLoader.Eval.dataset.transform_ops`:
    decode, the crop its weights were evaluated with, normalise; HWC): what the shipped configs hold and what
    `tools/export_model.py` assumes for a config that gives none."""
    config = get_model_config(name)
    ops: List[Dict[str, Any]] = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}]
    if config.crop_mode == "resize_short":
        ops += [{"ResizeImage": {"resize_short": config.resize_short, "interpolation": config.interpolation}},
                {"CropImage": {"size": config.eval_size}}]
    else:
        ops.append({"CropImageAtRatio": {"size": config.eval_size, "pad": config.resize_short - config.eval_size,
                                         "interpolation": config.interpolation}})
    ops.append({"NormalizeImage": _normalize_args(config.mean, config.std)})
    return ops


def _same_option(value: object, wanted: object) -> bool:
    try:
        return float(value) == wanted if isinstance(wanted, float) else value == wanted  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def with_source_numerics(name: str, options: Mapping[str, object], source: SourceNumerics) -> Dict[str, object]:
    """`options` of model `name` completed with the numerics its weights were trained with (logged). An
    option given that contradicts them wins, with a warning that the logits will not be the source's; for
    a run to resume (`source.binding`) it is an error."""
    wanted = source.numerics.options()
    contradicted = {key: options[key] for key in wanted if key in options and not _same_option(options[key], wanted[key])}
    given = ", ".join(f"{key}={value!r}" for key, value in contradicted.items())
    if contradicted and source.binding:
        raise ValueError(f"{given} contradicts {source.label}, which was saved computing with "
                         f"{source.numerics.describe()}: remove it to resume")
    if contradicted:
        logger.warning("%s was trained with %s, but %s is built with %s as given: its logits will not be the "
                       "source's", source.label, source.numerics.describe(), name, given)
    else:
        logger.info("%s was trained with %s: %s is built with them", source.label, source.numerics.describe(), name)
    return {**wanted, **options}

#: PaddleClas's backbone keywords, accepted for every family
BACKBONE_OPTIONS = ("return_patterns", "return_stages", "stop_after", "freeze_befor", "lr_mult_list")


def create_model(
    name: str,
    class_num: int = 1000,
    pretrained: Union[bool, str, os.PathLike, WeightsFile] = False,
    *,
    pretrained_sha256: Optional[str] = None,
    features_only: bool = False,
    out_strides: Sequence[int] = (4, 8, 16, 32),
    data_format: str = "NCHW",
    source_numerics: Optional[SourceNumerics] = None,
    **options,
) -> nn.Layer:
    """Build model `name` with `class_num` outputs.

    pretrained: False, True (the official weights, downloaded once to the cache), a local path / URL of a
        `.pdparams` file in our layout or PaddleClas's, or (EfficientNets) of a PyTorch / safetensors
        checkpoint of efficientnet_pytorch, timm or torchvision, or such a file already read
        (`weights.read_weights_file`). The file is read first: the numerics its weights were trained with
        (padding, bn_epsilon) become build options unless given (`with_source_numerics`). A classifier of
        another class count is skipped (and logged); any other mismatch is an error.
    pretrained_sha256: the SHA-256 the weights file must have (config: Arch.pretrained_sha256); a download
        is always pinned to the digest of its first download (`weights.download`).
    features_only: return a `FeatureExtractor` giving the stage outputs at `out_strides` instead.
    data_format: "NCHW", or "NHWC" to compute channels-last (inputs stay NCHW; see
        `ImageClassifier.data_format`).
    source_numerics: the numerics of weights loaded after building, which replace `pretrained`'s (the
        engine's `Global.pretrained_model` and `Global.checkpoints`, see `weights.read_starting_weights`).
    options: per family - dropout (all; a list gives one rate per progressive-learning stage, as
        PaddleClas's EfficientNetV2_S); drop_path_rate, padding ("same" / "symmetric") and bn_epsilon
        (EfficientNets); recompute (EfficientNets: True or a list of stage indices, activation
        recomputation in training); and PaddleClas's backbone keywords for every family: return_patterns,
        return_stages, stop_after, freeze_befor, lr_mult_list (see `ImageClassifier.init_net`).
    """
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    config = get_model_config(name)
    family = _FAMILIES[config.family]
    backbone = {key: options.pop(key) for key in BACKBONE_OPTIONS if key in options}
    if backbone and features_only:
        raise ValueError(f"features_only cannot be combined with {', '.join(backbone)}: choose one way to take features")
    stage_dropout = options.pop("dropout") if isinstance(options.get("dropout"), (list, tuple)) else None
    if stage_dropout is not None:
        if not stage_dropout:
            raise ValueError("dropout: an empty list; give one rate per progressive-learning stage")
        options["dropout"] = float(stage_dropout[0])
    unknown = sorted(set(options) - family.options)
    if unknown:
        raise TypeError(f"{name} got unexpected option(s) {unknown}; accepted: class_num, pretrained, pretrained_sha256, "
                        f"features_only, out_strides, data_format, {', '.join(sorted(family.options))}, "
                        f"{', '.join(BACKBONE_OPTIONS)}")
    if not isinstance(class_num, int) or isinstance(class_num, bool) or class_num < 0:
        raise ValueError(f"class_num must be a non-negative integer, got {class_num!r}")
    options.setdefault("dropout", config.dropout)
    if "drop_path_rate" in family.options:
        options.setdefault("drop_path_rate", config.drop_path_rate)
    weights = _read_pretrained(config, pretrained, pretrained_sha256)
    if source_numerics is None and weights is not None and weights.numerics is not None:
        source_numerics = SourceNumerics(weights.numerics, weights.label)
    if source_numerics is not None and {"padding", "bn_epsilon"} <= family.options:
        options = with_source_numerics(name, options, source_numerics)
    with building_in(data_format):
        model = family.build(config.variant, class_num=class_num, **options)
    if weights is not None:
        load_weights_file(model, weights)
    if stage_dropout is not None:
        model.set_stage_dropout(stage_dropout)
    if backbone:
        model.init_net(**backbone)
    return FeatureExtractor(model, out_strides) if features_only else model


def _read_pretrained(config: ModelConfig, pretrained: Union[bool, str, os.PathLike, WeightsFile],
                     sha256: Optional[str] = None) -> Optional[WeightsFile]:
    """The weights `create_model(pretrained=...)` asks for, read (None for none)."""
    if isinstance(pretrained, WeightsFile):
        return pretrained
    if not pretrained:
        return None
    if pretrained is True:
        if config.weights_url is None:
            raise ValueError(f"{config.name} has no official pretrained weights; pass pretrained=<path or URL of a .pdparams>")
        pretrained = config.weights_url
    return read_weights_file(pretrained, sha256=sha256)


_PADDING_TYPES = {"SAME": "same", "DYNAMIC": "symmetric"}


def paddleclas_arch_options(name: str, arch: Mapping[str, object]) -> Dict[str, object]:
    """Translate the keyword arguments of a PaddleClas `Arch` section (minus `name`) into `create_model`
    arguments: `padding_type` SAME/DYNAMIC, `include_top`, and `use_ssld` (no SSLD weights exist for
    these models). Everything else passes through and is checked by `create_model`."""
    options = dict(arch)
    if options.pop("use_ssld", False):
        raise ValueError(f"{name}: PaddleClas publishes no SSLD weights for this model; remove use_ssld")
    if "padding_type" in options:
        padding_type = options.pop("padding_type")
        if padding_type not in _PADDING_TYPES:
            raise ValueError(f"{name}: padding_type must be one of {list(_PADDING_TYPES)}, got {padding_type!r}")
        options["padding"] = _PADDING_TYPES[padding_type]
    if not options.pop("include_top", True):
        options["class_num"] = 0
    return options
