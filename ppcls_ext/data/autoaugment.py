"""AutoAugment's ImageNet policy as PaddleClas applies it, plus the PIL image operations it shares with
RandAugment (shear, translate, rotate, colour enhancements, posterize, solarize, ...)."""
from __future__ import annotations

import random
from typing import Callable, Dict, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ..config import int_list
from .registries import TRANSFORM_OPS

ImageLike = Union[np.ndarray, Image.Image]
Fill = Tuple[int, ...]
#: the fill colour of the geometric operations' empty area
FILL_COLOUR = int_list(3, 0, 255, optional=False, expected="3 values (R, G, B), each 0..255")

AFFINE = Image.Transform.AFFINE
NEAREST = Image.Resampling.NEAREST
BICUBIC = Image.Resampling.BICUBIC


def to_pil(img: ImageLike, op: str) -> Image.Image:
    """A PIL image for `img` (an HWC uint8 array or already a PIL image); `op` names the caller in errors."""
    if isinstance(img, Image.Image):
        return img
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        kind = f"an array of {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
        raise TypeError(f"{op}: expected an HWC uint8 image (numpy array or PIL image), got {kind}; "
                        f"put it before NormalizeImage")
    return Image.fromarray(np.ascontiguousarray(img))


def random_sign() -> int:
    """-1 or +1 with equal chance, drawn from Python's `random` as PaddleClas does."""
    return random.choice((-1, 1))


# ---- image operations: each takes a PIL image and one argument already mapped from the magnitude ----

def shear_x(img: Image.Image, shear: float, fill: Fill, resample: int) -> Image.Image:
    return img.transform(img.size, AFFINE, (1, shear, 0, 0, 1, 0), resample, fillcolor=fill)


def shear_y(img: Image.Image, shear: float, fill: Fill, resample: int) -> Image.Image:
    return img.transform(img.size, AFFINE, (1, 0, 0, shear, 1, 0), resample, fillcolor=fill)


def translate_x(img: Image.Image, pixels: float, fill: Fill, resample: int) -> Image.Image:
    return img.transform(img.size, AFFINE, (1, 0, pixels, 0, 1, 0), resample, fillcolor=fill)


def translate_y(img: Image.Image, pixels: float, fill: Fill, resample: int) -> Image.Image:
    return img.transform(img.size, AFFINE, (1, 0, 0, 0, 1, pixels), resample, fillcolor=fill)


def rotate(img: Image.Image, degrees: float, fill: Fill, resample: int) -> Image.Image:
    return img.rotate(degrees, resample, fillcolor=fill)


