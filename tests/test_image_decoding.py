"""DecodeImage on the files users actually send: every format and pixel mode decodes to the right HxWx3
uint8 RGB pixels with both backends, and broken, oversized or non-image files raise a ValueError that
says what is wrong. Every file is generated here with PIL, OpenCV or numpy."""
import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from ppcls_ext.data import transforms as T
from ppcls_ext.data.image_io import JpegFrame, read_jpeg_frame
from ppcls_ext.serving.predict import collect_images

BACKENDS = ["cv2", "pil"]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 40x56 RGB image: gradients plus flat blocks (so lossy codecs stay close)."""
    y, x = np.mgrid[0:40, 0:56]
    img = np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)
    img[8:24, 8:24] = (230, 40, 30)
    img[16:32, 32:48] = (20, 180, 60)
    return img


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def cv2_bytes(array: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


def decode_both(data: bytes, **options) -> tuple:
    """The decode with each backend (cv2, pil)."""
    return tuple(T.DecodeImage(backend=backend, **options)(data) for backend in BACKENDS)


def plain_cv2(data: bytes) -> np.ndarray:
    """What PaddleClas's decoder gives: cv2.imdecode(IMREAD_COLOR) then BGR -> RGB."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Reference compositing onto white, in floats."""
    a = alpha[..., None].astype(float) / 255
    return np.round(rgb * a + 255 * (1 - a)).astype(np.uint8)


def assert_rgb(out: np.ndarray, shape: tuple) -> None:
    assert out.dtype == np.uint8 and out.shape == shape + (3,)


# ---- 1. JPEG, PNG ----

@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_cv2_backend_is_exactly_plain_cv2_and_pil_agrees(photo, progressive):
    data = pil_bytes(Image.fromarray(photo), "JPEG", quality=90, progressive=progressive)
    out_cv2, out_pil = decode_both(data)
    assert_rgb(out_cv2, (40, 56))
    np.testing.assert_array_equal(out_cv2, plain_cv2(data))
    assert np.abs(out_pil.astype(int) - out_cv2).max() <= 2
    assert np.abs(out_cv2.astype(int) - photo).mean() < 5


def test_multi_picture_jpeg_is_decoded_like_any_jpeg(photo):
    """Phones write MPF data, which Pillow reports as format MPO: still a JPEG for OpenCV."""
    second = Image.new("RGB", (56, 40), (0, 0, 255))
    data = pil_bytes(Image.fromarray(photo), "MPO", save_all=True, append_images=[second], quality=90)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    out_cv2, out_pil = decode_both(data)
    np.testing.assert_array_equal(out_cv2, plain_cv2(data))
    assert np.abs(out_pil.astype(int) - out_cv2).max() <= 2
    assert np.abs(out_cv2.astype(int) - photo).mean() < 5


def test_png_rgb_is_lossless_with_both_backends(photo):
    for out in decode_both(pil_bytes(Image.fromarray(photo), "PNG")):
        np.testing.assert_array_equal(out, photo)


# ---- 2. palette ----

def test_palette_png_without_transparency(photo):
    palette = Image.fromarray(photo).quantize(16)
    expected = np.asarray(palette.convert("RGB"))
    for out in decode_both(pil_bytes(palette, "PNG")):
        np.testing.assert_array_equal(out, expected)


def test_palette_png_with_trns_entry_is_white_where_transparent(photo):
    palette = Image.fromarray(photo).quantize(16)
    indices = np.asarray(palette)
    clear = int(indices[16, 16])  # the index of the red block
    colours = np.asarray(palette.convert("RGB"))
    assert colours[16, 16].tolist() != [255, 255, 255]
    expected = np.where((indices == clear)[..., None], np.uint8(255), colours)
    for out in decode_both(pil_bytes(palette, "PNG", transparency=clear)):
        np.testing.assert_array_equal(out, expected)


# ---- 3. grey, grey + alpha ----

