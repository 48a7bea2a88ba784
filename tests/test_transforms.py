"""Image transform ops: behaviour on generated images, parity with cv2/PIL and with PaddleClas's deploy
preprocess ops, determinism under a seed, and config errors."""
import io
import random

import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from ppcls_ext.config import ConfigError
from ppcls_ext.data import transforms as T
from ppcls_ext.data.autoaugment import IMAGENET_POLICY, autoaugment_value, posterize
from ppcls_ext.data.randaugment import RANDAUGMENT_OPS, RANDAUGMENT_V2_OPS


@pytest.fixture(scope="module")
def photo():
    """A 120x160 RGB image with smooth gradients and a few shapes (so resizes and augmentations show)."""
    y, x = np.mgrid[0:120, 0:160]
    img = np.stack([x * 255 // 159, y * 255 // 119, (x + y) * 255 // 278], axis=-1).astype(np.uint8)
    cv2.circle(img, (50, 60), 25, (250, 30, 30), -1)
    cv2.rectangle(img, (100, 20), (140, 90), (20, 200, 40), -1)
    return img


@pytest.fixture(scope="module")
def deploy():
    """PaddleClas's inference-time preprocess ops from the installed wheel (the numeric reference)."""
    return pytest.importorskip("paddleclas.deploy.python.preprocess")


def encode(img_rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def seeded(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)


def outcomes(op, image, expected, draws, seed):
    """Names (keys of `expected`) of the outputs `op` gave in `draws` seeded calls; any other output fails."""
    seeded(seed)
    seen = set()
    for _ in range(draws):
        out = op(image)
        names = [name for name, candidate in expected.items() if np.array_equal(out, candidate)]
        if not names:
            pytest.fail(f"{type(op).__name__} gave an output that is none of {sorted(expected)}")
        seen.add(names[0])
    return seen


# ---- DecodeImage ----

def test_decode_png_is_lossless_rgb(photo):
    out = T.DecodeImage()(encode(photo, ".png"))
    assert out.dtype == np.uint8 and out.shape == photo.shape
    np.testing.assert_array_equal(out, photo)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_decode_channel_order_on_pure_red(ext):
    red = np.zeros((16, 24, 3), np.uint8)
    red[..., 0] = 255
    data = encode(red, ext)
    rgb = T.DecodeImage(to_rgb=True)(data).astype(int)
    bgr = T.DecodeImage(to_rgb=False)(data).astype(int)
    assert rgb.shape == (16, 24, 3)
    assert np.abs(rgb - [255, 0, 0]).max() <= 3
    assert np.abs(bgr - [0, 0, 255]).max() <= 3


def test_decode_pil_backend_matches_cv2(photo):
    data = encode(photo, ".png")
    np.testing.assert_array_equal(T.DecodeImage(backend="pil")(data), photo)
    np.testing.assert_array_equal(T.DecodeImage(backend="pil", to_rgb=False)(data), photo[..., ::-1])


def test_decode_jpeg_from_pil_is_close(photo):
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=95)
    out = T.DecodeImage()(buf.getvalue())
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - photo).mean() < 3


def test_decode_channel_first_and_to_np_false(photo):
    data = encode(photo, ".png")
    chw = T.DecodeImage(channel_first=True)(data)
    np.testing.assert_array_equal(chw, photo.transpose(2, 0, 1))
    pil = T.DecodeImage(to_np=False)(data)
    assert isinstance(pil, Image.Image) and pil.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(pil), photo)


def test_decode_grayscale_gives_three_channels():
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    ok, buf = cv2.imencode(".png", gray)
    out = T.DecodeImage()(buf.tobytes())
    assert out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 2], gray)


@pytest.mark.parametrize("backend", ["cv2", "pil"])
def test_decode_applies_exif_orientation(backend):
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :10] = 255  # left third white
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", exif=exif.tobytes())
    out = T.DecodeImage(backend=backend)(buf.getvalue())
    assert out.shape == (30, 20, 3)
    assert out[:5].mean() > 240 and out[-15:].mean() < 15  # the white band is now on top