def color(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Color(img).enhance(factor)


def contrast(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(factor)


def sharpness(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Sharpness(img).enhance(factor)


def brightness(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(factor)


def posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep the `bits` high bits of each channel: 0 bits gives a black image (as PaddleClas gets from
    older Pillow; Pillow 11+ refuses 0), more than 8 (magnitudes above 20) keeps all 8."""
    mask = (0xFF << (8 - max(0, min(8, int(bits))))) & 0xFF
    return img.point([value & mask for value in range(256)] * len(img.getbands()))


def solarize(img: Image.Image, threshold: float) -> Image.Image:
    return ImageOps.solarize(img, threshold)


def solarize_add(img: Image.Image, addition: int, threshold: int = 128) -> Image.Image:
    """Add `addition` (clipped to 255) to the values below `threshold`; EfficientNet's SolarizeAdd."""
    lut = [min(255, value + addition) if value < threshold else value for value in range(256)]
    return img.point(lut * len(img.getbands()))


def autocontrast(img: Image.Image) -> Image.Image:
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image) -> Image.Image:
    return ImageOps.equalize(img)


def invert(img: Image.Image) -> Image.Image:
    return ImageOps.invert(img)


def cutout(img: Image.Image, half_size: int, value: int) -> Image.Image:
    """Fill a (2*half_size)^2 square centred at a uniform random point (clipped at the borders) with
    `value`; the centre is drawn from numpy's global generator, as PaddleClas does."""
    array = np.array(img)
    height, width = array.shape[:2]
    cy = np.random.randint(0, height + 1)
    cx = np.random.randint(0, width + 1)
    array[max(0, cy - half_size):min(height, cy + half_size), max(0, cx - half_size):min(width, cx + half_size)] = value
    return Image.fromarray(array)


# ---- the ImageNet policy ----

# operation -> (value at magnitude index 0, value at index 9); index i maps linearly in between.
AUTOAUGMENT_RANGES: Dict[str, Tuple[float, float]] = {
    "shearX": (0.0, 0.3),
    "rotate": (0.0, 30.0),
    "color": (0.0, 0.9),
    "posterize": (8, 4),
    "solarize": (256.0, 0.0),
    "contrast": (0.0, 0.9),
    "sharpness": (0.0, 0.9),
    "autocontrast": (0.0, 0.0),
    "equalize": (0.0, 0.0),
    "invert": (0.0, 0.0),
}

# (probability, operation, magnitude index) pairs: the ImageNet sub-policies as PaddleClas lists them
# (the 24 of the AutoAugment paper, with four repeated and one that is never applied).
IMAGENET_POLICY: Tuple[Tuple[Tuple[float, str, int], Tuple[float, str, int]], ...] = (
    ((0.4, "posterize", 8), (0.6, "rotate", 9)),
    ((0.6, "solarize", 5), (0.6, "autocontrast", 5)),
    ((0.8, "equalize", 8), (0.6, "equalize", 3)),
    ((0.6, "posterize", 7), (0.6, "posterize", 6)),
    ((0.4, "equalize", 7), (0.2, "solarize", 4)),
    ((0.4, "equalize", 4), (0.8, "rotate", 8)),
    ((0.6, "solarize", 3), (0.6, "equalize", 7)),
    ((0.8, "posterize", 5), (1.0, "equalize", 2)),
    ((0.2, "rotate", 3), (0.6, "solarize", 8)),
    ((0.6, "equalize", 8), (0.4, "posterize", 6)),
    ((0.8, "rotate", 8), (0.4, "color", 0)),
    ((0.4, "rotate", 9), (0.6, "equalize", 2)),
    ((0.0, "equalize", 7), (0.8, "equalize", 8)),
    ((0.6, "invert", 4), (1.0, "equalize", 8)),
    ((0.6, "color", 4), (1.0, "contrast", 8)),
    ((0.8, "rotate", 8), (1.0, "color", 2)),
    ((0.8, "color", 8), (0.8, "solarize", 7)),
    ((0.4, "sharpness", 7), (0.6, "invert", 8)),
    ((0.6, "shearX", 5), (1.0, "equalize", 9)),
    ((0.4, "color", 0), (0.6, "equalize", 3)),
    ((0.4, "equalize", 7), (0.2, "solarize", 4)),
    ((0.6, "solarize", 5), (0.6, "autocontrast", 5)),
    ((0.6, "invert", 4), (1.0, "equalize", 8)),
    ((0.6, "color", 4), (1.0, "contrast", 8)),
    ((0.8, "equalize", 8), (0.6, "equalize", 3)),
)


def autoaugment_value(operation: str, index: int) -> float:
    """The argument of `operation` at magnitude index 0..9 (posterize bits are rounded to an int)."""
    low, high = AUTOAUGMENT_RANGES[operation]
    value = float(np.linspace(low, high, 10)[index])
    return int(round(value)) if operation == "posterize" else value


def _autoaugment_operations(fill: Fill) -> Dict[str, Callable[[Image.Image, float], Image.Image]]:
    """Operation name -> fn(img, value); PaddleClas signs shear and the enhancements at random, rotates
    counter-clockwise only, shears bicubic and rotates nearest."""
    return {
        "shearX": lambda img, v: shear_x(img, v * random_sign(), fill, BICUBIC),
        "rotate": lambda img, v: rotate(img, v, fill, NEAREST),
        "color": lambda img, v: color(img, 1 + v * random_sign()),
        "posterize": lambda img, v: posterize(img, v),
        "solarize": lambda img, v: solarize(img, v),
        "contrast": lambda img, v: contrast(img, 1 + v * random_sign()),
        "sharpness": lambda img, v: sharpness(img, 1 + v * random_sign()),
        "autocontrast": lambda img, v: autocontrast(img),
        "equalize": lambda img, v: equalize(img),
        "invert": lambda img, v: invert(img),
    }


@TRANSFORM_OPS.register
class AutoAugment:
    """AutoAugment (arXiv:1805.09501), ImageNet policy: pick one sub-policy uniformly, then apply each of
    its two operations with its probability. Takes and returns an HWC uint8 array (or a PIL image)."""

    def __init__(self, fillcolor: Sequence[int] = (128, 128, 128)):
        self.fillcolor = tuple(int(v) for v in FILL_COLOUR(fillcolor, "AutoAugment: fillcolor"))
        self._operations = _autoaugment_operations(self.fillcolor)
        self.policy = tuple(
            tuple((prob, name, autoaugment_value(name, index)) for prob, name, index in sub_policy)
            for sub_policy in IMAGENET_POLICY
        )

    def __call__(self, img: ImageLike) -> np.ndarray:
        pil = to_pil(img, "AutoAugment")
        sub_policy = self.policy[random.randint(0, len(self.policy) - 1)]
        for prob, name, value in sub_policy:
            if random.random() < prob:
                pil = self._operations[name](pil, value)
        return np.asarray(pil)
