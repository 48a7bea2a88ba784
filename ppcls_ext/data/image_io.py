"""Decode the bytes of an image file into an HxWx3 uint8 array, or reject the file with
`ValueError("cannot decode image: ...")` naming what is wrong (format, size and pixel mode where known),
so that a caller can report one bad file and go on with the others.

How a file is read:

- The header is read first, without the pixels: a JPEG's frame header by `read_jpeg_frame` (a few
  microseconds; the common case), any other file by Pillow (`Image.open` is lazy). So a file with too many
  pixels is rejected before anything large is allocated, and the header decides which decoder is right.
- Backend "cv2" (PaddleClas's default): files that `cv2.imdecode(..., IMREAD_COLOR)` decodes correctly —
  complete grey or colour JPEGs, and PNG, BMP and WebP with grey, palette or RGB pixels and no
  transparency — go to OpenCV alone, so their pixels are exactly what PaddleClas's own decoder gives.
  Everything else (alpha, CMYK, GIF, TIFF, PPM/PGM, WebP carrying EXIF, files OpenCV refuses) is decoded
  by Pillow with the conversions below.
- Backend "pil": Pillow decodes every file, with the same conversions; PNG results equal the cv2 backend's.

Conversions, the same for both backends:

- EXIF orientation is applied, so the array is the upright image.
- Transparency (an alpha channel, or a tRNS / GIF transparent colour) is composited onto white:
  a transparent pixel becomes white, whatever colour happens to be stored under it; a fully opaque
  pixel keeps its exact colour.
- 16-bit samples keep their high byte (v >> 8: 65535 -> 255, 32768 -> 128), as libpng's 16-to-8
  reduction in OpenCV and Pillow's 16-bit RGB modes do, so both backends agree.
- CMYK JPEGs are inverted-polarity CMYK when they carry Adobe's APP14 marker (what Photoshop and Pillow
  write) and plain CMYK otherwise (as browsers read them), then converted to RGB.
- Animated files (GIF, APNG, WebP) give their first frame.

Files are rejected when they are empty, not a recognised image format, over the pixel limit, or cut
short (a JPEG with no end-of-image marker after its scans, a PNG whose pixel data is incomplete): OpenCV
would return the missing part of a truncated JPEG as grey, which this refuses. A JPEG whose scan data
libjpeg finds corrupt or incomplete although the file ends properly (a download cut short and closed
with an end marker, damaged data) is rejected too: libjpeg only warns on stderr ("Corrupt JPEG data:
premature end of data segment") and makes up the rest (grey); that warning is read from stderr
(`native_stderr`) and turned into the error. Its harmless warnings (extraneous bytes before a marker)
still pass. libjpeg prints only the first warning of a decode, so a harmless one can hide a later one.

The pixel limit is `max_pixels` (default 2**28). Where Pillow reads the header (every file but a JPEG
that OpenCV decodes), Pillow's own decompression-bomb guard (2 x PIL.Image.MAX_IMAGE_PIXELS, 178956970
pixels by default) applies as well and its error is reported the same way; set
PIL.Image.MAX_IMAGE_PIXELS = None to leave the limit to `max_pixels` alone.
"""
from __future__ import annotations

import io
import struct
from typing import NamedTuple, Optional

import cv2
import numpy as np
from PIL import Image, ImageOps

from .native_stderr import native_stderr

DEFAULT_MAX_PIXELS = 2 ** 28
#: the file extensions taken as images when a folder is read (tools/infer.py, ImageFolderDataset), any case
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif",
                    ".ppm", ".pgm", ".pbm", ".pnm")
#: the first bytes of each format the decoder reads -> its name (WebP: RIFF, 4 size bytes, then WEBP)
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
#: how many leading bytes `image_format` needs
SIGNATURE_BYTES = 12
BACKENDS = ("cv2", "pil")

_OPENCV_FORMATS = frozenset({"PNG", "BMP", "WEBP"})  # besides JPEG, which is told from its own header
_OPENCV_MODES = frozenset({"1", "L", "P", "RGB", "I;16"})  # modes IMREAD_COLOR turns into correct BGR
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # Pillow calls a JPEG with MPF (multi-picture) data "MPO"
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)  # what Pillow raises on bad data
_PILLOW_LIMIT = "Pillow's own limit, 2 x PIL.Image.MAX_IMAGE_PIXELS"

