"""The faster training input path: DecodeImage + RandCropImage planned as one step (exactly the two ops'
result at full scale; reduced-scale JPEG decoding that keeps crops statistically the same), NormalizeImage
computed channels-first, and uint8 batches normalised on the device."""
import io
import random

import cv2
import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import quick_config
from ppcls_ext.config import ConfigError
from ppcls_ext.data.demo import photo_jpegs
from ppcls_ext.data.device_normalize import DeviceNormalize, batch_normalizer, split_normalization
from ppcls_ext.data.loader import build_dataloader
from ppcls_ext.data.transforms import (Compose, DecodeImage, DecodeRandCrop, NormalizeImage, RandCropImage, RandomErasing,
                                       ToCHWImage, build_transforms, reduction_factor)


@pytest.fixture(scope="module")
def photos():
    """Real photographs (scikit-learn's), as ImageNet-like 500x375 JPEGs."""
    return photo_jpegs(40, seed=1)


def jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def two_ops(decode: DecodeImage, crop: RandCropImage, data: bytes, seed: int) -> np.ndarray:
    """The reference: the two ops called one after the other, as PaddleClas runs them."""
    random.seed(seed)
    return crop(decode(data))


def test_compose_plans_decode_then_crop_as_one_step_and_still_finds_both():
    ops = build_transforms([{"DecodeImage": {"to_rgb": True}}, {"RandCropImage": {"size": 64}}, {"RandFlipImage": None}], "t")
    assert [type(step).__name__ for step in ops.steps] == ["DecodeRandCrop", "RandFlipImage"]
    assert len(ops.find(RandCropImage)) == 1 and len(ops.find(DecodeImage)) == 1
    ops.find(RandCropImage)[0].size = 32  # what progressive learning does between stages
    assert ops(photo_jpegs(1)[0]).shape == (32, 32, 3)
    pil = build_transforms([{"DecodeImage": {"backend": "pil"}}, {"RandCropImage": {"size": 64}}], "t")
    assert [type(step).__name__ for step in pil.steps] == ["DecodeImage", "RandCropImage"]


@pytest.mark.parametrize("to_rgb", [True, False])
def test_one_step_at_full_scale_gives_exactly_the_two_ops_result(photos, to_rgb):
    decode, crop = DecodeImage(to_rgb=to_rgb, reduced_decode=False), RandCropImage(224, interpolation="bicubic")
    step = DecodeRandCrop(decode, crop)
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(photos[0], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    grey = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))[1].tobytes()
    png = cv2.imencode(".png", rgb[:200, :300])[1].tobytes()
    rotated = [jpeg_with_orientation(rgb[:300, :420], orientation) for orientation in (3, 6, 8)]
    for seed, data in enumerate(photos[:8] + [grey, png] + rotated):
        random.seed(seed)
        np.testing.assert_array_equal(step(data), two_ops(decode, crop, data, seed), err_msg=str(seed))


def test_the_reduced_scale_is_the_largest_that_keeps_the_output_resolution():
    assert reduction_factor(500, 375, 224, 224) == 1
    assert reduction_factor(448, 448, 224, 224) == 2
    assert reduction_factor(447, 448, 224, 224) == 1
    assert reduction_factor(500, 375, 64, 64) == 4
    assert reduction_factor(1024, 1024, 128, 96) == 8


def test_reduced_decode_crops_are_statistically_the_full_decode_crops(photos):
    """At 112 px most crops of a 500x375 photo are decoded at 1/2 or 1/4 scale. Against the two ops at full
    scale: per-crop mean absolute difference a few grey levels (the full-scale bilinear downscale aliases,
    the DCT-scaled decode low-passes), crop means and contrast the same, and no further from the
    alias-free reference (area averaging of the full-scale crop) than PaddleClas's own path is."""
    size = 112
    crop = RandCropImage(size, interpolation="bilinear")
    reduced, full = DecodeRandCrop(DecodeImage(), crop), DecodeImage(reduced_decode=False)
    differences, to_reference, reference_gap, means, stds, factors = [], [], [], [], [], []
    for seed, data in enumerate(photos):
        random.seed(seed)
        left, top, width, height = crop.draw_region(500, 375)
        factors.append(reduction_factor(width, height, size, size))
        random.seed(seed)
        fast = reduced(data).astype(np.float64)
        exact = two_ops(full, crop, data, seed).astype(np.float64)
        area = cv2.resize(full(data)[top:top + height, left:left + width], (size, size),
                          interpolation=cv2.INTER_AREA).astype(np.float64)
        differences.append(np.abs(fast - exact).mean())
        to_reference.append(np.abs(fast - area).mean())
        reference_gap.append(np.abs(exact - area).mean())
        means.append(fast.mean((0, 1)) - exact.mean((0, 1)))
        stds.append(fast.std() - exact.std())
    reduced_crops = np.array(factors) > 1
    assert reduced_crops.mean() > 0.5, factors  # the test exercises the reduced decode
    assert np.mean(np.array(differences)[reduced_crops]) < 8.0 and max(differences) < 16.0
    assert np.abs(np.mean(means, axis=0)).max() < 1.0  # per-channel means of the crops: same
    assert abs(np.mean(stds)) < 3.0  # contrast: same to a few levels
    assert np.mean(to_reference) < 1.25 * np.mean(reference_gap)
    assert max(d for d, f in zip(differences, factors) if f == 1) < 1e-9  # full-scale crops are exact


