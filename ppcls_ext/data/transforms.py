"""PaddleClas's image transform operators (same names, arguments and defaults), the op registry, and the
builder for a `transform_ops` list.

Images are numpy arrays: `DecodeImage` turns file bytes into HWC uint8 (RGB by default); every later op
takes and returns HWC uint8 until `NormalizeImage` (float32, HWC or CHW by `order`). PIL images are
accepted wherever an array is. Randomness comes from Python's `random` and numpy's global generator,
as in PaddleClas, so seeding both makes every op deterministic.
"""
from __future__ import annotations

import functools
import inspect
import io
import math
import random
import re
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

from ..config import ConfigError, single_entry, unknown_name
from .autoaugment import AutoAugment, ImageLike
from .image_io import BACKENDS, DEFAULT_MAX_PIXELS, check_pixel_count, decode_image, read_jpeg_frame
from .randaugment import RandAugment, RandAugmentV2

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


def _as_array(img: ImageLike, op: str) -> np.ndarray:
    """The image as a numpy array (a PIL image is converted; an array passes through uncopied)."""
    if isinstance(img, np.ndarray):
        return img
    if isinstance(img, Image.Image):
        return np.asarray(img)
    raise TypeError(f"{op}: expected an image as a numpy array or PIL image, got {type(img).__name__}")


def _image_size(img: ImageLike) -> Tuple[int, int]:
    """(width, height) of an HWC array or a PIL image."""
    if isinstance(img, Image.Image):
        return img.size
    return img.shape[1], img.shape[0]


def _size_pair(size: Any, op: str, argument: str = "size") -> Tuple[int, int]:
    """(width, height) from an int or a [width, height] pair, as PaddleClas passes `size` to the resize
    call."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0:
        return int(size), int(size)
    if (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)):
        return int(size[0]), int(size[1])
    raise ValueError(f"{op}: {argument} must be a positive int or [width, height] of positive ints, got {size!r}")


def _range_pair(value: Any, op: str, argument: str, low_limit: float = 0.0) -> Tuple[float, float]:
    """A (low, high) pair of numbers with low_limit < low <= high."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = (parse_number(v, op, argument) for v in value)
        if low_limit < low <= high:
            return low, high
    raise ValueError(f"{op}: {argument} must be [low, high] with {low_limit} < low <= high, got {value!r}")


class Resizer:
    """Resize with cv2 or PIL by interpolation name, as PaddleClas's UnifiedResize: 'random' picks
    bilinear or bicubic per call; None is bilinear; an int is used as the backend's own flag."""

    CV2 = {
        "nearest": (cv2.INTER_NEAREST,),
        "bilinear": (cv2.INTER_LINEAR,),
        "area": (cv2.INTER_AREA,),
        "bicubic": (cv2.INTER_CUBIC,),
        "lanczos": (cv2.INTER_LANCZOS4,),
        "random": (cv2.INTER_LINEAR, cv2.INTER_CUBIC),
    }
    PIL = {
        "nearest": (Image.Resampling.NEAREST,),
        "bilinear": (Image.Resampling.BILINEAR,),
        "bicubic": (Image.Resampling.BICUBIC,),
        "box": (Image.Resampling.BOX,),
        "lanczos": (Image.Resampling.LANCZOS,),
        "hamming": (Image.Resampling.HAMMING,),
        "random": (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC),
    }

    def __init__(self, interpolation: Union[str, int, None], backend: str, op: str):
        if not isinstance(backend, str) or backend.lower() not in ("cv2", "pil"):
            raise ValueError(f"{op}: backend must be 'cv2' or 'pil', got {backend!r}")
        self.backend = backend.lower()
        table = self.CV2 if self.backend == "cv2" else self.PIL
        if interpolation is None:
            self.flags = table["bilinear"]
        elif isinstance(interpolation, (int, np.integer)) and not isinstance(interpolation, bool):
            self.flags = (int(interpolation),)
        elif isinstance(interpolation, str) and interpolation.lower() in table:
            self.flags = table[interpolation.lower()]
        else:
            raise ValueError(f"{op}: interpolation {interpolation!r} is not available with backend "
                             f"{self.backend!r}; expected one of {', '.join(table)} or null")

    def __call__(self, img: ImageLike, size: Tuple[int, int], return_numpy: bool = True) -> ImageLike:
        """`img` resized to size = (width, height)."""
        flag = self.flags[0] if len(self.flags) == 1 else random.choice(self.flags)
        if self.backend == "cv2":
            return cv2.resize(_as_array(img, "resize"), size, interpolation=flag)
        pil = img if isinstance(img, Image.Image) else Image.fromarray(img)
        resized = pil.resize(size, flag)
        return np.asarray(resized) if return_numpy else resized


