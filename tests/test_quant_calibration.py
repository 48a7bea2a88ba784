"""The calibration reader: a config's DataLoader.Eval or a folder, read with the evaluation transforms into
float32 NCHW batches of one shape, checked against a numpy re-implementation of the transforms; its
refusals (too few images, mixed sizes) as one-line errors; the fingerprint."""
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO, quick_config
from ppcls_ext.config import ConfigError
from ppcls_ext.data.dataset import DataError
from ppcls_ext.data.calibration import calibration_batches, fingerprint, image_set, load_images


def digits_by_hand(digits, count, skip=0):
    """The quick-start eval transforms in numpy: RGB of the 32 px PNG, (x / 255 - 0.5) / 0.5, CHW."""
    lines = (digits / "val_small.txt").read_text().split("\n")[skip:skip + count]
    images = [cv2.imread(str(digits / line.split()[0]))[:, :, ::-1].astype(np.float32) for line in lines]
    return np.stack([((image / 255.0 - 0.5) / 0.5).transpose(2, 0, 1) for image in images]).astype(np.float32)


def test_batches_from_the_eval_dataset_follow_the_eval_transforms_in_label_file_order(digits, tmp_path):
    config = quick_config(digits, tmp_path)
    batches = calibration_batches(config, batch_size=4, num_batches=3)
    assert [b.shape for b in batches] == [(4, 3, 32, 32)] * 3 and all(b.dtype == np.float32 for b in batches)
    np.testing.assert_allclose(np.concatenate(batches), digits_by_hand(digits, 12), atol=1e-6)
    skipped = calibration_batches(config, batch_size=5, num_batches=1, skip=7)
    np.testing.assert_allclose(skipped[0], digits_by_hand(digits, 5, skip=7), atol=1e-6)
    images = image_set(config)
    assert images.labels[:3] == [int(line.split()[1]) for line in (digits / "val_small.txt").read_text().split("\n")[:3]]


def test_a_folder_with_deploy_transforms_and_the_image_shape_resizes_other_sizes(tmp_path, digits):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pictures = {"a.png": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
                "b.png": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                ".hidden.png": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)}
    for name, picture in pictures.items():
        cv2.imwrite(str(folder / name), picture)
    (folder / "notes.txt").write_text("not an image")
    ops = [{"NormalizeImage": {"scale": 1.0 / 255.0, "mean": [0.5] * 3, "std": [0.5] * 3, "order": ""}}]
    with pytest.raises(DataError, match=r"differ in shape: .*b\.png gives 3x32x32, .*a\.png \(3x40x48\)"):
        calibration_batches(str(folder), batch_size=2, num_batches=1, transforms=ops)
    batch, = calibration_batches(str(folder), batch_size=2, num_batches=1, transforms=ops, image_shape=[3, 32, 32])
    # resizing after the per-channel normalisation equals resizing the decoded image before it
    expected = [cv2.resize(pictures[name][:, :, ::-1].astype(np.float32), (32, 32), interpolation=cv2.INTER_LINEAR)
                for name in ("a.png", "b.png")]
    np.testing.assert_allclose(batch, np.stack([((e / 255.0 - 0.5) / 0.5).transpose(2, 0, 1) for e in expected]), atol=1e-5)
    with pytest.raises(ConfigError, match="transforms="):
        image_set(str(folder))


def test_too_few_images_and_unreadable_ones_are_one_line_errors(digits, tmp_path):
    config = quick_config(digits, tmp_path)
    with pytest.raises(DataError, match=r"has 37 images; 40 are needed after the first 0 \(40 in all\)") as error:
        calibration_batches(config, batch_size=8, num_batches=5)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match=r"after the first 30 \(38 in all\)"):
        calibration_batches(config, batch_size=8, num_batches=1, skip=30)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        calibration_batches(config, batch_size=0, num_batches=1)
    broken = tmp_path / "broken"
    shutil.copytree(digits / "images" / "val" / "3", broken)
    first = sorted(os.listdir(broken))[0]
    (broken / first).write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"calibration image .*{first} cannot be read"):
        load_images(image_set(str(broken), [{"ResizeImage": {"size": 32}}]), 0, 2)


def test_fingerprint_changes_with_any_value_shape_or_split_and_not_otherwise(rng):
    batches = [rng.standard_normal((2, 3, 4, 4)).astype(np.float32) for _ in range(2)]
    same = [b.copy() for b in batches]
    assert fingerprint(batches) == fingerprint(same) and len(fingerprint(batches)) == 64
    changed = [b.copy() for b in batches]
    changed[1][0, 0, 0, 0] = np.nextafter(changed[1][0, 0, 0, 0], np.float32(np.inf))
    regrouped = [np.concatenate(batches)]
    assert len({fingerprint(batches), fingerprint(changed), fingerprint(regrouped),
                fingerprint([b.reshape(2, 3, 2, 8) for b in batches])}) == 4


def test_the_calibration_reader_does_not_load_the_training_engine():
    code = "import sys, ppcls_ext.data.calibration; print(sorted(m for m in sys.modules if m.startswith('ppcls_ext.engine')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
