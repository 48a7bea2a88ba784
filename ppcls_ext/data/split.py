"""A deterministic, stratified split of a class-per-folder dataset into PaddleClas label files
(`train_list.txt`, `val_list.txt`, optionally `test_list.txt`: `<path relative to the folder> <class id>`
per line) and its class map (`label_list.txt`: `<class id> <name>` per line), as PaddleX's
`--split_dataset --format ImageNet` names them. What tools/split_dataset.py runs.

Each class is split on its own (stratified): its images, sorted by path, are shuffled by a generator
seeded with (seed, class name), so the same seed gives the same split on any machine, and adding images to
one class or adding a class leaves the other classes' splits as they were. A class of n images holds out
round(n * fraction) images for each held-out part, at least one when the fraction is above 0, as long as
one image is left for training.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from ..config import ConfigError
from ..output_paths import WriteError
from .image_folder import FolderImage, class_map_text, scan_image_folder, write_text_file

PARTS = ("train", "val", "test")
#: the file each part is written to, and the class map's
LIST_FILES = {part: f"{part}_list.txt" for part in PARTS}
CLASS_MAP_FILE = "label_list.txt"


@dataclass
class Split:
    """A split: the class names (ids are positions), each part's images, and the (class, part) pairs left
    without images because the class is too small."""

    classes: List[str]
    parts: Dict[str, List[FolderImage]]
    short: List[tuple] = field(default_factory=list)


def _rounded(value: float) -> int:
    return int(math.floor(value + 0.5))


def held_out_counts(n: int, val_value: float, test_value: float) -> tuple:
    """(validation, test) images held out of a class of `n` images (see the module docstring)."""
    val = min(max(_rounded(n * val_value), 1 if val_value > 0 else 0), n - 1)
    test = min(max(_rounded(n * test_value), 1 if test_value > 0 else 0), n - 1 - val)
    return val, test


def check_fractions(val_value: float, test_value: float) -> None:
    """Both fractions in [0, 1), leaving a share for training."""
    for name, value in (("val_value", val_value), ("test_value", test_value)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"{name} must be a fraction in [0, 1), got {value!r}")
    if val_value + test_value >= 1:
        raise ConfigError(f"val_value + test_value must be below 1 (the rest is the training set), got "
                          f"{val_value} + {test_value}")


def split_image_folder(image_root: str, val_value: float, test_value: float = 0.0, seed: int = 0) -> Split:
    """Split the images of `image_root` (one sub-folder per class, read as ImageFolderDataset reads it:
    empty classes and unreadable or non-image files are refused) into train / val / test."""
    check_fractions(val_value, test_value)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    classes, images = scan_image_folder(image_root, "dataset folder")
    by_class: Dict[int, List[FolderImage]] = {}
    for image in images:
        by_class.setdefault(image.label, []).append(image)
    split = Split(classes, {part: [] for part in PARTS})
    for label, name in enumerate(classes):
        members = sorted(by_class[label])
        random.Random(f"{seed}/{name}").shuffle(members)
        val, test = held_out_counts(len(members), val_value, test_value)
        split.parts["val"] += members[:val]
        split.parts["test"] += members[val:val + test]
        split.parts["train"] += members[val + test:]
        split.short += [(name, part) for part, wanted, got in (("val", val_value, val), ("test", test_value, test))
                        if wanted > 0 and got == 0]
    for part in PARTS:
        split.parts[part].sort(key=lambda image: (image.label, image.path))
    return split


def list_text(images: Sequence[FolderImage]) -> str:
    """A PaddleClas label file: `<relative path> <class id>` per line."""
    return "".join(f"{image.path} {image.label}\n" for image in images)


def write_split(split: Split, save_dir: str) -> List[str]:
    """Write the label file of each part that has images, and the class map, into `save_dir` (each file
    whole or not at all); returns their paths. A failure is a WriteError naming the folder and the reason."""
    written = []
    try:
        os.makedirs(save_dir, exist_ok=True)
        for part in PARTS:
            if split.parts[part]:
                written.append(os.path.join(save_dir, LIST_FILES[part]))
                write_text_file(written[-1], list_text(split.parts[part]))
        written.append(os.path.join(save_dir, CLASS_MAP_FILE))
        write_text_file(written[-1], class_map_text(split.classes))
    except OSError as error:
        raise WriteError(f"cannot write the split into {save_dir}: {error.strerror or error}") from error
    return written