# libjpeg's warnings (jerror.h) after which part of the image was made up rather than decoded
_CORRUPT_JPEG_WARNINGS = ("Corrupt JPEG data: premature end of data segment", "Corrupt JPEG data: bad Huffman code",
                          "Corrupt JPEG data: bad arithmetic code", "Corrupt JPEG data: found marker",
                          "Premature end of JPEG file", "Inconsistent progression sequence")

_START_OF_IMAGE = b"\xff\xd8"
_END_OF_IMAGE = b"\xff\xd9"
_START_OF_SCAN = 0xDA
_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0..SOF15 less DHT, JPG, DAC


class JpegFrame(NamedTuple):
    """What a JPEG's own header says: its size, its colour components (1 grey, 3 YCbCr or RGB, 4 CMYK or
    YCCK), and whether an end-of-image marker follows its first scan (a file cut short has none)."""

    width: int
    height: int
    components: int
    complete: bool


def read_image_file(path: str) -> bytes:
    """The bytes of an image file, for `decode_image`; an empty file is a ValueError ("the file is empty")
    rather than a decoder's vaguer complaint."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError("the file is empty")
    return data


def image_format(header: bytes) -> Optional[str]:
    """The format whose signature `header` (a file's first SIGNATURE_BYTES bytes) starts with, among those
    `decode_image` reads; None for anything else. Checks the file type only, not that the pixels decode."""
    for signature, name in _SIGNATURES:
        if header.startswith(signature):
            return name
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WebP"
    if len(header) > 2 and header[:1] == b"P" and header[1:2] in b"123456" and header[2:3].isspace():
        return "PNM"
    return None


def decode_image(data: bytes, backend: str = "cv2", max_pixels: int = DEFAULT_MAX_PIXELS,
                 to_rgb: bool = True) -> np.ndarray:
    """The image in `data` (the bytes of a file) as an HxWx3 uint8 array, RGB when `to_rgb` else BGR.
    Raises ValueError("cannot decode image: ...") for a file that cannot be decoded or has more than
    `max_pixels` pixels."""
    if backend not in BACKENDS:
        raise ValueError(f"decode_image: backend must be 'cv2' or 'pil', got {backend!r}")
    bgr = _decode_with_opencv(data, max_pixels) if backend == "cv2" else None
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if to_rgb else bgr
    rgb = _decode_with_pil(data, max_pixels)
    return rgb if to_rgb else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _decode_with_opencv(data: bytes, max_pixels: int) -> Optional[np.ndarray]:
    """OpenCV's BGR pixels where they are right, else None (Pillow decodes those files). A JPEG is judged
    from its own frame header, read in microseconds; any other file from Pillow's lazy header."""
    frame = read_jpeg_frame(data)
    if frame is not None:
        if frame.components not in (1, 3) or not frame.complete:
            return None  # CMYK or YCCK; or cut short, where OpenCV would fill the missing part with grey
        check_pixel_count("JPEG", frame.width, frame.height, max_pixels)
        return imdecode_jpeg(data)
    with open_header(data) as header:
        check_pixel_count(header.format, *header.size, max_pixels)
        return _imdecode(data) if _opencv_decodes_correctly(header) else None


def _decode_with_pil(data: bytes, max_pixels: int) -> np.ndarray:
    """Pillow's decode as HxWx3 uint8 RGB, upright; the pixel count is checked before decoding."""
    with open_header(data) as image:
        check_pixel_count(image.format, *image.size, max_pixels)
        if image.format in _JPEG_FORMATS:
            imdecode_jpeg(data, cv2.IMREAD_REDUCED_GRAYSCALE_8)  # Pillow decodes corrupt scan data silently
        _load_upright(image)
        return _as_rgb(image)


def read_jpeg_frame(data: bytes) -> Optional[JpegFrame]:
    """The frame header of a JPEG, found by stepping over the length-prefixed segments after the
    start-of-image marker up to the first scan (so an EXIF thumbnail, which lies inside a segment, is
    never mistaken for the image); None when `data` is not a JPEG or its segments do not lead to a scan."""
    if not data.startswith(_START_OF_IMAGE):
        return None
    position, size = 2, None
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before a marker
            position += 1
            continue
        if marker == _START_OF_SCAN:
            return None if size is None else JpegFrame(*size, data.rfind(_END_OF_IMAGE, position) >= 0)
        if marker in _START_OF_FRAME and position + 10 <= len(data):
            height, width, components = struct.unpack_from(">HHB", data, position + 5)
            size = (width, height, components)
        position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
    return None


def open_header(data: bytes) -> Image.Image:
    """The file opened lazily by Pillow: format, mode, size and info are read, the pixels are not."""
    if len(data) == 0:
        raise ValueError("cannot decode image: the file is empty (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(f"{error} ({_PILLOW_LIMIT})") from error
    except Image.UnidentifiedImageError as error:
        raise ValueError(f"cannot decode image: not a recognised image format ({len(data)} bytes, "
                         f"starting with {bytes(data[:8])!r})") from error
    except _PIL_ERRORS as error:  # a known format's signature, then a header its reader rejects
        raise ValueError(f"cannot decode image: unreadable image header in {len(data)} bytes starting with "
                         f"{bytes(data[:12])!r} ({error})") from error


def check_pixel_count(image_format: str, width: int, height: int, max_pixels: int) -> None:
    """Reject an image with more than `max_pixels` pixels, from its header alone (before decoding)."""
    if width * height > max_pixels:
        raise _too_many_pixels(f"{image_format} of {width}x{height} = {width * height} pixels "
                               f"is above max_pixels={max_pixels}")


def _too_many_pixels(detail: str) -> ValueError:
    """The one error for an image over a pixel limit, ours or Pillow's decompression-bomb guard."""
    return ValueError(f"cannot decode image: too many pixels: {detail}")


def _describe(image: Image.Image) -> str:
    """'PNG 640x480 RGBA': what the header says, for error messages."""
    width, height = image.size
    return f"{image.format} {width}x{height} {image.mode}"


def _opencv_decodes_correctly(header: Image.Image) -> bool:
    """Whether cv2.imdecode(IMREAD_COLOR) gives the right pixels of this PNG, BMP or WebP: no alpha or
    transparent colour (it would drop them), and no EXIF in a WebP (OpenCV ignores its orientation there)."""
    return (header.format in _OPENCV_FORMATS and header.mode in _OPENCV_MODES
            and "transparency" not in header.info and (header.format != "WEBP" or "exif" not in header.info))


def _imdecode(data: bytes) -> Optional[np.ndarray]:
    """OpenCV's BGR decode (EXIF orientation applied), or None where OpenCV cannot read the file."""
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)


def imdecode_jpeg(data: bytes, flags: int = cv2.IMREAD_COLOR) -> Optional[np.ndarray]:
    """cv2.imdecode of a JPEG, rejecting one for which libjpeg reports corrupt or missing scan data (it
    only warns on stderr and makes the missing part up); None where OpenCV cannot read the file."""
    with native_stderr.capture(lambda line: line.startswith(_CORRUPT_JPEG_WARNINGS)) as warnings:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if warnings:
        raise ValueError(f"cannot decode image: corrupt JPEG data ({len(data)} bytes; libjpeg: {warnings[0]}): "
                         "part of the image would be made up")
    return image


def _load_upright(image: Image.Image) -> None:
    """Decode the pixels and apply the EXIF orientation in place; Pillow's errors become ValueError."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(f"{error} ({_PILLOW_LIMIT})") from error
    except _PIL_ERRORS as error:
        raise ValueError(f"cannot decode image: {_describe(image)} could not be decoded ({error})") from error


def _as_rgb(image: Image.Image) -> np.ndarray:
    """A decoded image of any Pillow mode as HxWx3 uint8 RGB: 16-bit grey reduced to its high byte,
    transparency composited onto white, CMYK converted (plain polarity where a JPEG lacks Adobe's marker)."""
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PPM"):
        return _grey16_to_rgb(np.asarray(image), image.info.get("transparency"))
    if image.mode in ("I", "F"):
        raise ValueError(f"cannot decode image: {_describe(image)} holds 32-bit "
                         f"{'float' if image.mode == 'F' else 'integer'} samples, which have no 8-bit scale")
    if image.mode == "CMYK" and image.format in _JPEG_FORMATS and "adobe" not in image.info:
        image = image.point(lambda value: 255 - value)  # undo Pillow's assumption of Adobe's inverted CMYK
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _grey16_to_rgb(grey: np.ndarray, transparent: Optional[int]) -> np.ndarray:
    """16-bit grey samples (any byte order; Pillow holds 16-bit PGM as mode I scaled to 0..65535) as 8-bit
    RGB with equal channels: the high byte of each; white where a sample is the transparent grey level."""
    rgb = np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if transparent is not None:
        rgb[grey == transparent] = 255
    return rgb


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA over a white background, rounded: alpha 255 keeps the colour exactly, alpha 0 gives white."""
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:].astype(np.uint16)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
