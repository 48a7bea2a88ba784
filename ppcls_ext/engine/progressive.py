"""EfficientNetV2's progressive learning: training is split into stages; each stage trains at a larger
image size with stronger regularisation (RandAugment magnitude, mixup and cutmix alpha, dropout).

Stages split the epochs as PaddleClas and the official code do: stage k (0-based) of S ends at epoch
floor(E * (k + 1) / S). A value ramps linearly over the stages from its start to its end
(start + (end - start) * k / (S - 1)), as in the paper's Table 6, or is given per stage.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import paddle.nn as nn

from ..config import ConfigError
from ..data.batch_ops import CutmixOperator, MixupOperator
from ..data.transforms import RandAugment, RandCropImage
from ..models.base import stage_dropout_rates
from ..models.efficientnet_v2 import PROGRESSIVE_PRESETS
from ..registry import declarations

logger = logging.getLogger("ppcls_ext")

KNOBS = ("image_size", "magnitude", "mixup_alpha", "cutmix_alpha", "dropout")
TRAIN_MODES = ("progressive", "efficientnetv2")  # ours and PaddleClas's names for it

#: the paper's Table 6 (start -> end over the stages), declared with the EfficientNetV2 family
PRESETS: Dict[str, Dict[str, Sequence[float]]] = PROGRESSIVE_PRESETS
#: the preset a model uses when the config names none (each family's declaration says; XL, absent from Table 6, takes L's)
MODEL_PRESETS = {d.name: d.progressive_preset for d in declarations() if d.progressive_preset is not None}


@dataclass(frozen=True)
class StageValues:
    stage: int
    stages: int
    first_epoch: int
    image_size: Optional[int]
    magnitude: Optional[float]
    mixup_alpha: Optional[float]
    cutmix_alpha: Optional[float]
    dropout: Optional[float]

    def describe(self) -> str:
        parts = [f"{knob} {getattr(self, knob):g}" for knob in KNOBS if getattr(self, knob) is not None]
        return f"stage {self.stage + 1}/{self.stages} from epoch {self.first_epoch}: " + ", ".join(parts)


class ProgressiveSchedule:
    """Per-stage values of each knob over `epochs` epochs; a knob without values is left alone."""

    def __init__(self, epochs: int, stages: int, values: Mapping[str, Sequence[float]]):
        if stages < 1 or epochs < 1:
            raise ConfigError(f"Global.progressive.stages and Global.epochs must be positive, got {stages} and {epochs}")
        if stages > epochs:  # a short run (a smoke test of a long config): one stage per epoch
            logger.info("progressive: %d stages over %d epochs; using %d stages", stages, epochs, epochs)
            stages = epochs
        self.epochs, self.stages = epochs, stages
        self.values: Dict[str, List[float]] = {}
        for knob, given in values.items():
            if knob not in KNOBS:
                raise ConfigError(f"Global.progressive: unknown key {knob!r}; known: stages, preset, {', '.join(KNOBS)}")
            self.values[knob] = self._per_stage(knob, list(given))

    def _per_stage(self, knob: str, given: List[float]) -> List[float]:
        """[start, end] ramps over the stages; a list of one value per stage is taken as it is (when a
        short run has fewer stages than the list, evenly spaced entries, first and last included)."""
        if len(given) == self.stages or (len(given) > 2 and self.stages < len(given)):
            picks = [round(k * (len(given) - 1) / max(self.stages - 1, 1)) for k in range(self.stages)]
            per_stage = [float(given[i]) for i in (picks if self.stages > 1 else [len(given) - 1])]
        elif len(given) == 2:
            start, end = float(given[0]), float(given[1])
            per_stage = [end if self.stages == 1 else start + (end - start) * k / (self.stages - 1) for k in range(self.stages)]
        else:
            raise ConfigError(f"Global.progressive.{knob}: give [start, end] or one value per stage ({self.stages}), got {given}")
        if knob == "image_size":
            per_stage = [float(int(round(v))) for v in per_stage]
            if min(per_stage) < 1:
                raise ConfigError(f"Global.progressive.image_size must be positive, got {given}")
        if knob == "dropout" and not all(0.0 <= v < 1.0 for v in per_stage):
            raise ConfigError(f"Global.progressive.dropout must be in [0, 1), got {given}")
        return per_stage

    def last_epoch(self, stage: int) -> int:
        return self.epochs * (stage + 1) // self.stages

    def stage_of(self, epoch: int) -> int:
        """The 0-based stage of a 1-based epoch."""
        return next(k for k in range(self.stages) if epoch <= self.last_epoch(k))

    def at(self, epoch: int) -> StageValues:
        stage = self.stage_of(epoch)
        first = self.last_epoch(stage - 1) + 1 if stage else 1
        value = {knob: self.values[knob][stage] if knob in self.values else None for knob in KNOBS}
        size = value["image_size"]
        return StageValues(stage, self.stages, first, None if size is None else int(size), value["magnitude"],
                           value["mixup_alpha"], value["cutmix_alpha"], value["dropout"])


def build_schedule(glob: Mapping[str, Any], model_name: str, train_ops, epochs: int,
                   model: Optional[nn.Layer] = None) -> Optional[ProgressiveSchedule]:
    """The schedule of `Global.train_mode: progressive` (or PaddleClas's `efficientnetv2`), None otherwise.

    Values, per knob, from: `Global.progressive.<knob>` ([start, end] or per stage), else where PaddleClas's
    progressive trainer reads them - `RandCropImage.progress_size`, `RandAugmentV2.progress_magnitude`,
    the model's per-stage dropout (`Arch.dropout` as a list) - else the preset (`Global.progressive.preset`,
    default: the model's, S/M/L from the paper's Table 6).
    """
    if glob.get("train_mode") not in TRAIN_MODES:
        return None
    section = dict(glob.get("progressive") or {})
    preset_name = section.pop("preset", None) or MODEL_PRESETS.get(model_name)
    if preset_name is not None and preset_name not in PRESETS:
        raise ConfigError(f"Global.progressive.preset: unknown preset {preset_name!r}; valid: {', '.join(PRESETS)}")
    values: Dict[str, Sequence[float]] = dict(PRESETS[preset_name]) if preset_name else {}
    for op in train_ops.find(RandCropImage):
        if getattr(op, "progress_size", None):
            values["image_size"] = op.progress_size
    for op in train_ops.find(RandAugment):
        if getattr(op, "progress_magnitude", None):
            values["magnitude"] = op.progress_magnitude
    rates = stage_dropout_rates(model) if model is not None else None
    if rates:
        values["dropout"] = rates
    stages = section.pop("stages", None)
    values.update(section)
    if not values:
        raise ConfigError(f"Global.train_mode={glob['train_mode']}: no progressive values for {model_name}; set "
                          f"Global.progressive (image_size, magnitude, mixup_alpha, cutmix_alpha, dropout as [start, end]) "
                          f"or Global.progressive.preset ({', '.join(PRESETS)})")
    if stages is None:
        per_stage = [len(v) for v in values.values() if len(v) != 2]
        stages = per_stage[0] if per_stage else 4
    return ProgressiveSchedule(epochs, int(stages), values)


# knob -> (operator type, attribute, name to suggest when missing, whether it is a batch operator)
_OPERATORS = {
    "image_size": (RandCropImage, "size", "RandCropImage", False),
    "magnitude": (RandAugment, "magnitude", "RandAugmentV2", False),
    "mixup_alpha": (MixupOperator, "alpha", "MixupOperator", True),
    "cutmix_alpha": (CutmixOperator, "alpha", "CutmixOperator", True),
}


def apply_stage(values: StageValues, train_ops, batch_ops, model: nn.Layer) -> None:
    """Set the stage's values on the training transforms (found by type, never by position), the batch
    operators and the model's classifier dropout. Loader workers restart every epoch and so pick the new
    values up."""
    for knob, (op_type, attribute, name, is_batch_op) in _OPERATORS.items():
        value = getattr(values, knob)
        if value is None:
            continue
        pipeline = batch_ops if is_batch_op else train_ops
        ops = pipeline.find(op_type) if pipeline is not None else []
        if not ops and not (is_batch_op and value == 0):
            raise ConfigError(f"progressive {knob} {value:g} has no operator to act on: add {name} to "
                              f"DataLoader.Train.dataset.{'batch_transform_ops' if is_batch_op else 'transform_ops'}")
        for op in ops:
            setattr(op, attribute, value)
    if values.dropout is not None:
        dropout = getattr(model, "dropout", None)
        if not isinstance(dropout, nn.Dropout):
            raise ConfigError(f"progressive dropout: {type(model).__name__} has no classifier dropout to ramp")
        dropout.p = values.dropout
