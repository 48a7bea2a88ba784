"""RandAugment (arXiv:1909.13719) as PaddleClas implements it, and PaddleClas's RandAugmentV2 (the
EfficientNetV2 variant). The magnitude is read at every call, so a schedule may change it between epochs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from ..config import integer, number, number_list, one_of
from . import autoaugment as ops
from .autoaugment import FILL_COLOUR, ImageLike, random_sign, to_pil
from .registries import TRANSFORM_OPS

PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "hamming": Image.Resampling.HAMMING,
}

MAX_LEVEL = 10.0


@dataclass(frozen=True)
class LevelOp:
    """One RandAugment operation: `argument(level)` maps level = magnitude / 10 to the operation's
    argument; `signed` negates that argument half of the time; `apply(img, argument, augment)`."""

    argument: Callable[[float], float]
    signed: bool
    apply: Callable[[Image.Image, float, "RandAugment"], Image.Image]


def _geometric(fn: Callable, scale_by: Optional[int] = None) -> Callable:
    """`fn(img, value, fill, resample)` as an `apply`; `scale_by` = 0/1 multiplies the value by the
    image width/height (a translation given as a fraction of the image)."""
    def apply(img: Image.Image, value: float, augment: "RandAugment") -> Image.Image:
        if scale_by is not None:
            value = value * img.size[scale_by]
        return fn(img, value, augment.fillcolor, augment.resample)
    return apply


def _enhance(fn: Callable) -> Callable:
    """An enhancement whose factor is 1 + argument (1 leaves the image unchanged)."""
    return lambda img, value, augment: fn(img, 1.0 + value)


def _plain(fn: Callable) -> Callable:
    return lambda img, value, augment: fn(img, value)


def _no_argument(fn: Callable) -> Callable:
    return lambda img, value, augment: fn(img)


RANDAUGMENT_OPS: Dict[str, LevelOp] = {
    "shearX": LevelOp(lambda level: 0.3 * level, True, _geometric(ops.shear_x)),
    "shearY": LevelOp(lambda level: 0.3 * level, True, _geometric(ops.shear_y)),
    "translateX": LevelOp(lambda level: 150.0 / 331.0 * level, True, _geometric(ops.translate_x, scale_by=0)),
    "translateY": LevelOp(lambda level: 150.0 / 331.0 * level, True, _geometric(ops.translate_y, scale_by=1)),
    "rotate": LevelOp(lambda level: 30.0 * level, False, _geometric(ops.rotate)),
    "color": LevelOp(lambda level: 0.9 * level, True, _enhance(ops.color)),
    "posterize": LevelOp(lambda level: int(4.0 * level), False, _plain(ops.posterize)),
    "solarize": LevelOp(lambda level: 256.0 * level, False, _plain(ops.solarize)),
    "contrast": LevelOp(lambda level: 0.9 * level, True, _enhance(ops.contrast)),
    "sharpness": LevelOp(lambda level: 0.9 * level, True, _enhance(ops.sharpness)),
    "brightness": LevelOp(lambda level: 0.9 * level, True, _enhance(ops.brightness)),
    "autocontrast": LevelOp(lambda level: 0, False, _no_argument(ops.autocontrast)),
    "equalize": LevelOp(lambda level: 0, False, _no_argument(ops.equalize)),
    "invert": LevelOp(lambda level: 0, False, _no_argument(ops.invert)),
}

# EfficientNetV2's ranges: translations in pixels, signed rotation, enhancement factors 0.1..1.9
# (PaddleClas writes them as 1 + (1.8 * level - 0.9)), plus SolarizeAdd and Cutout.
RANDAUGMENT_V2_OPS: Dict[str, LevelOp] = {
    **RANDAUGMENT_OPS,
    "translateX": LevelOp(lambda level: 100.0 * level, True, _geometric(ops.translate_x)),
    "translateY": LevelOp(lambda level: 100.0 * level, True, _geometric(ops.translate_y)),
    "rotate": LevelOp(lambda level: 30.0 * level, True, _geometric(ops.rotate)),
    "color": LevelOp(lambda level: 1.8 * level - 0.9, False, _enhance(ops.color)),
    "solarize": LevelOp(lambda level: int(256.0 * level), False, _plain(ops.solarize)),
    "solarize_add": LevelOp(lambda level: int(110.0 * level), False, _plain(ops.solarize_add)),
    "contrast": LevelOp(lambda level: 1.8 * level - 0.9, False, _enhance(ops.contrast)),
    "sharpness": LevelOp(lambda level: 1.8 * level - 0.9, False, _enhance(ops.sharpness)),
    "brightness": LevelOp(lambda level: 1.8 * level - 0.9, False, _enhance(ops.brightness)),
    "cutout": LevelOp(lambda level: int(40.0 * level), False,
                      lambda img, value, augment: ops.cutout(img, value, augment.fillcolor[0])),
}


@TRANSFORM_OPS.register
class RandAugment:
    """Apply `num_layers` operations drawn uniformly (numpy's global generator) from the table, each at
    the strength given by `magnitude` (0..10 nominal; read at every call). HWC uint8 array in and out."""

    OPS: Dict[str, LevelOp] = RANDAUGMENT_OPS

    def __init__(self, num_layers: int = 2, magnitude: float = 5, fillcolor: Sequence[int] = (128, 128, 128),
                 interpolation: str = "bicubic"):
        name = type(self).__name__
        self.num_layers = int(integer(0)(num_layers, f"{name}: num_layers"))
        self.magnitude = number(expected="a number (0..10 nominal)")(magnitude, f"{name}: magnitude")
        self.fillcolor = tuple(int(v) for v in FILL_COLOUR(fillcolor, f"{name}: fillcolor"))
        self.interpolation = one_of(sorted(PIL_RESAMPLE))(interpolation, f"{name}: interpolation")
        self.resample = PIL_RESAMPLE[interpolation]
        self._names: List[str] = list(self.OPS)

    def __call__(self, img: ImageLike) -> np.ndarray:
        pil = to_pil(img, type(self).__name__)
        level = self.magnitude / MAX_LEVEL
        for _ in range(self.num_layers):
            op = self.OPS[np.random.choice(self._names)]
            argument = op.argument(level)
            if op.signed:
                argument = argument * random_sign()
            pil = op.apply(pil, argument, self)
        return np.asarray(pil)


@TRANSFORM_OPS.register
class RandAugmentV2(RandAugment):
    """PaddleClas's RandAugment for EfficientNetV2: the V2 ranges plus SolarizeAdd and Cutout.
    `progress_magnitude` (per-stage magnitudes for progressive learning) is kept for the trainer."""

    OPS = RANDAUGMENT_V2_OPS

    def __init__(self, num_layers: int = 2, magnitude: float = 5, progress_magnitude: Optional[Sequence[float]] = None,
                 fillcolor: Sequence[int] = (128, 128, 128), interpolation: str = "bicubic"):
        super().__init__(num_layers, magnitude, fillcolor, interpolation)
        number_list(optional=True)(progress_magnitude, "RandAugmentV2: progress_magnitude")
        self.progress_magnitude = None if progress_magnitude is None else list(progress_magnitude)