def test_grey_png_and_jpeg_give_equal_channels():
    grey = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (20, 1))
    for fmt in ("PNG", "JPEG"):
        for out in decode_both(pil_bytes(Image.fromarray(grey), fmt, quality=95)):
            assert_rgb(out, grey.shape)
            np.testing.assert_array_equal(out[..., 0], out[..., 1])
            np.testing.assert_array_equal(out[..., 0], out[..., 2])
            assert np.abs(out[..., 0].astype(int) - grey).max() <= (0 if fmt == "PNG" else 3)


def test_grey_alpha_png_is_composited_onto_white():
    grey = np.tile(np.arange(0, 200, 10, dtype=np.uint8), (6, 1))
    alpha = np.array([0, 1, 64, 128, 254, 255], np.uint8)[:, None].repeat(grey.shape[1], axis=1)
    data = pil_bytes(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG")
    expected = over_white(np.dstack([grey] * 3), alpha)
    for out in decode_both(data):
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(out[0], 255)      # alpha 0: white
        np.testing.assert_array_equal(out[-1, :, 1], grey[-1])  # alpha 255: the grey itself


# ---- 4. 16-bit ----

SIXTEEN = np.array([[0, 255, 256, 32767, 32768, 65280, 65535]], np.uint16)
EIGHT = np.array([[0, 0, 1, 127, 128, 255, 255]], np.uint8)


def test_16bit_grey_png_is_scaled_not_clipped():
    data = pil_bytes(Image.fromarray(SIXTEEN), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    for out in decode_both(data):
        np.testing.assert_array_equal(out, np.dstack([EIGHT] * 3))


def test_16bit_grey_png_with_transparent_level_is_white_there():
    data = pil_bytes(Image.fromarray(SIXTEEN), "PNG", transparency=32768)
    expected = np.dstack([EIGHT] * 3)
    expected[0, 4] = 255
    for out in decode_both(data):
        np.testing.assert_array_equal(out, expected)


def test_16bit_rgb_png_from_cv2_is_scaled():
    rgb = np.dstack([SIXTEEN, SIXTEEN[:, ::-1], np.full_like(SIXTEEN, 32768)])
    for out in decode_both(cv2_bytes(rgb[..., ::-1], ".png")):
        np.testing.assert_array_equal(out, np.dstack([EIGHT, EIGHT[:, ::-1], np.full_like(EIGHT, 128)]))


def test_16bit_rgba_png_from_cv2_is_scaled_and_composited():
    rgb = np.dstack([SIXTEEN] * 3)
    alpha = np.array([[65535, 65535, 0, 65535, 65535, 0, 65535]], np.uint16)
    expected = np.where((alpha == 0)[..., None], np.uint8(255), np.dstack([EIGHT] * 3))
    for out in decode_both(cv2_bytes(np.dstack([rgb, alpha]), ".png")):
        np.testing.assert_array_equal(out, expected)


def test_16bit_pgm_is_scaled():
    for out in decode_both(pil_bytes(Image.fromarray(SIXTEEN), "PPM")):
        np.testing.assert_array_equal(out, np.dstack([EIGHT] * 3))


# ---- 5. alpha ----

@pytest.fixture(scope="module")
def rgba() -> np.ndarray:
    """4 rows of alpha 0 / 128 / 255 / 255 over colours that show if alpha were dropped."""
    img = np.zeros((4, 6, 4), np.uint8)
    img[..., :3] = (255, 0, 0)              # red stored everywhere ...
    img[1, :, :3] = (0, 0, 0)
    img[2, :, :3] = (10, 200, 30)
    img[3, :, :3] = (0, 0, 255)
    img[..., 3] = np.array([0, 128, 255, 255], np.uint8)[:, None]
    return img


@pytest.mark.parametrize("fmt,options", [("PNG", {}), ("WEBP", {"lossless": True})])
def test_rgba_transparent_pixels_become_white(rgba, fmt, options):
    data = pil_bytes(Image.fromarray(rgba), fmt, **options)
    for out in decode_both(data):
        np.testing.assert_array_equal(out[0], 255)        # red under alpha 0 -> white
        np.testing.assert_array_equal(out[1], 127)        # black at alpha 128: (255 * 127 + 127) // 255
        np.testing.assert_array_equal(out[2:], rgba[2:, :, :3])
        np.testing.assert_array_equal(out, over_white(rgba[..., :3], rgba[..., 3]))


def test_lossy_webp_with_alpha_is_composited(rgba):
    big = np.repeat(np.repeat(rgba, 8, axis=0), 8, axis=1)
    for out in decode_both(pil_bytes(Image.fromarray(big), "WEBP", quality=90)):
        np.testing.assert_array_equal(out[:8], 255)
        assert np.abs(out[-8:].astype(int) - (0, 0, 255)).mean() < 8


@pytest.mark.parametrize("fmt,options", [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_fully_opaque_rgba_is_exactly_its_rgb(photo, fmt, options):
    opaque = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    for out in decode_both(pil_bytes(Image.fromarray(opaque), fmt, **options)):
        np.testing.assert_array_equal(out, photo)


def test_rgba_to_bgr_channel_first_and_pil_output(rgba):
    data = pil_bytes(Image.fromarray(rgba), "PNG")
    rgb = over_white(rgba[..., :3], rgba[..., 3])
    for backend in BACKENDS:
        np.testing.assert_array_equal(T.DecodeImage(backend=backend, to_rgb=False)(data), rgb[..., ::-1])
        np.testing.assert_array_equal(T.DecodeImage(backend=backend, channel_first=True)(data),
                                      rgb.transpose(2, 0, 1))
        pil = T.DecodeImage(backend=backend, to_np=False)(data)
        assert pil.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(pil), rgb)


# ---- 6. other formats ----

@pytest.mark.parametrize("fmt,options", [("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
                                         ("WEBP", {"lossless": True}), ("PPM", {})])
def test_lossless_formats(photo, fmt, options):
    for out in decode_both(pil_bytes(Image.fromarray(photo), fmt, **options)):
        np.testing.assert_array_equal(out, photo)


def test_lossy_webp(photo):
    out_cv2, out_pil = decode_both(pil_bytes(Image.fromarray(photo), "WEBP", quality=90))
    assert_rgb(out_cv2, (40, 56))
    assert np.abs(out_cv2.astype(int) - photo).mean() < 4
    assert np.abs(out_pil.astype(int) - out_cv2).max() <= 2


@pytest.mark.parametrize("fmt,options", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_animations_give_their_first_frame(fmt, options):
    first = np.zeros((12, 16, 3), np.uint8)
    first[:, :8] = (200, 30, 30)
    second = np.full((12, 16, 3), (30, 30, 200), np.uint8)
    data = pil_bytes(Image.fromarray(first), fmt, save_all=True, append_images=[Image.fromarray(second)], **options)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    if fmt != "PNG":  # OpenCV 4.6 reads neither GIF nor animated WebP
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None
    for out in decode_both(data):
        np.testing.assert_array_equal(out, first)


def test_gif_transparent_colour_becomes_white():
    indices = np.zeros((4, 4), np.uint8)
    indices[:2] = 1
    gif = Image.fromarray(indices, "L").convert("P")
    gif.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    for out in decode_both(pil_bytes(gif, "GIF", transparency=0)):
        np.testing.assert_array_equal(out[:2], np.full((2, 4, 3), (0, 200, 0)))
        np.testing.assert_array_equal(out[2:], 255)


# ---- 7. CMYK JPEG ----

def without_segment(data: bytes, marker: bytes) -> bytes:
    """A JPEG with one marker segment (e.g. Adobe's APP14) cut out."""
    start = data.index(marker)
    length = int.from_bytes(data[start + 2:start + 4], "big")
    return data[:start] + data[start + 2 + length:]


@pytest.mark.parametrize("cmyk,rgb", [((0, 255, 255, 0), (255, 0, 0)), ((255, 0, 0, 0), (0, 255, 255)),
                                      ((0, 0, 0, 255), (0, 0, 0)), ((0, 0, 0, 0), (255, 255, 255))])
def test_cmyk_jpeg_adobe_inverted(cmyk, rgb):
    data = pil_bytes(Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=95)
    assert b"Adobe" in data  # Pillow writes Adobe's inverted polarity and says so
    for out in decode_both(data):
        assert_rgb(out, (16, 16))
        assert np.abs(out.astype(int) - rgb).max() <= 3


def test_cmyk_jpeg_without_adobe_marker_is_plain_polarity():
    stored_inverted = Image.new("CMYK", (16, 16), (255, 0, 0, 255))  # Pillow inverts it on save ...
    data = without_segment(pil_bytes(stored_inverted, "JPEG", quality=95), b"\xff\xee")
    assert b"Adobe" not in data  # ... so the file holds plain (0, 255, 255, 0): red
    for out in decode_both(data):
        assert np.abs(out.astype(int) - (255, 0, 0)).max() <= 3


# ---- 8. EXIF orientation ----

@pytest.fixture(scope="module")
def upright() -> np.ndarray:
    """32x48, four flat 16x24 quadrants: any rotation or flip shows, and JPEG keeps flat blocks."""
    img = np.zeros((32, 48, 3), np.uint8)
    img[:16, :24], img[:16, 24:], img[16:, :24], img[16:, 24:] = (250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)
    return img


STORED_FOR = {3: lambda u: np.rot90(u, 2), 6: lambda u: np.rot90(u, 1), 8: lambda u: np.rot90(u, -1)}


def with_orientation(array: np.ndarray, orientation: int, fmt: str, **options) -> bytes:
    image = Image.fromarray(np.ascontiguousarray(array))
    exif = image.getexif()
    exif[0x0112] = orientation
    return pil_bytes(image, fmt, exif=exif.tobytes(), **options)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_is_upright_and_same_for_both_backends(upright, orientation):
    data = with_orientation(STORED_FOR[orientation](upright), orientation, "JPEG", quality=95)
    out_cv2, out_pil = decode_both(data)
    assert_rgb(out_cv2, (32, 48))
    np.testing.assert_array_equal(out_cv2, out_pil)
    for row, column in ((8, 12), (8, 36), (24, 12), (24, 36)):  # quadrant centres
        assert np.abs(out_cv2[row, column].astype(int) - upright[row, column]).max() <= 4
    assert np.abs(out_cv2.astype(int) - upright).mean() < 6


@pytest.mark.parametrize("fmt,options", [("PNG", {}), ("WEBP", {"lossless": True})])
def test_exif_orientation_of_png_and_webp(upright, fmt, options):
    data = with_orientation(STORED_FOR[6](upright), 6, fmt, **options)
    for out in decode_both(data):
        np.testing.assert_array_equal(out, upright)


# ---- 9. extensions that lie ----

def test_content_decides_not_the_file_name(tmp_path, photo):
    files = {
        "really_png.jpg": pil_bytes(Image.fromarray(photo), "PNG"),
        "really_webp.bmp": pil_bytes(Image.fromarray(photo), "WEBP", lossless=True),
        "really_jpeg.png": pil_bytes(Image.fromarray(photo), "JPEG", quality=95),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name in files:
        expected = plain_cv2(files["really_jpeg.png"]) if name == "really_jpeg.png" else photo
        for out in decode_both((tmp_path / name).read_bytes()):
            assert np.abs(out.astype(int) - expected).max() <= (2 if name == "really_jpeg.png" else 0)


# ---- 10. tiny images ----

@pytest.mark.parametrize("height,width,fmt", [(1, 1, "JPEG"), (1, 1, "PNG"), (1, 7, "PNG"), (7, 1, "JPEG")])
def test_tiny_images_decode_and_go_through_the_eval_pipeline(height, width, fmt):
    colour = (40, 160, 220)
    data = pil_bytes(Image.new("RGB", (width, height), colour), fmt, quality=95)
    for backend in BACKENDS:
        out = T.DecodeImage(backend=backend)(data)
        assert_rgb(out, (height, width))
        assert np.abs(out.astype(int) - colour).max() <= 3
        pipeline = T.build_transforms([{"DecodeImage": {"to_rgb": True, "backend": backend}},
                                       {"ResizeImage": {"resize_short": 256}}, {"CropImage": {"size": 224}}],
                                      "Eval.transform_ops")
        result = pipeline(data)
        assert_rgb(result, (224, 224))
        assert np.abs(result.astype(int) - colour).max() <= 3


# ---- 11. pixel limit ----

def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR (checksum fixed) claims width x height; it has no data for that size."""
    data = bytearray(pil_bytes(Image.new("RGB", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """An 8x8 JPEG whose frame header claims width x height."""
    data = bytearray(pil_bytes(Image.new("RGB", (8, 8)), "JPEG"))
    frame = data.index(b"\xff\xc0")
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("craft", [png_claiming, jpeg_claiming])
def test_pixel_limit_is_checked_from_the_header(craft):
    data = craft(5000, 4000)
    assert Image.open(io.BytesIO(data)).size == (5000, 4000)
    fmt = "PNG" if craft is png_claiming else "JPEG"
    for backend in BACKENDS:
        # the file has no pixel data for 5000x4000: any other message would mean decoding was attempted
        with pytest.raises(ValueError, match=rf"^cannot decode image: too many pixels: {fmt} of 5000x4000 = "
                                             rf"20000000 pixels is above max_pixels=10000000$"):
            T.DecodeImage(backend=backend, max_pixels=10_000_000)(data)


def test_default_limit_rejects_a_huge_jpeg_from_its_header():
    with pytest.raises(ValueError, match=r"^cannot decode image: too many pixels: JPEG of 60000x60000 = "
                                         r"3600000000 pixels is above max_pixels=268435456$"):
        T.DecodeImage()(jpeg_claiming(60_000, 60_000))


@pytest.mark.parametrize("data,backend", [(png_claiming(100_000, 100_000), "cv2"),
                                          (png_claiming(100_000, 100_000), "pil"),
                                          (jpeg_claiming(60_000, 60_000), "pil")])
def test_pillow_decompression_bomb_error_becomes_the_same_value_error(data, backend):
    with pytest.raises(ValueError, match=r"^cannot decode image: too many pixels: Image size \(\d+ pixels\) "
                                         r"exceeds limit of 178956970 pixels.*\(Pillow's own limit"):
        T.DecodeImage(backend=backend)(data)


def test_pixel_limit_boundary_default_and_validation():
    data = pil_bytes(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    assert T.DecodeImage(max_pixels=64)(data).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="PNG of 8x8 = 64 pixels is above max_pixels=63"):
        T.DecodeImage(max_pixels=63)(data)
    assert T.DecodeImage().max_pixels == 2 ** 28
    from_config = T.build_transforms([{"DecodeImage": {"max_pixels": 63}}], "Infer.transforms")
    with pytest.raises(ValueError, match="above max_pixels=63"):
        from_config(data)
    for bad in (0, -1, 1.5, True, "1e9"):
        with pytest.raises(ValueError, match="DecodeImage: max_pixels must be a positive int"):
            T.DecodeImage(max_pixels=bad)


# ---- 12. garbage, empty, truncated ----

@pytest.mark.parametrize("data", [
    b"not an image",
    np.random.RandomState(0).bytes(3000),
    b"\xff\xd8\xff" + np.random.RandomState(1).bytes(3000),              # JPEG signature, then garbage
    b"\x89PNG\r\n\x1a\n" + np.random.RandomState(2).bytes(3000),         # PNG signature, then garbage
    b"%PDF-1.4\n" + b"0" * 500,
])
def test_garbage_raises_value_error(data):
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"^cannot decode image: "):
            T.DecodeImage(backend=backend)(data)


def test_garbage_message_names_the_problem():
    with pytest.raises(ValueError, match=r"^cannot decode image: not a recognised image format \(12 bytes, "
                                         r"starting with b'not an i'\)$"):
        T.DecodeImage()(b"not an image")
    with pytest.raises(ValueError, match=r"^cannot decode image: the file is empty \(0 bytes\)$"):
        T.DecodeImage()(bytearray())


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.RandomState(3).randint(0, 256, (120, 160, 3)).astype(np.uint8)


@pytest.mark.parametrize("fmt,options", [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}),
                                         ("WEBP", {}), ("GIF", {}), ("BMP", {}), ("TIFF", {})])
def test_file_cut_in_half_is_rejected_naming_format_and_size(noise, fmt, options):
    data = pil_bytes(Image.fromarray(noise), fmt, **options)
    message = (r"unreadable image header in 6\d\d\d bytes starting with b'RIFF.*WEBP'" if fmt == "WEBP"
               else rf"{fmt} 160x120 \w+ could not be decoded \(")  # libwebp checks sizes when opening
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=rf"^cannot decode image: {message}"):
            T.DecodeImage(backend=backend)(data[:len(data) // 2])


def test_jpeg_frame_header_reader(photo, noise):
    colour = pil_bytes(Image.fromarray(photo), "JPEG")
    assert read_jpeg_frame(colour) == JpegFrame(width=56, height=40, components=3, complete=True)
    assert read_jpeg_frame(pil_bytes(Image.fromarray(photo[..., 0]), "JPEG")) == JpegFrame(56, 40, 1, True)
    assert read_jpeg_frame(pil_bytes(Image.new("CMYK", (7, 5)), "JPEG")) == JpegFrame(7, 5, 4, True)
    big = pil_bytes(Image.fromarray(noise), "JPEG", progressive=True)
    assert read_jpeg_frame(big[:len(big) // 2]) == JpegFrame(160, 120, 3, False)
    assert read_jpeg_frame(colour[:20]) is None  # cut before the first scan
    assert read_jpeg_frame(pil_bytes(Image.fromarray(photo), "PNG")) is None


def test_truncated_baseline_jpeg_is_rejected_though_opencv_returns_a_grey_filled_image(noise):
    data = pil_bytes(Image.fromarray(noise), "JPEG")[:-1000]
    partial = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert partial is not None and partial.shape == (120, 160, 3)
    with pytest.raises(ValueError, match="image file is truncated"):
        T.DecodeImage()(data)


def test_truncated_jpeg_after_a_complete_embedded_thumbnail_is_rejected(noise):
    """The thumbnail's end-of-image marker must not pass for the main image's."""
    thumbnail = pil_bytes(Image.new("RGB", (8, 8), (9, 9, 9)), "JPEG")
    main = pil_bytes(Image.fromarray(noise), "JPEG")
    comment = b"\xff\xfe" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    whole = main[:2] + comment + main[2:]
    np.testing.assert_array_equal(T.DecodeImage()(whole), plain_cv2(whole))
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="JPEG 160x120 RGB could not be decoded"):
            T.DecodeImage(backend=backend)(whole[:len(whole) // 2])


@pytest.mark.parametrize("source", ["baseline", "grey", "cmyk"])
def test_jpeg_cut_short_but_closed_by_an_end_marker_is_rejected(noise, source, capfd):
    """libjpeg decodes such a file with only a warning on stderr ("premature end of data segment"),
    filling the missing part with grey (128); the warning is turned into the error."""
    image = {"baseline": Image.fromarray(noise), "grey": Image.fromarray(noise[..., 0]),
             "cmyk": Image.fromarray(noise).convert("CMYK")}[source]
    data = pil_bytes(image, "JPEG")
    closed = data[:len(data) // 2] + b"\xff\xd9"
    if source == "baseline":
        grey = cv2.imdecode(np.frombuffer(closed, np.uint8), cv2.IMREAD_COLOR)
        assert grey.shape == (120, 160, 3) and (grey[-8:] == 128).all()  # what OpenCV alone gives
        assert "Corrupt JPEG data: premature end of data segment" in capfd.readouterr().err
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"^cannot decode image: corrupt JPEG data \(\d+ bytes; libjpeg: Corrupt JPEG "
                                             r"data: premature end of data segment\): part of the image would be made up$"):
            T.DecodeImage(backend=backend)(closed)
    assert "Corrupt JPEG" not in capfd.readouterr().err  # reported in the error, not also on stderr


def test_jpeg_with_extraneous_bytes_before_its_end_decodes_and_libjpeg_warning_passes(noise, capfd):
    data = cv2_bytes(noise, ".jpg")
    padded = data[:-2] + b"12345" + data[-2:]
    out_cv2, out_pil = decode_both(padded)
    np.testing.assert_array_equal(out_cv2, plain_cv2(data))
    np.testing.assert_array_equal(out_pil, T.DecodeImage(backend="pil")(data))
    assert "Corrupt JPEG data: 3 extraneous bytes before marker 0xd9" in capfd.readouterr().err


def test_stderr_capture_hands_back_selected_lines_passes_the_rest_and_restores(capfd):
    import os
    import threading

    from ppcls_ext.data.native_stderr import native_stderr

    with native_stderr.capture(lambda line: line.startswith("libjpeg")) as kept:
        os.write(2, b"libjpeg: one\nsomething else\nlibjpeg: two\n")
    os.write(2, b"after\n")
    assert kept == ["libjpeg: one", "libjpeg: two"] and capfd.readouterr().err == "something else\nafter\n"
    data = pil_bytes(Image.fromarray(np.random.RandomState(5).randint(0, 256, (64, 64, 3)).astype(np.uint8)), "JPEG")
    closed, outcomes = data[:len(data) // 2] + b"\xff\xd9", {}

    def decode(index):  # concurrent decodes in threads: each gets its own outcome
        try:
            outcomes[index] = T.DecodeImage()(closed if index % 2 else data).shape
        except ValueError as error:
            outcomes[index] = str(error)

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(outcomes[i] == (64, 64, 3) for i in range(0, 8, 2))
    assert all("premature end of data segment" in outcomes[i] for i in range(1, 8, 2))
    os.write(2, b"still stderr\n")
    assert capfd.readouterr().err == "still stderr\n"


def test_jpeg_with_trailing_data_after_its_end_still_decodes(noise):
    data = pil_bytes(Image.fromarray(noise), "JPEG")
    trailer = b"\xff\xda" + np.random.RandomState(4).bytes(4000)  # a stray start-of-scan in the trailer
    out_cv2, out_pil = decode_both(data + trailer)
    np.testing.assert_array_equal(out_cv2, plain_cv2(data))
    np.testing.assert_array_equal(out_pil, out_cv2)


def test_png_missing_only_its_end_chunk_decodes_fully(noise):
    data = pil_bytes(Image.fromarray(noise), "PNG")
    assert data.endswith(b"IEND\xaeB`\x82")
    for out in decode_both(data[:-12]):
        np.testing.assert_array_equal(out, noise)


def test_32bit_float_tiff_is_rejected_naming_the_mode():
    data = pil_bytes(Image.fromarray(np.full((4, 5), 0.5, np.float32)), "TIFF")
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"^cannot decode image: TIFF 5x4 F holds 32-bit float samples"):
            T.DecodeImage(backend=backend)(data)


# ---- PNG parity over pixel modes ----

@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "LA", "RGBA", "I;16"])
def test_png_backends_agree_exactly_in_every_mode(photo, mode):
    image = Image.fromarray(photo)
    if mode == "I;16":
        image = Image.fromarray(photo[..., 0].astype(np.uint16) * 257 + 3)
    elif mode in ("LA", "RGBA"):
        image = image.convert(mode)
        image.putalpha(Image.fromarray(photo[..., 1]))
    else:
        image = image.quantize(32) if mode == "P" else image.convert(mode)
    data = pil_bytes(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == mode
    out_cv2, out_pil = decode_both(data)
    assert_rgb(out_cv2, (40, 56))
    np.testing.assert_array_equal(out_cv2, out_pil)


# ---- 13. folders ----

def test_folder_walk_picks_image_files_only_and_explicit_files_are_tried(tmp_path, photo):
    png = pil_bytes(Image.fromarray(photo), "PNG")
    for name in ("b.png", "a.JPG", "sub/c.webp", "sub/d.jpeg", "notes.txt", ".DS_Store", "._a.JPG",
                 ".thumbnails/e.png", "model.pdparams"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png if name.lower().endswith((".png", ".jpg", ".webp", ".jpeg")) else b"\x00\x05\x16\x07")
    walked = [p.replace(str(tmp_path) + "/", "") for p in collect_images(str(tmp_path))]
    assert walked == ["a.JPG", "b.png", "sub/c.webp", "sub/d.jpeg"]
    notes = tmp_path / "notes.txt"
    notes.write_text("remember to label the cats\n")
    assert collect_images([str(notes)]) == [str(notes)]
    with pytest.raises(ValueError, match=r"^cannot decode image: not a recognised image format \(27 bytes"):
        T.DecodeImage()(notes.read_bytes())
