"""Decoding image files for the transform pipeline: PaddleClas's `DecodeImage` op, and the step that decodes
a JPEG and crops it at once (`DecodeRandCrop`, which an op following DecodeImage may offer to Compose): the
crop is drawn from the JPEG's header, then only as many pixels as it needs are decoded (libjpeg's DCT
scaling), by Pillow where it decodes exactly as OpenCV does. File formats and their pitfalls live in
`image_io`."""
from __future__ import annotations

import functools
import io
from typing import NamedTuple, Optional, Protocol, Tuple

import cv2
import numpy as np
from PIL import Image

from ..config import boolean, integer, one_of
from .autoaugment import ImageLike
from .image_io import BACKENDS, DEFAULT_MAX_PIXELS, check_pixel_count, decode_image, read_jpeg_frame
from .registries import TRANSFORM_OPS

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


_BACKEND = one_of(BACKENDS, expected="'cv2' or 'pil'")


@TRANSFORM_OPS.register
class DecodeImage:
    """Decode the bytes of an image file into an HWC uint8 array: RGB when `to_rgb` (else BGR), CHW when
    `channel_first`, a PIL RGB image when not `to_np`. Any reasonable file decodes, upright (EXIF
    orientation), with transparent pixels composited onto white, 16-bit samples reduced to 8 bits and
    CMYK converted (see `image_io`); the default cv2 backend gives ordinary JPEG/PNG exactly the pixels
    of cv2.imdecode as PaddleClas does. A file that cannot be decoded, or with more than `max_pixels`
    pixels (checked from its header before decoding), raises ValueError("cannot decode image: ...")."""

    def __init__(self, to_np: bool = True, to_rgb: bool = True, channel_first: bool = False, backend: str = "cv2",
                 max_pixels: int = DEFAULT_MAX_PIXELS, reduced_decode: bool = True):
        self.to_np = boolean(to_np, "DecodeImage: to_np")
        self.to_rgb = boolean(to_rgb, "DecodeImage: to_rgb")
        self.channel_first = boolean(channel_first, "DecodeImage: channel_first")
        self.backend = _BACKEND(backend.lower() if isinstance(backend, str) else backend, "DecodeImage: backend")
        self.max_pixels = int(integer(1, expected="a positive int")(max_pixels, "DecodeImage: max_pixels"))
        #: when a RandCropImage follows, decode JPEGs at the smallest libjpeg scale that keeps the crop at
        #: least at its output size (see DecodeRandCrop)
        self.reduced_decode = boolean(reduced_decode, "DecodeImage: reduced_decode")

    def hands_off_to_crop(self) -> bool:
        """Whether an op that crops a region may take the decoding over (see DecodeRandCrop): HWC arrays
        from OpenCV."""
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


class RegionCrop(Protocol):
    """What DecodeRandCrop needs of the crop it runs (RandCropImage): its random region of an image of a
    given size, and the resize of a region of decoded pixels to its output size."""

    backend: str

    @property
    def output_size(self) -> Tuple[int, int]: ...

    def draw_region(self, img_w: int, img_h: int) -> Tuple[int, int, int, int]: ...

    def crop_resize(self, array: np.ndarray, region: Tuple[int, int, int, int]) -> np.ndarray: ...

    def __call__(self, img: ImageLike) -> np.ndarray: ...


class DecodeRandCrop:
    """DecodeImage then RandCropImage as one step (RandCropImage offers it to Compose when it follows a
    DecodeImage that hands off; both ops keep their settings and stay findable). The crop is drawn from the JPEG's header size, with the same random draws as the two
    ops in turn, before decoding, so that

    - the JPEG is decoded at the smallest libjpeg DCT scale (1/2, 1/4, 1/8; OpenCV's IMREAD_REDUCED_*)
      at which the crop still has at least its output size, when DecodeImage's `reduced_decode` is on;
      the resize then starts from fewer pixels (interpolation rounding aside, the same crop);
    - plain upright JPEGs are decoded by Pillow straight to RGB where it gives exactly OpenCV's pixels
      (`pillow_decodes_like_opencv`), else by OpenCV, with the BGR -> RGB conversion on the output crop
      instead of the whole image; at full scale the pixels are exactly the two ops' (tested).

    Files other than grey or colour JPEGs (and the pil backend) take the two ops' ordinary path."""

    def __init__(self, decode: DecodeImage, crop: RegionCrop):
        self.decode, self.crop = decode, crop

    def __call__(self, data: bytes) -> np.ndarray:
        layout = self.decode.jpeg_layout(data) if isinstance(data, (bytes, bytearray, memoryview)) else None
        if layout is None or self.crop.backend != "cv2":
            return self.crop(self.decode(data))
        img_w, img_h = layout.upright_size
        left, top, width, height = self.crop.draw_region(img_w, img_h)
        out_w, out_h = self.crop.output_size
        factor = reduction_factor(width, height, out_w, out_h) if self.decode.reduced_decode else 1
        pixels, is_rgb = decode_jpeg_scaled(bytes(data), layout, factor)
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


def decode_jpeg_scaled(data: bytes, layout: JpegLayout, factor: int) -> Tuple[Optional[np.ndarray], bool]:
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


