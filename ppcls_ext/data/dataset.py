"""ImageNet-format datasets: an image root plus a label file of `relative/path label` lines."""
from __future__ import annotations

import logging
import os
import random
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
from paddle.io import Dataset, get_worker_info

from ..config import ConfigError, string
from ..errors import UserError
from .image_io import read_image_file
from .registries import DATASETS

logger = logging.getLogger("ppcls_ext")

#: training gives up after this many unreadable images in a row (each replaced by a random other one)
MAX_UNREADABLE_IN_A_ROW = 10


class DataError(UserError, ValueError):
    """Image data that stops a run: an unreadable image in evaluation (which counts every image), or a
    training set whose images keep failing to load. The message names the label file, line and image."""


class FailedSample(NamedTuple):
    """What a dataset returns instead of raising DataError inside a DataLoader worker process: Paddle's
    DataLoader does not pass a worker's exception on (its reader thread dies and the main process hangs
    or gets "Blocking queue is killed"), so the loader carries the message to the main process and
    raises it there (see loader.py)."""

    message: str


def parse_label(text: str) -> Optional[int]:
    """A class id written in ASCII digits, else None: Python's int() also reads other scripts' digits
    ('٣', full-width '３') and str.isdigit() also accepts superscripts ('²'), which int() rejects."""
    return int(text) if text.isascii() and text.isdigit() else None


def text_lines(path: str) -> Iterator[Tuple[int, str]]:
    """(line number, text) of a UTF-8 text file, a byte-order mark (as Windows editors write) dropped; a
    line that is not UTF-8 is a ConfigError naming it."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ConfigError(f"{path}, line {number}: not UTF-8 text (byte {raw[error.start]:#04x} at column "
                                  f"{error.start + 1}); save the file as UTF-8") from error
            yield number, line


UNLABELED = -1  # the label of an image without one (PaddleClas's SSLD lists: `path -1`, or the path alone)


def read_label_file(label_path: str, image_root: str, delimiter: Optional[str] = None,
                    unlabeled: bool = False) -> Tuple[List[str], List[int], List[int]]:
    """Parse `path label` lines (blank lines skipped) into (image paths, labels, line numbers), checking
    that every image exists and every label is a non-negative integer; with `unlabeled`, a label of -1 or
    none (the path alone) is read as UNLABELED. Errors name the file and line."""
    if not os.path.isdir(image_root):
        raise ConfigError(f"image_root does not exist or is not a directory: {image_root}")
    if os.path.isdir(label_path):
        raise ConfigError(f"label file {label_path} is a directory")
    if not os.path.isfile(label_path):
        raise ConfigError(f"label file not found: {label_path}")
    paths, labels, lines = [], [], []
    for number, line in text_lines(label_path):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(delimiter, 1) if delimiter else line.rsplit(None, 1)
        where = f"{label_path}, line {number}"
        text = parts[-1].strip() if len(parts) == 2 else ""
        label = UNLABELED if unlabeled and text == str(UNLABELED) else parse_label(text)
        if label is not None:
            path = parts[0].strip()
        elif unlabeled and os.path.isfile(os.path.join(image_root, line)):
            path, label = line, UNLABELED  # an image path alone: unlabelled
        elif len(parts) != 2:
            raise ConfigError(f"{where}: expected '<image path> <label>', got {line!r}")
        else:
            hint = " (only the ASCII digits 0-9 are read)" if not text.isascii() else ""
            raise ConfigError(f"{where}: label must be a non-negative integer, got {text!r}{hint}")
        full = os.path.join(image_root, path)
        if not os.path.isfile(full):
            raise ConfigError(f"{where}: image not found: {full}")
        paths.append(full)
        labels.append(label)
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


@DATASETS.register(arguments={"image_root": string(), "cls_label_path": string(), "delimiter": string(optional=True)})
class ImageNetDataset(Dataset):
    """PaddleClas's ImageNetDataset: yields (transformed image, label).

    A file that cannot be read or decoded is skipped in training (logged, another random sample is
    returned, as PaddleClas does) unless MAX_UNREADABLE_IN_A_ROW fail in a row; with `skip_broken=False`
    (evaluation) it is a DataError naming the file. In a DataLoader worker a DataError is returned as a
    FailedSample instead of raised (see FailedSample).
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
        # images without a label are read here and refused by `check_labels` unless the run reads no labels
        self.images, self.labels, self.line_numbers = read_label_file(cls_label_path, image_root, delimiter, unlabeled=True)
        self.transform = transform_ops
        self.skip_broken = skip_broken

    def __len__(self) -> int:
        return len(self.images)

    def check_labels(self, class_num: int, unlabeled: bool = False) -> None:
        """Every label must be below the model's class_num; images without a label (UNLABELED) only where
        the run reads no labels (`unlabeled`: SSLD-style distillation with teacher-only losses)."""
        for label, line in zip(self.labels, self.line_numbers):
            if label >= class_num:
                raise ConfigError(f"{self.label_path}, line {line}: label {label} is not below Arch.class_num={class_num}")
            if label == UNLABELED and not unlabeled:
                raise ConfigError(f"{self.label_path}, line {line}: expected '<image path> <label>', the image has no "
                                  f"label (-1 or none); unlabelled images are read only by a DistillationModel run whose "
                                  f"Loss.Train reads no labels (e.g. DistillationDMLLoss, DistillationKLDivLoss)")

    def unlabeled_count(self) -> int:
        return sum(label == UNLABELED for label in self.labels)

    def load(self, index: int) -> np.ndarray:
        """The transformed image at `index`; errors name the file."""
        path = self.images[index]
        try:
            data = read_image_file(path)
            image = self.transform(data) if self.transform is not None else np.frombuffer(data, dtype=np.uint8)
        except Exception as error:  # decoding and augmentation raise many types; re-raised with the file
            raise ValueError(f"{path}: {error}") from error
        return to_chw(image)

    def __getitem__(self, index: int):
        try:
            return self.sample(index)
        except DataError as error:
            if get_worker_info() is None:
                raise
            return FailedSample(str(error))

    #: how to leave an unreadable image out of evaluation, in its error message
    removal_hint = "fix the file or remove the line"

    def position(self, index: int) -> str:
        """Where sample `index` is listed (in `label_path`), for messages."""
        return f"line {self.line_numbers[index]}"

    def sample(self, index: int):
        """(image, label) at `index`, or in training, when it is unreadable, at a random other index."""
        for _ in range(MAX_UNREADABLE_IN_A_ROW):
            try:
                return self.load(index), np.int64(self.labels[index])
            except ValueError as error:
                failure = f"({self.position(index)}) {error}"
                if not self.skip_broken:
                    raise DataError(f"{self.label_path}, {self.position(index)}: unreadable image {error} "
                                    f"(evaluation does not skip images: {self.removal_hint})") from error
                logger.warning("skipping unreadable training image %s", failure)
                index = random.randrange(len(self))
        raise DataError(f"{self.label_path}: {MAX_UNREADABLE_IN_A_ROW} unreadable training images in a row, the last "
                        f"{failure}; check the images and DataLoader.Train.dataset.image_root")


class IndexedDataset(Dataset):
    """Wraps a dataset so that each sample also carries its index (evaluation counts every image once
    across ranks by these indices)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        return sample if isinstance(sample, FailedSample) else (*sample, np.int64(index))