@pytest.mark.parametrize("backend", ["cv2", "pil"])
def test_decode_garbage_raises_value_error(backend):
    with pytest.raises(ValueError, match=r"^cannot decode image: .*12 bytes"):
        T.DecodeImage(backend=backend)(b"not an image")
    with pytest.raises(ValueError, match=r"^cannot decode image: the file is empty"):
        T.DecodeImage(backend=backend)(b"")


def test_decode_rejects_non_bytes_and_bad_backend():
    with pytest.raises(TypeError, match="DecodeImage: expected the bytes of an image file, got str"):
        T.DecodeImage()("image.jpg")
    with pytest.raises(ValueError, match="DecodeImage: backend must be 'cv2' or 'pil', got 'skimage'"):
        T.DecodeImage(backend="skimage")


# ---- ResizeImage / CropImage / CropImageAtRatio ----

def test_resize_short_matches_cv2(photo):
    out = T.ResizeImage(resize_short=64)(photo)
    assert out.shape == (64, 85, 3)  # 160 * 64 / 120 = 85.33
    np.testing.assert_array_equal(out, cv2.resize(photo, (85, 64), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("name, flag", [(None, cv2.INTER_LINEAR), ("nearest", cv2.INTER_NEAREST),
                                        ("area", cv2.INTER_AREA), ("bicubic", cv2.INTER_CUBIC),
                                        ("lanczos", cv2.INTER_LANCZOS4)])
def test_resize_size_matches_cv2(photo, name, flag):
    out = T.ResizeImage(size=[50, 40], interpolation=name)(photo)
    assert out.shape == (40, 50, 3)  # size is [width, height], as PaddleClas passes it to cv2.resize
    np.testing.assert_array_equal(out, cv2.resize(photo, (50, 40), interpolation=flag))


def test_resize_pil_backend(photo):
    expected = np.asarray(Image.fromarray(photo).resize((40, 30), Image.Resampling.BICUBIC))
    out = T.ResizeImage(size=[40, 30], interpolation="bicubic", backend="pil")(photo)
    np.testing.assert_array_equal(out, expected)
    pil_out = T.ResizeImage(size=[40, 30], interpolation="bicubic", backend="pil", return_numpy=False)(photo)
    assert isinstance(pil_out, Image.Image)
    np.testing.assert_array_equal(np.asarray(pil_out), expected)


def test_resize_accepts_pil_input(photo):
    out = T.ResizeImage(resize_short=60)(Image.fromarray(photo))
    np.testing.assert_array_equal(out, cv2.resize(photo, (80, 60), interpolation=cv2.INTER_LINEAR))


def test_resize_random_interpolation_uses_bilinear_or_bicubic(photo):
    op = T.ResizeImage(size=37, interpolation="random")
    bilinear = cv2.resize(photo, (37, 37), interpolation=cv2.INTER_LINEAR)
    bicubic = cv2.resize(photo, (37, 37), interpolation=cv2.INTER_CUBIC)
    assert outcomes(op, photo, {"bilinear": bilinear, "bicubic": bicubic}, draws=12, seed=3) == {"bilinear", "bicubic"}


def test_resize_argument_errors():
    with pytest.raises(ValueError, match="ResizeImage: set size .* or resize_short"):
        T.ResizeImage()
    with pytest.raises(ValueError, match=r"ResizeImage: interpolation 'cubic' is not available with backend "
                                         r"'cv2'; expected one of nearest, bilinear, area, bicubic, lanczos, random"):
        T.ResizeImage(size=10, interpolation="cubic")
    with pytest.raises(ValueError, match="ResizeImage: backend must be 'cv2' or 'pil', got 'torch'"):
        T.ResizeImage(size=10, backend="torch")
    with pytest.raises(ValueError, match=r"ResizeImage: size must be a positive int or \[width, height\]"):
        T.ResizeImage(size=[10, -1])


def test_crop_is_centre_slice(photo):
    out = T.CropImage(size=[51, 30])(photo)  # [width, height]
    top, left = (120 - 30) // 2, (160 - 51) // 2
    np.testing.assert_array_equal(out, photo[top:top + 30, left:left + 51])
    np.testing.assert_array_equal(T.CropImage(size=100)(photo), photo[10:110, 30:130])


def test_crop_larger_than_image_is_an_error(photo):
    with pytest.raises(ValueError, match=r"CropImage: crop size \(width 200, height 200\) is larger than the "
                                         r"image \(width 160, height 120\)"):
        T.CropImage(size=200)(photo)


def test_crop_at_ratio_hand_computed_box(photo):
    # ratio 64 / (64 + 16) = 0.8 -> side int(0.8 * 120) = 96, top (120-96)//2 = 12, left (160-96)//2 = 32
    out = T.CropImageAtRatio(size=64, pad=16)(photo)
    expected = cv2.resize(photo[12:108, 32:128], (64, 64), interpolation=cv2.INTER_LINEAR)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    nearest = T.CropImageAtRatio(size=64, pad=16, interpolation="nearest")(photo)
    np.testing.assert_array_equal(nearest, cv2.resize(photo[12:108, 32:128], (64, 64),
                                                      interpolation=cv2.INTER_NEAREST))


def test_crop_at_ratio_argument_errors():
    with pytest.raises(ValueError, match="CropImageAtRatio: pad must be an int >= 0, got -2"):
        T.CropImageAtRatio(size=64, pad=-2)
    with pytest.raises(ValueError, match="CropImageAtRatio: size must be a positive int, got '384'"):
        T.CropImageAtRatio(size="384", pad=32)


# ---- NormalizeImage / ToCHWImage ----

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def reference_normalize(img, scale=1 / 255.0, mean=MEAN, std=STD):
    return (img.astype(np.float64) * scale - np.array(mean)) / np.array(std)


def test_normalize_hwc_with_fraction_string(photo):
    out = T.NormalizeImage(scale="1.0/255.0", mean=MEAN, std=STD, order="")(photo)
    assert out.dtype == np.float32 and out.shape == photo.shape
    np.testing.assert_allclose(out, reference_normalize(photo), rtol=0, atol=2e-6)


def test_normalize_chw_from_hwc_and_from_chw(photo):
    op = T.NormalizeImage(scale=1.0 / 255.0, mean=MEAN, std=STD, order="chw")
    expected = reference_normalize(photo).transpose(2, 0, 1)
    from_hwc = op(photo)
    assert from_hwc.shape == (3, 120, 160) and from_hwc.flags.c_contiguous
    np.testing.assert_allclose(from_hwc, expected, atol=2e-6)
    np.testing.assert_allclose(op(photo.transpose(2, 0, 1)), expected, atol=2e-6)


def test_normalize_defaults_fp16_and_fourth_channel(photo):
    default = T.NormalizeImage(order="hwc")(photo)
    np.testing.assert_allclose(default, reference_normalize(photo), atol=2e-6)
    half = T.NormalizeImage(order="", output_fp16=True)(photo)
    assert half.dtype == np.float16
    four = T.NormalizeImage(order="chw", channel_num=4)(photo)
    assert four.shape == (4, 120, 160)
    assert not four[3].any()
    np.testing.assert_allclose(four[:3], reference_normalize(photo).transpose(2, 0, 1), atol=2e-6)


def test_normalize_scale_strings_are_parsed_not_evaluated(photo):
    assert T.NormalizeImage(scale="1/255").scale == pytest.approx(1 / 255)
    assert T.NormalizeImage(scale="0.00392157").scale == pytest.approx(0.00392157)
    with pytest.raises(ValueError, match=r"NormalizeImage: scale=\"__import__\('os'\)\" is not a number or a "
                                         r"fraction like '1.0/255.0'"):
        T.NormalizeImage(scale="__import__('os')")
    with pytest.raises(ValueError, match=r"NormalizeImage: scale='1/0' divides by zero"):
        T.NormalizeImage(scale="1/0")
    with pytest.raises(ValueError, match=r"NormalizeImage: scale='nan' is not a number"):
        T.NormalizeImage(scale="nan")
    assert T.RandomErasing(sh=" 1.0 / 3.0 ").sh == pytest.approx(1 / 3)


def test_normalize_argument_and_shape_errors(photo):
    with pytest.raises(ValueError, match="NormalizeImage: order must be 'chw', 'hwc' or '' \\(= hwc\\), got 'CHW'"):
        T.NormalizeImage(order="CHW")
    with pytest.raises(ValueError, match="NormalizeImage: std must not contain 0"):
        T.NormalizeImage(std=[1, 0, 1])
    with pytest.raises(ValueError, match="NormalizeImage: channel_num must be 3 or 4, got 1"):
        T.NormalizeImage(channel_num=1)
    with pytest.raises(ValueError, match=r"NormalizeImage: expected a HWC image with 3 channels, got shape \(3, 120, 160\)"):
        T.NormalizeImage(order="")(photo.transpose(2, 0, 1))


def test_to_chw(photo):
    out = T.ToCHWImage()(photo)
    assert out.shape == (3, 120, 160)
    np.testing.assert_array_equal(out, photo.transpose(2, 0, 1))
    np.testing.assert_array_equal(T.ToCHWImage()(Image.fromarray(photo)), photo.transpose(2, 0, 1))


# ---- parity with PaddleClas's deploy preprocess ops ----

def test_resize_and_crop_match_paddleclas_deploy(photo, deploy):
    for kwargs in ({"resize_short": 96}, {"size": 70}, {"size": [64, 48]}, {"resize_short": 80, "interpolation": "bicubic"}):
        np.testing.assert_array_equal(T.ResizeImage(**kwargs)(photo), deploy.ResizeImage(**kwargs)(photo))
    for size in (64, [70, 50]):
        np.testing.assert_array_equal(T.CropImage(size=size)(photo), deploy.CropImage(size=size)(photo))


def test_eval_pipeline_matches_paddleclas_deploy(photo, deploy):
    config = [
        {"ResizeImage": {"resize_short": 100}},
        {"CropImage": {"size": 96}},
        {"NormalizeImage": {"scale": 0.00392157, "mean": MEAN, "std": STD, "order": ""}},
        {"ToCHWImage": None},
    ]
    ours = T.build_transforms(config, "Infer.transforms")(photo)
    theirs = photo
    for op in deploy.create_operators(config):
        theirs = op(theirs)
    assert ours.shape == theirs.shape == (3, 96, 96) and ours.dtype == theirs.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_normalize_chw_matches_paddleclas_deploy_on_chw_input(photo, deploy):
    chw = photo.transpose(2, 0, 1)
    np.testing.assert_allclose(T.NormalizeImage(order="chw")(chw), deploy.NormalizeImage(order="chw")(chw), atol=1e-5)


# ---- RandCropImage / RandFlipImage ----

def test_rand_crop_output_size_and_reassigned_size(photo):
    op = T.RandCropImage(size=48)
    seeded(0)
    out = op(photo)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8
    op.size = 32
    assert op(photo).shape == (32, 32, 3)
    op.size = [40, 24]  # [width, height]
    assert op(photo).shape == (24, 40, 3)


def test_rand_crop_full_scale_and_native_ratio_is_a_plain_resize(photo):
    op = T.RandCropImage(size=64, scale=[1.0, 1.0], ratio=[160 / 120, 160 / 120])
    np.testing.assert_array_equal(op(photo), cv2.resize(photo, (64, 64), interpolation=cv2.INTER_LINEAR))


def test_rand_crop_takes_a_window_of_the_requested_area():
    img = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    op = T.RandCropImage(size=50, scale=[0.25, 0.25], ratio=[1.0, 1.0])  # a 50x50 window, not resized
    seeded(5)
    for _ in range(5):
        out = op(img)
        windows = [(t, l) for t in range(51) for l in range(51) if np.array_equal(img[t:t + 50, l:l + 50], out)]
        assert len(windows) == 1


def test_rand_crop_keeps_progress_size_and_validates(photo):
    op = T.RandCropImage(size=224, progress_size=[128, 160, 192, 224], scale=[0.05, 1.0], use_log_aspect=True)
    assert op.progress_size == [128, 160, 192, 224]
    with pytest.raises(ValueError, match=r"RandCropImage: scale must be \[low, high\] with 0.0 < low <= high, got \[0.5, 0.1\]"):
        T.RandCropImage(size=224, scale=[0.5, 0.1])
    with pytest.raises(ValueError, match=r"RandCropImage: size must be a positive int or \[width, height\]"):
        T.RandCropImage(size=0)


def test_rand_flip_is_identity_or_flip(photo):
    for code, flipped in ((1, photo[:, ::-1]), (0, photo[::-1]), (-1, photo[::-1, ::-1])):
        op = T.RandFlipImage(flip_code=code)
        assert outcomes(op, photo, {"flipped": flipped, "same": photo}, draws=16, seed=1) == {"flipped", "same"}
    with pytest.raises(ValueError, match=r"RandFlipImage: flip_code must be 1 \(horizontal\), 0 \(vertical\) or -1"):
        T.RandFlipImage(flip_code=2)


# ---- RandomErasing ----

def erased_mask(before, after):
    return np.any(before != after, axis=-1)


def assert_rectangle(mask):
    rows, cols = np.nonzero(mask)
    assert rows.size > 0
    box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all()
    return box.shape


def test_random_erasing_const_mode_erases_one_rectangle_with_mean():
    img = np.ones((60, 80, 3), np.float32)
    op = T.RandomErasing(EPSILON=1.0, sl=0.02, sh="1.0/3.0", mean=[0.0, 0.0, 0.0])
    seeded(2)
    out = op(img.copy())
    mask = erased_mask(img, out)
    h, w = assert_rectangle(mask)
    assert 0.015 <= h * w / (60 * 80) <= 0.36
    assert not out[mask].any()


def test_random_erasing_rand_and_pixel_modes():
    img = np.ones((60, 80, 3), np.float32)
    seeded(4)
    rand = T.RandomErasing(EPSILON=1.0, mode="rand")(img.copy())
    mask = erased_mask(img, rand)
    assert_rectangle(mask)
    region = rand[mask]
    assert np.ptp(region, axis=0).max() == 0  # one colour over the whole rectangle
    seeded(4)
    pixel = T.RandomErasing(EPSILON=1.0, mode="pixel")(img.copy())
    mask = erased_mask(img, pixel)
    assert_rectangle(mask)
    assert pixel[mask].std() > 0.5  # per-pixel standard normal noise


def test_random_erasing_probability_and_errors():
    img = np.ones((30, 30, 3), np.float32)
    np.testing.assert_array_equal(T.RandomErasing(EPSILON=0.0)(img.copy()), img)
    readonly = np.asarray(Image.fromarray(np.full((30, 30, 3), 9, np.uint8)))
    seeded(0)
    out = T.RandomErasing(EPSILON=1.0)(readonly)
    assert (readonly == 9).all() and (out == 0).any()
    with pytest.raises(ValueError, match="RandomErasing: mode must be one of const, rand, pixel, got 'noise'"):
        T.RandomErasing(mode="noise")
    with pytest.raises(ValueError, match=r"RandomErasing: need 0 < sl <= sh <= 1, got sl=0.5, sh=0.4"):
        T.RandomErasing(sl=0.5)


# ---- AutoAugment / RandAugment / RandAugmentV2 ----

def test_autoaugment_policy_table():
    assert len(IMAGENET_POLICY) == 25
    assert autoaugment_value("posterize", 8) == 4 and autoaugment_value("posterize", 0) == 8
    assert autoaugment_value("rotate", 9) == pytest.approx(30.0)
    assert autoaugment_value("solarize", 5) == pytest.approx(256 - 5 * 256 / 9)
    assert autoaugment_value("color", 0) == 0.0


def test_posterize_keeps_high_bits():
    img = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16).repeat(3).reshape(16, 16, 3))
    out = np.asarray(posterize(img, 2))
    assert set(np.unique(out)) == {0, 64, 128, 192}
    assert not np.asarray(posterize(img, 0)).any()
    np.testing.assert_array_equal(np.asarray(posterize(img, 12)), np.asarray(img))


