"""Offline demo data from images bundled with scikit-learn: the demo dataset (its handwritten digits, 8x8,
1797 images, 10 classes, written out as an ImageNet-format folder: images, train/val label lists and a
label-name map), and ImageNet-like JPEG files cut from its two sample photographs (benchmarks, tests)."""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import cv2
import numpy as np

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_digits_dataset(out_dir: str, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Dict[str, str]:
    """Write the digits as `size` x `size` RGB PNGs under `out_dir/images/<split>/<class>/`, with
    `train_list.txt`, `val_list.txt` (stratified split), `label_list.txt`, and `demo/<name>.png`: one
    validation image per class, named after its digit, to try inference on. Returns the paths."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    splits = {"train": [], "val": []}
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        n_val = int(round(len(indices) * val_fraction))
        splits["val"] += [(i, label) for i in indices[:n_val]]
        splits["train"] += [(i, label) for i in indices[n_val:]]
    def write(relative: str, index: int) -> None:
        os.makedirs(os.path.join(out_dir, os.path.dirname(relative)), exist_ok=True)
        big = cv2.resize(images[index], (size, size), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(os.path.join(out_dir, relative), cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))

    for split, items in splits.items():
        lines = []
        for index, label in sorted(items):
            relative = os.path.join("images", split, str(label), f"{index:04d}.png")
            write(relative, index)
            lines.append(f"{relative} {label}\n")
        with open(os.path.join(out_dir, f"{split}_list.txt"), "w", encoding="utf-8") as f:
            f.writelines(lines)
    first_val: Dict[int, int] = {}
    for index, label in splits["val"]:
        first_val.setdefault(label, index)
    for label, index in sorted(first_val.items()):
        write(os.path.join("demo", f"{DIGIT_NAMES[label]}.png"), index)
    with open(os.path.join(out_dir, "label_list.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{i} {name}\n" for i, name in enumerate(DIGIT_NAMES))
    paths = {name: os.path.join(out_dir, f"{name}.txt") for name in ("train_list", "val_list", "label_list")}
    return {**paths, "demo": os.path.join(out_dir, "demo")}


def photo_jpegs(count: int, size: Tuple[int, int] = (500, 375), quality: int = 90, seed: int = 0) -> List[bytes]:
    """`count` ImageNet-like JPEG files (bytes; `size` = (width, height), like ImageNet's typical 500x375)
    cut from the two photographs bundled with scikit-learn (no download): random crops of random scale,
    aspect and position, mirrored half of the time, resized with area averaging, encoded at `quality`."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    width, height = size
    files = []
    for index in range(count):
        photo = photos[index % len(photos)]
        photo_h, photo_w = photo.shape[:2]
        crop_h = int(photo_h * rng.uniform(0.6, 1.0))
        crop_w = min(photo_w, int(crop_h * width / height * rng.uniform(0.9, 1.1)))
        top, left = rng.integers(0, photo_h - crop_h + 1), rng.integers(0, photo_w - crop_w + 1)
        crop = photo[top:top + crop_h, left:left + crop_w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        image = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA)
        _, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        files.append(encoded.tobytes())
    return files
