"""The offline demo dataset: scikit-learn's bundled handwritten digits (8x8, 1797 images, 10 classes)
written out as an ImageNet-format folder: images, train/val label lists and a label-name map."""
from __future__ import annotations

import os
from typing import Dict

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
