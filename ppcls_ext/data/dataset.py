"""ImageNet-format datasets: an image root plus a label file of `relative/path label` lines."""
from __future__ import annotations

import logging
import os
import random
from typing import Callable, List, Optional, Tuple

import numpy as np
from paddle.io import Dataset

from ..config import ConfigError

logger = logging.getLogger("ppcls_ext")


def read_label_file(label_path: str, image_root: str, delimiter: Optional[str] = None) -> Tuple[List[str], List[int], List[int]]:
    """Parse `path label` lines (blank lines skipped) into (image paths, labels, line numbers), checking
    that every image exists and every label is a non-negative integer. Errors name the file and line."""
    if not os.path.isdir(image_root):
        raise ConfigError(f"image_root does not exist or is not a directory: {image_root}")
    if not os.path.isfile(label_path):
        raise ConfigError(f"label file not found: {label_path}")
    paths, labels, lines = [], [], []
    with open(label_path, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(delimiter, 1) if delimiter else line.rsplit(None, 1)
            where = f"{label_path}, line {number}"
            if len(parts) != 2:
                raise ConfigError(f"{where}: expected '<image path> <label>', got {line!r}")
            path, label = parts[0].strip(), parts[1].strip()
            if not label.lstrip("-").isdigit() or int(label) < 0:
                raise ConfigError(f"{where}: label must be a non-negative integer, got {label!r}")
            full = os.path.join(image_root, path)
            if not os.path.isfile(full):
                raise ConfigError(f"{where}: image not found: {full}")
            paths.append(full)
            labels.append(int(label))
            lines.append(number)
    if not paths:
        raise ConfigError(f"{label_path} lists no images")
    return paths, labels, lines


def to_chw(image: np.ndarray) -> np.ndarray:
    """PaddleClas's datasets transpose the HWC output of `transform_ops` to CHW themselves (its configs
    end in NormalizeImage, not ToCHWImage); an image already CHW is left alone."""
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4) and image.shape[0] not in (1, 3, 4):
        return np.ascontiguousarray(image.transpose((2, 0, 1)))
    return image


class ImageNetDataset(Dataset):
    """PaddleClas's ImageNetDataset: yields (transformed image, label).

    A file that cannot be read or decoded is skipped in training (logged, another random sample is
    returned, as PaddleClas does); with `skip_broken=False` (evaluation) it raises, naming the file.
    """

    def __init__(
        self,
        image_root: str,
        cls_label_path: str,
        transform_ops: Optional[Callable[[bytes], np.ndarray]] = None,
        delimiter: Optional[str] = None,
        skip_broken: bool = True,
    ):
        self.image_root = image_root
        self.label_path = cls_label_path
        self.images, self.labels, self.line_numbers = read_label_file(cls_label_path, image_root, delimiter)
        self.transform = transform_ops
        self.skip_broken = skip_broken

    def __len__(self) -> int:
        return len(self.images)

    def check_labels(self, class_num: int) -> None:
        """Every label must be below the model's class_num."""
        for label, line in zip(self.labels, self.line_numbers):
            if label >= class_num:
                raise ConfigError(f"{self.label_path}, line {line}: label {label} is not below Arch.class_num={class_num}")

    def load(self, index: int) -> np.ndarray:
        """The transformed image at `index`; errors name the file."""
        path = self.images[index]
        try:
            with open(path, "rb") as f:
                data = f.read()
            if not data:
                raise ValueError("the file is empty")
            image = self.transform(data) if self.transform is not None else np.frombuffer(data, dtype=np.uint8)
        except Exception as error:  # decoding and augmentation raise many types; re-raised with the file
            raise ValueError(f"{path}: {error}") from error
        return to_chw(image)

    def __getitem__(self, index: int):
        for _ in range(10):
            try:
                return self.load(index), np.int64(self.labels[index])
            except ValueError as error:
                if not self.skip_broken:
                    raise
                logger.warning("skipping unreadable training image %s", error)
                index = random.randrange(len(self))
        raise RuntimeError(f"{self.label_path}: 10 unreadable images in a row; check the dataset")


class IndexedDataset(Dataset):
    """Wraps a dataset so that each sample also carries its index (evaluation counts every image once
    across ranks by these indices)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return (*self.dataset[index], np.int64(index))