@pytest.mark.parametrize("make", [lambda: T.AutoAugment(), lambda: T.RandAugment(),
                                  lambda: T.RandAugmentV2(magnitude=9)], ids=["AutoAugment", "RandAugment", "RandAugmentV2"])
def test_policy_augments_keep_shape_dtype_and_change_the_image(photo, make):
    op = make()
    seeded(11)
    outputs = [op(photo) for _ in range(8)]
    for out in outputs:
        assert isinstance(out, np.ndarray) and out.shape == photo.shape and out.dtype == np.uint8
    assert sum(not np.array_equal(out, photo) for out in outputs) >= 4
    assert isinstance(op(Image.fromarray(photo)), np.ndarray)


def test_randaugment_ranges_as_paddleclas():
    assert RANDAUGMENT_OPS["translateX"].argument(1.0) == pytest.approx(150 / 331)
    assert RANDAUGMENT_OPS["posterize"].argument(0.9) == 3
    assert RANDAUGMENT_V2_OPS["translateX"].argument(1.0) == 100
    assert RANDAUGMENT_V2_OPS["color"].argument(1.0) == pytest.approx(0.9)  # factor 1.9
    assert RANDAUGMENT_V2_OPS["solarize_add"].argument(1.0) == 110
    assert RANDAUGMENT_V2_OPS["cutout"].argument(0.5) == 20
    assert RANDAUGMENT_V2_OPS["rotate"].signed and not RANDAUGMENT_OPS["rotate"].signed
    assert set(RANDAUGMENT_V2_OPS) - set(RANDAUGMENT_OPS) == {"solarize_add", "cutout"}


