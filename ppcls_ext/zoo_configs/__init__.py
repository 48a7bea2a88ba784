"""The shipped configs, `configs/ImageNet/<family>/<model>.yaml`, rendered from the model declarations.

Each family has a training-recipe template (`templates/`, PaddleClas's config layout with `${...}` fields); a
model's values come from its declaration (`registry.get_declaration`): sizes, eval preprocessing
(`registry.eval_transform_ops`, also its train normalisation), dropout, batch and weight decay, and for a
progressively trained EfficientNetV2 the per-stage values of its preset (`engine.progressive`). The files stay
plain YAML that PaddleClas's own tools read; `python tools/make_configs.py` writes them, `--check` (and a test)
fails on any file that is not what the declarations give.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..engine.progressive import PRESETS, ProgressiveSchedule
from ..registry import declarations, eval_transform_ops, get_declaration, get_model_config

TEMPLATES = Path(__file__).with_name("templates")
CONFIG_DIR = os.path.join("configs", "ImageNet")
COMMAND = "python tools/make_configs.py"


@dataclass(frozen=True)
class Recipe:
    """A family's training recipe: its template, the device count its per-device batches are for, and the
    learning rate `base_lr` per `base_batch` images (scaled linearly with the global batch)."""

    template: str
    file_prefix: str  # the config's file name is the prefix plus the variant in lower case
    devices: int
    base_lr: float
    base_batch: int
    #: the template of the variants that train with progressive learning (a declared preset)
    progressive_template: Optional[str] = None


RECIPES: Dict[str, Recipe] = {
    "MicroNet": Recipe("micronet.yaml", "micronet_", devices=4, base_lr=0.2, base_batch=512),
    "EfficientNet": Recipe("efficientnet.yaml", "efficientnet_", devices=8, base_lr=0.016, base_batch=256),
    "EfficientNetV2": Recipe("efficientnetv2.yaml", "efficientnetv2_", devices=8, base_lr=0.016, base_batch=256,
                             progressive_template="efficientnetv2_progressive.yaml"),
    "EfficientNetLite": Recipe("efficientnet_lite.yaml", "efficientnet_", devices=8, base_lr=0.016, base_batch=256),
}
#: the stages of the shipped progressive configs (PaddleClas's trainer has exactly 4)
PROGRESSIVE_STAGES = 4


def _number(value: float) -> str:
    """A number as the configs write it: 0.064, 15, 1e-5."""
    text = f"{round(value, 10):g}"
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text


def _yaml_float(value: float) -> str:
    """A float YAML 1.1 (PyYAML, PaddleClas) reads as a float: 0.2, 3.0e-5 (its "3e-5" would be a string)."""
    text = _number(value)
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{exponent}" if exponent else mantissa


def _scalar(value: Any) -> str:
    """A value of an op argument in the configs' flow style."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(round(value, 10))
    if value == "":
        return "''"
    return str(value)


def _ops_block(ops: Sequence[Mapping[str, Any]], indent: int) -> str:
    """PaddleClas's op list as block YAML, `- Op:` at `indent` spaces and its arguments 4 deeper."""
    lines = []
    for op in ops:
        (name, args), = op.items()
        lines.append(f"{' ' * indent}- {name}:")
        lines += [f"{' ' * (indent + 4)}{key}: {_scalar(value)}" for key, value in (args or {}).items()]
    return "".join(line + "\n" for line in lines)


def _ramp(values: Sequence[float]) -> str:
    return f"{_number(values[0])} -> {_number(values[-1])}"