def test_normalize_hwc_is_a_view_of_channels_first_values_and_matches_the_formula():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = (image.astype(np.float64) / 255.0 - mean) / std
    hwc = NormalizeImage(mean=mean, std=std, order="")(image)
    chw = NormalizeImage(mean=mean, std=std, order="chw")(image)
    np.testing.assert_allclose(hwc, expected, atol=1e-5)
    np.testing.assert_array_equal(chw, hwc.transpose((2, 0, 1)))
    assert hwc.shape == (17, 23, 3) and chw.flags.c_contiguous and hwc.transpose((2, 0, 1)).flags.c_contiguous


def test_device_normalisation_is_the_workers_normalisation(photos):
    ops = [{"DecodeImage": {"to_rgb": True}}, {"RandCropImage": {"size": 64}}, {"RandFlipImage": None},
           {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "order": ""}}]
    transform = build_transforms(ops, "t")
    uint8_transform, normalize = split_normalization(transform, "t")
    images_float, images_uint8 = [], []
    for seed, data in enumerate(photos[:6]):
        random.seed(seed), np.random.seed(seed)
        images_float.append(transform(data).transpose((2, 0, 1)))
        random.seed(seed), np.random.seed(seed)
        images_uint8.append(uint8_transform(data))
    batch = np.stack(images_uint8)
    assert batch.dtype == np.uint8 and batch.shape == (6, 3, 64, 64)
    np.testing.assert_allclose(normalize(paddle.to_tensor(batch)).numpy(), np.stack(images_float), atol=1e-6)
    # a mixed (float) batch: normalisation is affine, so mixing first gives the same
    mixed = 0.3 * batch[:3].astype(np.float32) + 0.7 * batch[3:].astype(np.float32)
    np.testing.assert_allclose(normalize(paddle.to_tensor(mixed)).numpy(),
                               0.3 * np.stack(images_float[:3]) + 0.7 * np.stack(images_float[3:]), atol=1e-5)


def test_device_normalisation_refuses_ops_after_normalize():
    transform = Compose([NormalizeImage(order=""), RandomErasing()])
    with pytest.raises(ConfigError, match=r"DataLoader.Train.dataset.transform_ops: normalize_on_device needs "
                                          r"NormalizeImage to be the last op .*found RandomErasing"):
        split_normalization(transform, "DataLoader.Train.dataset.transform_ops")
    assert isinstance(split_normalization(Compose([NormalizeImage(order=""), ToCHWImage()]), "t")[1], DeviceNormalize)
    with pytest.raises(ConfigError, match="needs a NormalizeImage"):
        split_normalization(Compose([ToCHWImage()]), "t")


def test_loader_switch_ships_uint8_and_the_loop_hook_restores_the_batches(digits, tmp_path):
    plain = quick_config(digits, tmp_path)
    switched = quick_config(digits, tmp_path, "DataLoader.Eval.loader.normalize_on_device=True")
    loaders = {name: build_dataloader(config, "Eval", 10, indexed=True) for name, config in (("plain", plain), ("switched", switched))}
    images_plain = next(iter(loaders["plain"]))[0]
    images_uint8 = next(iter(loaders["switched"]))[0]
    assert images_uint8.dtype == paddle.uint8 and images_plain.dtype == paddle.float32
    assert batch_normalizer(loaders["plain"])(images_plain) is images_plain
    np.testing.assert_allclose(batch_normalizer(loaders["switched"])(images_uint8).numpy(), images_plain.numpy(), atol=1e-6)


def test_training_and_evaluation_with_device_normalisation_match_the_default(digits, tmp_path):
    from ppcls_ext.engine import Engine

    results = {}
    for name, switch in (("plain", []), ("device", ["DataLoader.Train.loader.normalize_on_device=True",
                                                    "DataLoader.Eval.loader.normalize_on_device=True"])):
        config = quick_config(digits, tmp_path / name, "Global.epochs=1", "Global.seed=0", *switch)
        engine = Engine(config, "train")
        results[name] = {**engine.train(), **{f"train_{k}": v for k, v in engine.history[-1]["train"].items()}}
    assert "train_loss" in results["plain"] and "top1" in results["plain"]
    assert results["device"] == pytest.approx(results["plain"], rel=1e-4)