def test_randaugment_magnitude_reassignment_takes_effect(photo, monkeypatch):
    op = T.RandAugment(num_layers=1, magnitude=0)
    monkeypatch.setattr(np.random, "choice", lambda names: "rotate")
    np.testing.assert_array_equal(op(photo), photo)  # rotate by 0 degrees
    op.magnitude = 10
    expected = Image.fromarray(photo).rotate(30.0, Image.Resampling.BICUBIC, fillcolor=(128, 128, 128))
    np.testing.assert_array_equal(op(photo), np.asarray(expected))


def test_randaugment_v2_brightness_hand_computed(photo, monkeypatch):
    op = T.RandAugmentV2(num_layers=1, magnitude=5, progress_magnitude=[5, 8, 12, 15])
    assert op.progress_magnitude == [5, 8, 12, 15]
    monkeypatch.setattr(np.random, "choice", lambda names: "brightness")
    np.testing.assert_array_equal(op(photo), photo)  # factor 1.8 * 0.5 + 0.1 = 1.0
    op.magnitude = 10
    expected = ImageEnhance.Brightness(Image.fromarray(photo)).enhance(1.9)
    np.testing.assert_array_equal(op(photo), np.asarray(expected))


def test_randaugment_argument_errors():
    with pytest.raises(ValueError, match="RandAugmentV2: fillcolor must be 3 values"):
        T.RandAugmentV2(fillcolor=[128])
    with pytest.raises(ValueError, match="RandAugment: magnitude must be a number"):
        T.RandAugment(magnitude="high")
    with pytest.raises(ValueError, match=r"RandAugment: interpolation must be one of .*, got 'area'"):
        T.RandAugment(interpolation="area")