def _progressive_fields(name: str, preset: str) -> Dict[str, str]:
    """The per-stage values of `preset` where our schedule (Global.progressive) and PaddleClas's trainer
    (progress_size, progress_magnitude, Arch.dropout as a list) read them, and the header's ramps."""
    table = PRESETS[preset]
    stages = ProgressiveSchedule(PROGRESSIVE_STAGES, PROGRESSIVE_STAGES, table).values
    variant = get_declaration(name).variant
    batch_ops = [{op: {"alpha": table[knob][-1]}} for knob, op in (("mixup_alpha", "MixupOperator"), ("cutmix_alpha", "CutmixOperator"))
                 if table[knob][-1] > 0]
    return {
        "preset": preset,
        "preset_remark": "" if variant == preset else f" ({variant} is not in the table; it uses {preset}'s)",
        "stages": str(PROGRESSIVE_STAGES),
        "image_size_ramp": _ramp(table["image_size"]),
        "magnitude_ramp": _ramp(table["magnitude"]),
        "mixup_alpha_ramp": _ramp(table["mixup_alpha"]),
        "dropout_ramp": _ramp(table["dropout"]),
        "train_size": str(int(stages["image_size"][-1])),
        "progress_size": _scalar([int(v) for v in stages["image_size"]]),
        "magnitude": _number(stages["magnitude"][-1]),
        "progress_magnitude": _scalar(stages["magnitude"]),
        "progress_dropout": _scalar(stages["dropout"]),
        "batch_transform_ops": ("      batch_transform_ops:\n" + _ops_block(batch_ops, 8)) if batch_ops else "",
    }


def render(name: str) -> str:
    """The shipped config of model `name`."""
    declaration, config = get_declaration(name), get_model_config(name)
    recipe = RECIPES[declaration.family]
    preset = declaration.progressive_preset
    eval_ops = eval_transform_ops(name)
    global_batch = declaration.batch_size * recipe.devices
    fields = {
        "name": name,
        "train_size": str(declaration.train_size),
        "eval_size": str(declaration.eval_size),
        "resize_short": str(config.resize_short),
        "interpolation": declaration.interpolation,
        "dropout": _number(declaration.dropout),
        "drop_path_rate": _number(declaration.drop_path_rate),
        "batch_size": str(declaration.batch_size),
        "devices": str(recipe.devices),
        "global_batch": str(global_batch),
        "base_lr": _number(recipe.base_lr),
        "base_batch": str(recipe.base_batch),
        "learning_rate": _number(recipe.base_lr * global_batch / recipe.base_batch),
        "weight_decay": _yaml_float(declaration.weight_decay),
        "weight_decay_text": _number(declaration.weight_decay),
        "eval_ops": _ops_block(eval_ops, 8),
        "infer_ops": _ops_block(eval_ops + [{"ToCHWImage": None}], 4),
        "train_normalize": _ops_block(eval_ops[-1:], 8),
    }
    template = recipe.template
    if preset is not None:
        if recipe.progressive_template is None:
            raise ValueError(f"{name} declares progressive preset {preset!r}, but the {declaration.family} recipe has "
                             f"no progressive template")
        template = recipe.progressive_template
        fields.update(_progressive_fields(name, preset))
    return Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(fields)


def config_path(name: str) -> str:
    """Where the config of `name` lives, relative to the repository root."""
    declaration = get_declaration(name)
    file_name = RECIPES[declaration.family].file_prefix + declaration.variant.lower() + ".yaml"
    return os.path.join(CONFIG_DIR, declaration.family, file_name)


def rendered() -> Dict[str, str]:
    """Every model's config: relative path -> text."""
    return {config_path(d.name): render(d.name) for d in declarations()}


def stale(root: str) -> List[str]:
    """The configs under `root` that differ from what the declarations give, or are missing, or exist with no
    model declared for them (relative paths)."""
    wanted = rendered()
    present = {os.path.relpath(str(path), root) for path in Path(root, CONFIG_DIR).glob("*/*.yaml")}
    wrong = []
    for path in sorted(set(wanted) | present):
        full = os.path.join(root, path)
        if path not in wanted or not os.path.isfile(full) or Path(full).read_text(encoding="utf-8") != wanted[path]:
            wrong.append(path)
    return wrong
