"""PaddleClas's image transform operators after decoding (same names, arguments and defaults): resize,
crops, flip, normalisation, layout and random erasing. Each checks its arguments when built and names
itself and the argument in its errors ("CropImage: size must be ...").

Images are numpy arrays: HWC uint8 (RGB by default) from `DecodeImage` until `NormalizeImage` (float32,
HWC or CHW by `order`). PIL images are accepted wherever an array is. Randomness comes from Python's
`random` and numpy's global generator, as in PaddleClas, so seeding both makes every op deterministic.
"""
from __future__ import annotations

import math
import random
import re
from typing import Any, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

from ..config import boolean, int_list, integer, number, one_of
from .autoaugment import ImageLike
from .decoding import DecodeImage, DecodeRandCrop
from .registries import TRANSFORM_OPS
from .resize import Resizer, as_array

_FRACTION = re.compile(r"^\s*([^/]+?)\s*/\s*([^/]+?)\s*$")


def _float_or_none(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def parse_number(value: Any, op: str, argument: str) -> float:
    """A finite number from a config value: an int/float, a numeric string, or a simple fraction string
    such as "1.0/255.0" (PaddleClas evaluates these with `eval`; this never evaluates code)."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        match = _FRACTION.match(value)
        if match is None:
            number = _float_or_none(value.strip())
        else:
            numerator, denominator = _float_or_none(match.group(1)), _float_or_none(match.group(2))
            if denominator == 0:
                raise ValueError(f"{op}: {argument}={value!r} divides by zero")
            if numerator is not None and denominator is not None:
                number = numerator / denominator
    if number is None or not math.isfinite(number):
        raise ValueError(f"{op}: {argument}={value!r} is not a number or a fraction like '1.0/255.0'")
    return number


def _image_size(img: ImageLike) -> Tuple[int, int]:
    """(width, height) of an HWC array or a PIL image."""
    if isinstance(img, Image.Image):
        return img.size
    return img.shape[1], img.shape[0]


_SIZE = "a positive int or [width, height] of positive ints"
_SIDE, _PAIR = integer(1, expected=_SIZE), int_list(2, 1, optional=False, expected=_SIZE)


def _size_pair(size: Any, op: str, argument: str = "size") -> Tuple[int, int]:
    """(width, height) from an int or a [width, height] pair, as PaddleClas passes `size` to the resize
    call."""
    if isinstance(size, (list, tuple)):
        width, height = _PAIR(size, f"{op}: {argument}")
        return int(width), int(height)
    side = int(_SIDE(size, f"{op}: {argument}"))
    return side, side


def _range_pair(value: Any, op: str, argument: str, low_limit: float = 0.0) -> Tuple[float, float]:
    """A (low, high) pair of numbers with low_limit < low <= high."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = (parse_number(v, op, argument) for v in value)
        if low_limit < low <= high:
            return low, high
    raise ValueError(f"{op}: {argument} must be [low, high] with {low_limit} < low <= high, got {value!r}")


def _number_list(values: Any, op: str, argument: str) -> list:
    """A list of numbers from a config list whose entries `parse_number` reads (e.g. NormalizeImage's mean)."""
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{op}: {argument} must be a list of numbers, got {values!r}")
    return [parse_number(v, op, argument) for v in values]


@TRANSFORM_OPS.register
class ResizeImage:
    """Resize to `size` ([width, height] or an int for a square), or so that the short side is
    `resize_short` keeping the aspect ratio (which takes precedence when > 0)."""

    def __init__(self, size: Union[int, Sequence[int], None] = None, resize_short: Optional[int] = None,
                 interpolation: Union[str, int, None] = None, backend: str = "cv2", return_numpy: bool = True):
        number(optional=True, expected="a positive int")(resize_short, "ResizeImage: resize_short")
        if resize_short is not None and resize_short > 0:
            self.resize_short: Optional[int] = int(resize_short)
            self.w = self.h = None
        elif size is not None:
            self.resize_short = None
            self.w, self.h = _size_pair(size, "ResizeImage")
        else:
            raise ValueError("ResizeImage: set size (int or [width, height]) or resize_short (int > 0); "
                             "both are unset")
        self.return_numpy = boolean(return_numpy, "ResizeImage: return_numpy")
        self._resize = Resizer(interpolation, backend, "ResizeImage")

    def __call__(self, img: ImageLike) -> ImageLike:
        if self.resize_short is not None:
            width, height = _image_size(img)
            scale = self.resize_short / min(width, height)
            size = (int(round(width * scale)), int(round(height * scale)))
        else:
            size = (self.w, self.h)
        return self._resize(img, size, self.return_numpy)


@TRANSFORM_OPS.register
class CropImage:
    """Centre crop of `size` ([width, height] or an int for a square)."""

    def __init__(self, size: Union[int, Sequence[int]]):
        self.size = _size_pair(size, "CropImage")

    def __call__(self, img: ImageLike) -> np.ndarray:
        array = as_array(img, "CropImage")
        width, height = self.size
        img_h, img_w = array.shape[:2]
        if img_h < height or img_w < width:
            raise ValueError(f"CropImage: crop size (width {width}, height {height}) is larger than the image "
                             f"(width {img_w}, height {img_h}); resize it first, e.g. ResizeImage resize_short")
        top = (img_h - height) // 2
        left = (img_w - width) // 2
        return array[top:top + height, left:left + width]


@TRANSFORM_OPS.register
class CropImageAtRatio:
    """Centre square crop of side int(min(h, w) * size / (size + pad)), resized to size x size: the
    EfficientNet evaluation crop (e.g. 384 with pad 32 keeps 92.3% of the short side)."""

    def __init__(self, size: int, pad: int, interpolation: Union[str, int, None] = "bilinear"):
        self.size = int(integer(1, expected="a positive int")(size, "CropImageAtRatio: size"))
        self.pad = int(integer(0, expected="an int >= 0")(pad, "CropImageAtRatio: pad"))
        self.ratio = self.size / (self.size + self.pad)
        self._resize = Resizer(interpolation, "cv2", "CropImageAtRatio")

    def __call__(self, img: ImageLike) -> np.ndarray:
        array = as_array(img, "CropImageAtRatio")
        height, width = array.shape[:2]
        side = max(1, int(self.ratio * min(height, width)))
        top = (height - side) // 2
        left = (width - side) // 2
        return self._resize(array[top:top + side, left:left + side], (self.size, self.size))


@TRANSFORM_OPS.register
class RandCropImage:
    """Random-resized crop (Inception style): a region of random area fraction in `scale` and aspect
    ratio (w/h) in `ratio`, resized to `size`. `size` may be reassigned between epochs; `progress_size`
    (per-stage sizes for progressive learning) is kept for the trainer."""

    def __init__(self, size: Union[int, Sequence[int]], progress_size: Optional[Sequence[int]] = None,
                 scale: Optional[Sequence[float]] = None, ratio: Optional[Sequence[float]] = None,
                 interpolation: Union[str, int, None] = None, use_log_aspect: bool = False, backend: str = "cv2"):
        _size_pair(size, "RandCropImage")
        self.size = size
        if progress_size is not None and not isinstance(progress_size, (list, tuple)):
            raise ValueError(f"RandCropImage: progress_size must be a list of sizes, one per stage, got {progress_size!r}")
        self.progress_size = None if progress_size is None else list(progress_size)
        for stage_size in self.progress_size or ():
            _size_pair(stage_size, "RandCropImage", "progress_size entry")
        self.scale = _range_pair([0.08, 1.0] if scale is None else scale, "RandCropImage", "scale")
        self.ratio = _range_pair([3.0 / 4.0, 4.0 / 3.0] if ratio is None else ratio, "RandCropImage", "ratio")
        self.use_log_aspect = boolean(use_log_aspect, "RandCropImage: use_log_aspect")
        self._resize = Resizer(interpolation, backend, "RandCropImage")
        self.backend = self._resize.backend

    @property
    def output_size(self) -> Tuple[int, int]:
        """(width, height) of the crops (`size` may change between epochs)."""
        return _size_pair(self.size, "RandCropImage")

    def draw_region(self, img_w: int, img_h: int) -> Tuple[int, int, int, int]:
        """A random (left, top, width, height) region of an img_w x img_h image; all the op's randomness."""
        if self.use_log_aspect:
            aspect = math.exp(random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        else:
            aspect = random.uniform(*self.ratio)
        bound = min((img_w / img_h) / aspect, (img_h / img_w) * aspect)
        area = img_w * img_h * random.uniform(min(self.scale[0], bound), min(self.scale[1], bound))
        width = min(img_w, max(1, int(math.sqrt(area * aspect))))
        height = min(img_h, max(1, int(math.sqrt(area / aspect))))
        left = random.randint(0, img_w - width)
        top = random.randint(0, img_h - height)
        return left, top, width, height

    def crop_resize(self, array: np.ndarray, region: Tuple[int, int, int, int]) -> np.ndarray:
        left, top, width, height = region
        return self._resize(array[top:top + height, left:left + width], self.output_size)

    def __call__(self, img: ImageLike) -> np.ndarray:
        array = as_array(img, "RandCropImage")
        return self.crop_resize(array, self.draw_region(array.shape[1], array.shape[0]))

    def fuse_with_decode(self, decode: DecodeImage) -> Optional[DecodeRandCrop]:
        """The decode-and-crop step that replaces `decode` then this op (see DecodeRandCrop), when `decode`
        hands off to a crop; None otherwise (Compose then runs the two ops in turn)."""
        return DecodeRandCrop(decode, self) if decode.hands_off_to_crop() else None


@TRANSFORM_OPS.register
class RandFlipImage:
    """Flip with probability 1/2: flip_code 1 horizontally, 0 vertically, -1 both (cv2.flip codes)."""

    def __init__(self, flip_code: int = 1):
        self.flip_code = int(one_of((1, 0, -1), expected="1 (horizontal), 0 (vertical) or -1 (both)")(
            flip_code, "RandFlipImage: flip_code"))

    def __call__(self, img: ImageLike) -> np.ndarray:
        array = as_array(img, "RandFlipImage")
        return cv2.flip(array, self.flip_code) if random.randint(0, 1) == 1 else array


@TRANSFORM_OPS.register
class NormalizeImage:
    """(img * scale - mean) / std per channel, as float32 (float16 with `output_fp16`). `order: chw`
    returns CHW (an HWC input, recognised by its last axis holding the channels, is transposed);
    any other order ('' or 'hwc') keeps HWC. `channel_num: 4` appends a zero channel."""

    ORDERS = ("chw", "hwc", "")

    def __init__(self, scale: Union[float, str, None] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, order: str = "chw", output_fp16: bool = False,
                 channel_num: int = 3):
        self.scale = parse_number(1.0 / 255.0 if scale is None else scale, "NormalizeImage", "scale")
        mean = [0.485, 0.456, 0.406] if mean is None else mean
        std = [0.229, 0.224, 0.225] if std is None else std
        mean = _number_list(mean, "NormalizeImage", "mean")
        std = _number_list(std, "NormalizeImage", "std")
        if len(mean) != len(std) or not mean:
            raise ValueError(f"NormalizeImage: mean and std must have one value per channel, got {len(mean)} "
                             f"means and {len(std)} stds")
        if any(s == 0 for s in std):
            raise ValueError(f"NormalizeImage: std must not contain 0, got {std}")
        one_of(self.ORDERS, expected="'chw', 'hwc' or '' (= hwc)")(order, "NormalizeImage: order")
        self.mean, self.std, self.order = mean, std, order
        self.channel_num = int(one_of((3, 4), expected="3 or 4")(channel_num, "NormalizeImage: channel_num"))
        self.output_dtype = np.float16 if boolean(output_fp16, "NormalizeImage: output_fp16") else np.float32
        # (x * scale - mean) / std folded into one multiply and one add, applied channels-first: on a
        # contiguous CHW copy the per-channel constants broadcast over long rows (~5x faster than over
        # HWC's 3-long rows); an HWC result is a transposed view of that CHW array
        self._mul = (self.scale / np.asarray(std, dtype=np.float64)).astype(np.float32).reshape(-1, 1, 1)
        self._add = (-np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)).astype(
            np.float32).reshape(-1, 1, 1)

    def affine(self) -> Tuple[np.ndarray, np.ndarray]:
        """(multiplier, offset), float32 of shape (C, 1, 1): the op computes x * multiplier + offset."""
        return self._mul.copy(), self._add.copy()

    def _to_float_chw(self, array: np.ndarray) -> np.ndarray:
        """A fresh contiguous float32 CHW copy of an HWC (or, with order chw, CHW) image."""
        channels = len(self.mean)
        if array.ndim == 3 and array.shape[2] == channels:
            return np.ascontiguousarray(array.transpose((2, 0, 1))).astype(np.float32)
        if array.ndim == 3 and self.order == "chw" and array.shape[0] == channels:
            return array.astype(np.float32)
        if array.ndim != 3:
            raise ValueError(f"NormalizeImage: expected a 3-D image, got shape {array.shape}")
        layout = "HWC or CHW" if self.order == "chw" else "HWC"
        raise ValueError(f"NormalizeImage: expected a {layout} image with {channels} channels, got shape {array.shape}")

    def __call__(self, img: ImageLike) -> np.ndarray:
        out = self._to_float_chw(as_array(img, "NormalizeImage"))
        out *= self._mul
        out += self._add
        if self.channel_num == 4:
            out = np.concatenate((out, np.zeros((1,) + out.shape[1:], dtype=np.float32)), axis=0)
        if self.output_dtype is not np.float32:
            out = out.astype(self.output_dtype)
        return out if self.order == "chw" else out.transpose((1, 2, 0))


@TRANSFORM_OPS.register
class ToCHWImage:
    """HWC -> CHW (a transposed view, no copy)."""

    def __call__(self, img: ImageLike) -> np.ndarray:
        array = as_array(img, "ToCHWImage")
        if array.ndim != 3:
            raise ValueError(f"ToCHWImage: expected an HWC image, got shape {array.shape}")
        return array.transpose((2, 0, 1))


@TRANSFORM_OPS.register
class RandomErasing:
    """Random Erasing (arXiv:1708.04896): with probability EPSILON, overwrite one rectangle of area
    fraction in [sl, sh] and aspect ratio in [r1, 1/r1] with `mean` (mode 'const'), one random normal
    colour ('rand') or per-pixel normal noise ('pixel'). Works on HWC images, usually after
    NormalizeImage; the input array is modified in place when it is writeable."""

    MODES = ("const", "rand", "pixel")

    def __init__(self, EPSILON: Union[float, str] = 0.5, sl: Union[float, str] = 0.02, sh: Union[float, str] = 0.4,
                 r1: Union[float, str] = 0.3, mean: Sequence[float] = (0.0, 0.0, 0.0), attempt: int = 100,
                 use_log_aspect: bool = False, mode: str = "const"):
        self.EPSILON = parse_number(EPSILON, "RandomErasing", "EPSILON")
        self.sl = parse_number(sl, "RandomErasing", "sl")
        self.sh = parse_number(sh, "RandomErasing", "sh")
        r1 = parse_number(r1, "RandomErasing", "r1")
        if not 0.0 <= self.EPSILON <= 1.0:
            raise ValueError(f"RandomErasing: EPSILON is a probability in [0, 1], got {EPSILON!r}")
        if not 0.0 < self.sl <= self.sh <= 1.0:
            raise ValueError(f"RandomErasing: need 0 < sl <= sh <= 1, got sl={sl!r}, sh={sh!r}")
        if r1 <= 0:
            raise ValueError(f"RandomErasing: r1 must be > 0, got {r1!r}")
        one_of(self.MODES)(mode, "RandomErasing: mode")
        self.attempt = int(integer(0, expected="an int >= 0")(attempt, "RandomErasing: attempt"))
        self.use_log_aspect = boolean(use_log_aspect, "RandomErasing: use_log_aspect")
        self.r1 = (math.log(r1), math.log(1.0 / r1)) if use_log_aspect else (r1, 1.0 / r1)
        self.mean = np.asarray(_number_list(mean, "RandomErasing", "mean"), dtype=np.float32)
        self.mode = mode

    def _fill(self, height: int, width: int, channels: int) -> np.ndarray:
        if self.mode == "rand":
            return np.random.normal(size=(1, 1, channels))
        if self.mode == "pixel":
            return np.random.normal(size=(height, width, channels))
        if self.mean.size not in (1, channels):
            raise ValueError(f"RandomErasing: mean has {self.mean.size} values for an image with {channels} channels")
        return self.mean

    def __call__(self, img: ImageLike) -> np.ndarray:
        array = as_array(img, "RandomErasing")
        if array.ndim != 3:
            raise ValueError(f"RandomErasing: expected an HWC image, got shape {array.shape}")
        if random.random() > self.EPSILON:
            return array
        img_h, img_w, channels = array.shape
        for _ in range(self.attempt):
            target_area = random.uniform(self.sl, self.sh) * img_h * img_w
            aspect = random.uniform(*self.r1)
            if self.use_log_aspect:
                aspect = math.exp(aspect)
            height = int(round(math.sqrt(target_area * aspect)))
            width = int(round(math.sqrt(target_area / aspect)))
            if width < img_w and height < img_h:
                fill = self._fill(height, width, channels)
                top = random.randint(0, img_h - height)
                left = random.randint(0, img_w - width)
                if not array.flags.writeable:
                    array = array.copy()
                array[top:top + height, left:left + width] = fill
                return array
        return array