# ---- determinism ----

RANDOM_OPS = {
    "RandCropImage": lambda: T.RandCropImage(size=40, interpolation="random"),
    "RandCropImage-log": lambda: T.RandCropImage(size=40, use_log_aspect=True),
    "RandFlipImage": lambda: T.RandFlipImage(),
    "AutoAugment": lambda: T.AutoAugment(),
    "RandAugment": lambda: T.RandAugment(magnitude=9),
    "RandAugmentV2": lambda: T.RandAugmentV2(magnitude=9),
    "RandomErasing": lambda: T.Compose([T.NormalizeImage(order=""), T.RandomErasing(EPSILON=0.8, mode="pixel")]),
    "ResizeImage-random": lambda: T.ResizeImage(size=40, interpolation="random"),
}


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_random_ops_are_deterministic_under_a_seed(photo, name):
    op = RANDOM_OPS[name]()

    def run(seed):
        seeded(seed)
        return [op(photo) for _ in range(6)]

    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(first, other))


# ---- registry and builder ----

TRAIN_OPS = [
    {"DecodeImage": {"to_rgb": True, "channel_first": False}},
    {"RandCropImage": {"size": 64, "scale": [0.05, 1.0]}},
    {"RandFlipImage": {"flip_code": 1}},
    {"RandAugmentV2": {"num_layers": 2, "magnitude": 5}},
    {"NormalizeImage": {"scale": 1.0, "mean": [128.0, 128.0, 128.0], "std": [128.0, 128.0, 128.0], "order": ""}},
    {"RandomErasing": {"EPSILON": 0.25, "sl": 0.02, "sh": "1.0/3.0", "r1": 0.3, "attempt": 10,
                       "use_log_aspect": True, "mode": "pixel"}},
    {"ToCHWImage": None},
]