_EXIF = b"Exif\x00\x00"
_EXIF_SEARCH = 1 << 16  # the APP1 segment holding EXIF comes right after the start of a JPEG; at most 64 KiB
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
#: OpenCV's decode flags for a libjpeg DCT scale of 1/factor (the colour conversion is done after the crop)
_REDUCED_DECODE = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                   8: cv2.IMREAD_REDUCED_COLOR_8}


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of an image file (1, upright, when absent or unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # an unreadable EXIF block: OpenCV then ignores it too
        return 1


class JpegLayout(NamedTuple):
    """A JPEG's stored size and its EXIF orientation (1: stored upright)."""

    width: int
    height: int
    orientation: int

    @property
    def upright_size(self) -> Tuple[int, int]:
        """(width, height) of the image as displayed (EXIF orientations 5-8 swap the axes)."""
        if self.orientation in _TRANSPOSING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


@functools.lru_cache(maxsize=None)
def pillow_decodes_like_opencv() -> bool:
    """Whether Pillow's JPEG decoder gives exactly OpenCV's pixels (both libjpeg-turbo, same IDCT and
    chroma upsampling; Pillow returns RGB directly and was ~15% faster here): checked once on a
    generated colour JPEG with subsampled chroma."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 56, dtype=np.float64)[None, :, None] * np.ones((40, 1, 3))
    image = np.clip(ramp + rng.normal(0, 40, (40, 56, 3)), 0, 255).astype(np.uint8)
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    opencv = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with Image.open(io.BytesIO(data)) as decoded:
        return bool(np.array_equal(np.asarray(decoded.convert("RGB")), opencv))


def reduction_factor(crop_width: int, crop_height: int, out_width: int, out_height: int) -> int:
    """The largest libjpeg DCT scale-down (8, 4, 2 or 1) after which a crop of crop_width x crop_height
    is still at least out_width x out_height: decoding at that scale loses nothing the resize keeps."""
    for factor in (8, 4, 2):
        if crop_width >= factor * out_width and crop_height >= factor * out_height:
            return factor
    return 1


class DecodeImage:
    """Decode the bytes of an image file into an HWC uint8 array: RGB when `to_rgb` (else BGR), CHW when
    `channel_first`, a PIL RGB image when not `to_np`. Any reasonable file decodes, upright (EXIF
    orientation), with transparent pixels composited onto white, 16-bit samples reduced to 8 bits and
    CMYK converted (see `image_io`); the default cv2 backend gives ordinary JPEG/PNG exactly the pixels
    of cv2.imdecode as PaddleClas does. A file that cannot be decoded, or with more than `max_pixels`
    pixels (checked from its header before decoding), raises ValueError("cannot decode image: ...")."""

    def __init__(self, to_np: bool = True, to_rgb: bool = True, channel_first: bool = False, backend: str = "cv2",
                 max_pixels: int = DEFAULT_MAX_PIXELS, reduced_decode: bool = True):
        if not isinstance(backend, str) or backend.lower() not in BACKENDS:
            raise ValueError(f"DecodeImage: backend must be 'cv2' or 'pil', got {backend!r}")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
            raise ValueError(f"DecodeImage: max_pixels must be a positive int, got {max_pixels!r}")
        if not isinstance(reduced_decode, bool):
            raise ValueError(f"DecodeImage: reduced_decode must be true or false, got {reduced_decode!r}")
        self.to_np = to_np
        self.to_rgb = to_rgb
        self.channel_first = channel_first
        self.backend = backend.lower()
        self.max_pixels = int(max_pixels)
        #: when a RandCropImage follows, decode JPEGs at the smallest libjpeg scale that keeps the crop at
        #: least at its output size (see DecodeRandCrop)
        self.reduced_decode = reduced_decode

    def hands_off_to_crop(self) -> bool:
        """Whether a following RandCropImage may take over (see DecodeRandCrop): HWC arrays from OpenCV."""
        return self.to_np and not self.channel_first and self.backend == "cv2"

    def jpeg_layout(self, data: bytes) -> Optional["JpegLayout"]:
        """Stored size and EXIF orientation if `data` is a JPEG that OpenCV decodes directly (grey or colour,
        complete), from its headers alone; None for every other file. Over `max_pixels`: ValueError."""
        frame = read_jpeg_frame(data)
        if frame is None or frame.components not in (1, 3) or not frame.complete:
            return None
        check_pixel_count("JPEG", frame.width, frame.height, self.max_pixels)
        orientation = _exif_orientation(data) if _EXIF in data[:_EXIF_SEARCH] else 1
        return JpegLayout(frame.width, frame.height, orientation)

    def __call__(self, img: bytes) -> ImageLike:
        if not isinstance(img, (bytes, bytearray, memoryview)):
            raise TypeError(f"DecodeImage: expected the bytes of an image file, got {type(img).__name__}")
        array = decode_image(bytes(img), self.backend, self.max_pixels, to_rgb=self.to_rgb or not self.to_np)
        if not self.to_np:
            return Image.fromarray(array)
        return array.transpose((2, 0, 1)) if self.channel_first else array


class ResizeImage:
    """Resize to `size` ([width, height] or an int for a square), or so that the short side is
    `resize_short` keeping the aspect ratio (which takes precedence when > 0)."""

    def __init__(self, size: Union[int, Sequence[int], None] = None, resize_short: Optional[int] = None,
                 interpolation: Union[str, int, None] = None, backend: str = "cv2", return_numpy: bool = True):
        if resize_short is not None and (isinstance(resize_short, bool) or not isinstance(resize_short, (int, float))):
            raise ValueError(f"ResizeImage: resize_short must be a positive int, got {resize_short!r}")
        if resize_short is not None and resize_short > 0:
            self.resize_short: Optional[int] = int(resize_short)
            self.w = self.h = None
        elif size is not None:
            self.resize_short = None
            self.w, self.h = _size_pair(size, "ResizeImage")
        else:
            raise ValueError("ResizeImage: set size (int or [width, height]) or resize_short (int > 0); "
                             "both are unset")
        self.return_numpy = return_numpy
        self._resize = Resizer(interpolation, backend, "ResizeImage")

    def __call__(self, img: ImageLike) -> ImageLike:
        if self.resize_short is not None:
            width, height = _image_size(img)
            scale = self.resize_short / min(width, height)
            size = (int(round(width * scale)), int(round(height * scale)))
        else:
            size = (self.w, self.h)
        return self._resize(img, size, self.return_numpy)


class CropImage:
    """Centre crop of `size` ([width, height] or an int for a square)."""

    def __init__(self, size: Union[int, Sequence[int]]):
        self.size = _size_pair(size, "CropImage")

    def __call__(self, img: ImageLike) -> np.ndarray:
        array = _as_array(img, "CropImage")
        width, height = self.size
        img_h, img_w = array.shape[:2]
        if img_h < height or img_w < width:
            raise ValueError(f"CropImage: crop size (width {width}, height {height}) is larger than the image "
                             f"(width {img_w}, height {img_h}); resize it first, e.g. ResizeImage resize_short")
        top = (img_h - height) // 2
        left = (img_w - width) // 2
        return array[top:top + height, left:left + width]


class CropImageAtRatio:
    """Centre square crop of side int(min(h, w) * size / (size + pad)), resized to size x size: the
    EfficientNet evaluation crop (e.g. 384 with pad 32 keeps 92.3% of the short side)."""

    def __init__(self, size: int, pad: int, interpolation: Union[str, int, None] = "bilinear"):
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"CropImageAtRatio: size must be a positive int, got {size!r}")
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"CropImageAtRatio: pad must be an int >= 0, got {pad!r}")
        self.size = size
        self.pad = pad
        self.ratio = size / (size + pad)
        self._resize = Resizer(interpolation, "cv2", "CropImageAtRatio")

    def __call__(self, img: ImageLike) -> np.ndarray:
        array = _as_array(img, "CropImageAtRatio")
        height, width = array.shape[:2]
        side = max(1, int(self.ratio * min(height, width)))
        top = (height - side) // 2
        left = (width - side) // 2
        return self._resize(array[top:top + side, left:left + side], (self.size, self.size))


class RandCropImage:
    """Random-resized crop (Inception style): a region of random area fraction in `scale` and aspect
    ratio (w/h) in `ratio`, resized to `size`. `size` may be reassigned between epochs; `progress_size`
    (per-stage sizes for progressive learning) is kept for the trainer."""

    def __init__(self, size: Union[int, Sequence[int]], progress_size: Optional[Sequence[int]] = None,
                 scale: Optional[Sequence[float]] = None, ratio: Optional[Sequence[float]] = None,
                 interpolation: Union[str, int, None] = None, use_log_aspect: bool = False, backend: str = "cv2"):
        _size_pair(size, "RandCropImage")
        self.size = size
        self.progress_size = None if progress_size is None else list(progress_size)
        if self.progress_size is not None:
            for stage_size in self.progress_size:
                _size_pair(stage_size, "RandCropImage", "progress_size entry")
        self.scale = _range_pair([0.08, 1.0] if scale is None else scale, "RandCropImage", "scale")
        self.ratio = _range_pair([3.0 / 4.0, 4.0 / 3.0] if ratio is None else ratio, "RandCropImage", "ratio")
        self.use_log_aspect = use_log_aspect
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
        array = _as_array(img, "RandCropImage")
        return self.crop_resize(array, self.draw_region(array.shape[1], array.shape[0]))


class DecodeRandCrop:
    """DecodeImage then RandCropImage as one step (Compose plans it; both ops keep their settings and
    stay findable). The crop is drawn from the JPEG's header size, with the same random draws as the two
    ops in turn, before decoding, so that

    - the JPEG is decoded at the smallest libjpeg DCT scale (1/2, 1/4, 1/8; OpenCV's IMREAD_REDUCED_*)
      at which the crop still has at least its output size, when DecodeImage's `reduced_decode` is on;
      the resize then starts from fewer pixels (interpolation rounding aside, the same crop);
    - plain upright JPEGs are decoded by Pillow straight to RGB where it gives exactly OpenCV's pixels
      (`pillow_decodes_like_opencv`), else by OpenCV, with the BGR -> RGB conversion on the output crop
      instead of the whole image; at full scale the pixels are exactly the two ops' (tested).

    Files other than grey or colour JPEGs (and the pil backend) take the two ops' ordinary path."""

    def __init__(self, decode: DecodeImage, crop: "RandCropImage"):
        self.decode, self.crop = decode, crop

    def __call__(self, data: bytes) -> np.ndarray:
        layout = self.decode.jpeg_layout(data) if isinstance(data, (bytes, bytearray, memoryview)) else None
        if layout is None or self.crop.backend != "cv2":
            return self.crop(self.decode(data))
        img_w, img_h = layout.upright_size
        left, top, width, height = self.crop.draw_region(img_w, img_h)
        out_w, out_h = self.crop.output_size
        factor = reduction_factor(width, height, out_w, out_h) if self.decode.reduced_decode else 1
        pixels, is_rgb = self._decode(bytes(data), layout, factor)
        if pixels is None or pixels.shape[:2] != (-(-img_h // factor), -(-img_w // factor)):
            array = self.decode(data)  # raises the decoder's own error; else its size decides
            if array.shape[:2] != (img_h, img_w):
                return self.crop(array)
            return self.crop.crop_resize(array, (left, top, width, height))
        if factor > 1:  # the region on the reduced image: same edges, rounded to its pixel grid
            right, bottom = (left + width + factor // 2) // factor, (top + height + factor // 2) // factor
            left, top = (left + factor // 2) // factor, (top + factor // 2) // factor
            width, height = max(1, right - left), max(1, bottom - top)
        out = self.crop.crop_resize(pixels, (left, top, width, height))
        if is_rgb != self.decode.to_rgb:
            out = cv2.cvtColor(out, cv2.COLOR_RGB2BGR if is_rgb else cv2.COLOR_BGR2RGB)
        return out

    @staticmethod
    def _decode(data: bytes, layout: JpegLayout, factor: int) -> Tuple[Optional[np.ndarray], bool]:
        """(pixels at 1/factor scale, whether they are RGB): Pillow's RGB for JPEGs stored upright where it
        decodes exactly as OpenCV does, else OpenCV's BGR (which applies the EXIF orientation)."""
        if layout.orientation == 1 and pillow_decodes_like_opencv():
            try:
                with Image.open(io.BytesIO(data)) as image:
                    if factor > 1:
                        image.draft(image.mode, (layout.width // factor, layout.height // factor))
                    return np.asarray(image if image.mode == "RGB" else image.convert("RGB")), True
            except Exception:  # whatever Pillow refuses, OpenCV decodes (or reports) below
                pass
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED_DECODE[factor]), False


class RandFlipImage:
    """Flip with probability 1/2: flip_code 1 horizontally, 0 vertically, -1 both (cv2.flip codes)."""

    def __init__(self, flip_code: int = 1):
        if flip_code not in (-1, 0, 1) or isinstance(flip_code, bool):
            raise ValueError(f"RandFlipImage: flip_code must be 1 (horizontal), 0 (vertical) or -1 (both), "
                             f"got {flip_code!r}")
        self.flip_code = flip_code

    def __call__(self, img: ImageLike) -> np.ndarray:
        array = _as_array(img, "RandFlipImage")
        return cv2.flip(array, self.flip_code) if random.randint(0, 1) == 1 else array


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
        mean = [parse_number(v, "NormalizeImage", "mean") for v in mean]
        std = [parse_number(v, "NormalizeImage", "std") for v in std]
        if len(mean) != len(std) or not mean:
            raise ValueError(f"NormalizeImage: mean and std must have one value per channel, got {len(mean)} "
                             f"means and {len(std)} stds")
        if any(s == 0 for s in std):
            raise ValueError(f"NormalizeImage: std must not contain 0, got {std}")
        if order not in self.ORDERS:
            raise ValueError(f"NormalizeImage: order must be 'chw', 'hwc' or '' (= hwc), got {order!r}")
        if channel_num not in (3, 4):
            raise ValueError(f"NormalizeImage: channel_num must be 3 or 4, got {channel_num!r}")
        self.mean, self.std, self.order = mean, std, order
        self.channel_num = channel_num
        self.output_dtype = np.float16 if output_fp16 else np.float32
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
        out = self._to_float_chw(_as_array(img, "NormalizeImage"))
        out *= self._mul
        out += self._add
        if self.channel_num == 4:
            out = np.concatenate((out, np.zeros((1,) + out.shape[1:], dtype=np.float32)), axis=0)
        if self.output_dtype is not np.float32:
            out = out.astype(self.output_dtype)
        return out if self.order == "chw" else out.transpose((1, 2, 0))


class ToCHWImage:
    """HWC -> CHW (a transposed view, no copy)."""

    def __call__(self, img: ImageLike) -> np.ndarray:
        array = _as_array(img, "ToCHWImage")
        if array.ndim != 3:
            raise ValueError(f"ToCHWImage: expected an HWC image, got shape {array.shape}")
        return array.transpose((2, 0, 1))


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
        if mode not in self.MODES:
            raise ValueError(f"RandomErasing: mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"RandomErasing: attempt must be an int >= 0, got {attempt!r}")
        self.use_log_aspect = use_log_aspect
        self.r1 = (math.log(r1), math.log(1.0 / r1)) if use_log_aspect else (r1, 1.0 / r1)
        self.mean = np.asarray([parse_number(v, "RandomErasing", "mean") for v in mean], dtype=np.float32)
        self.attempt = attempt
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
        array = _as_array(img, "RandomErasing")
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


TRANSFORM_OPS: Dict[str, type] = {
    cls.__name__: cls
    for cls in (DecodeImage, ResizeImage, CropImage, CropImageAtRatio, RandCropImage, RandFlipImage,
                NormalizeImage, ToCHWImage, AutoAugment, RandAugment, RandAugmentV2, RandomErasing)
}


class Compose:
    """Apply ops in order. `find(op_type)` returns the ops of a class, so callers (e.g. a progressive
    schedule changing `RandCropImage.size`) never depend on positions."""

    def __init__(self, ops: Iterable[Any]):
        self.ops: List[Any] = list(ops)
        self.steps: List[Any] = self._plan(self.ops)

    @staticmethod
    def _plan(ops: List[Any]) -> List[Any]:
        """The ops as run: a DecodeImage directly followed by a RandCropImage becomes one DecodeRandCrop."""
        steps: List[Any] = []
        for op in ops:
            if (isinstance(op, RandCropImage) and steps and isinstance(steps[-1], DecodeImage)
                    and steps[-1].hands_off_to_crop()):
                steps[-1] = DecodeRandCrop(steps[-1], op)
            else:
                steps.append(op)
        return steps

    def __call__(self, img: Any) -> Any:
        for step in self.steps:
            img = step(img)
        return img

    def find(self, op_type: type) -> List[Any]:
        return [op for op in self.ops if isinstance(op, op_type)]

    def __repr__(self) -> str:
        return f"Compose([{', '.join(type(op).__name__ for op in self.ops)}])"


def build_op(kind: str, registry: Mapping[str, type], item: Any, where: str, **injected: Any) -> Any:
    """One op from a PaddleClas list entry `{Name: {args}}`, with `injected` arguments added (e.g. the
    batch ops' class_num). Unknown names, unknown or missing arguments and rejected values become a
    ConfigError that names `where`."""
    name, args = single_entry(item, where)
    if name not in registry:
        raise unknown_name(kind, name, list(registry), where)
    cls = registry[name]
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(args) - set(parameters)) if not takes_any else []
    if unknown:
        valid = [p for p in parameters if p not in injected]
        raise ConfigError(f"{where}: {name} has no argument {', '.join(map(repr, unknown))}; "
                          f"valid: {', '.join(valid) or '(none)'}")
    arguments = {**args, **injected}
    missing = [p.name for p in parameters.values()
               if p.default is inspect.Parameter.empty and p.name not in arguments
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if missing:
        raise ConfigError(f"{where}: {name} needs argument {', '.join(map(repr, missing))}")
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error


def build_transforms(op_configs: Optional[list], where: str) -> Compose:
    """A Compose from PaddleClas's `transform_ops` list, e.g. [{"DecodeImage": {"to_rgb": True}},
    {"ToCHWImage": None}]; `where` is the config path used in error messages."""
    if op_configs is None:
        return Compose([])
    if not isinstance(op_configs, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of ops like [{{DecodeImage: {{...}}}}, ...], got {op_configs!r}")
    return Compose(build_op("transform op", TRANSFORM_OPS, item, f"{where}[{index}]")
                   for index, item in enumerate(op_configs))