def test_build_transforms_runs_a_paddleclas_train_list(photo):
    compose = T.build_transforms(TRAIN_OPS, "DataLoader.Train.dataset.transform_ops")
    assert [type(op).__name__ for op in compose.ops] == [next(iter(item)) for item in TRAIN_OPS]
    seeded(0)
    out = compose(encode(photo, ".png"))
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    crop, = compose.find(T.RandCropImage)
    assert crop is compose.ops[1]
    assert compose.find(T.AutoAugment) == []
    crop.size = 32
    assert compose(encode(photo, ".png")).shape == (3, 32, 32)


def test_registry_names_are_the_class_names():
    assert {name: cls.__name__ for name, cls in T.TRANSFORM_OPS.items()} == {name: name for name in T.TRANSFORM_OPS}
    assert {"DecodeImage", "CropImageAtRatio", "RandAugmentV2", "RandomErasing"} <= set(T.TRANSFORM_OPS)


def test_build_transforms_empty_and_none(photo):
    assert T.build_transforms(None, "x").ops == []
    assert T.build_transforms([], "x")(photo) is photo


def test_unknown_op_names_position_and_lists_valid_names():
    configs = TRAIN_OPS[:3] + [{"Foo": {"a": 1}}]
    with pytest.raises(ConfigError) as error:
        T.build_transforms(configs, "DataLoader.Train.dataset.transform_ops")
    message = str(error.value)
    assert message.startswith("DataLoader.Train.dataset.transform_ops[3]: unknown transform op 'Foo'; valid: ")
    assert "AutoAugment, CropImage, CropImageAtRatio, DecodeImage" in message


@pytest.mark.parametrize("item, expected", [
    ({"RandCropImage": {"size": 224, "sizes": 3}},
     r"^ops\[0\]: RandCropImage has no argument 'sizes'; valid: size, progress_size, scale, ratio"),
    ({"CropImage": None}, r"^ops\[0\]: CropImage needs argument 'size'$"),
    ({"NormalizeImage": {"scale": "1.0/abc"}},
     r"^ops\[0\]: NormalizeImage: scale='1.0/abc' is not a number or a fraction like '1.0/255.0'$"),
    ({"RandFlipImage": {"flip_code": 3}}, r"^ops\[0\]: RandFlipImage: flip_code must be"),
    ({"ResizeImage": {"size": 10}, "CropImage": {"size": 8}}, r"^ops\[0\]: expected a single-key mapping"),
    ({"ResizeImage": [256]}, r"^ops\[0\]: arguments of ResizeImage must be a mapping"),
])
def test_bad_arguments_are_config_errors(item, expected):
    with pytest.raises(ConfigError, match=expected):
        T.build_transforms([item], "ops")


def test_transform_ops_must_be_a_list():
    with pytest.raises(ConfigError, match=r"^Eval.transform_ops: expected a list of ops"):
        T.build_transforms({"DecodeImage": None}, "Eval.transform_ops")


def test_policy_augments_reject_normalized_input(photo):
    normalized = T.NormalizeImage(order="")(photo)
    with pytest.raises(TypeError, match="RandAugmentV2: expected an HWC uint8 image .* got an array of float32"):
        T.RandAugmentV2()(normalized)
