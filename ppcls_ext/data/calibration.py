"""Calibration images for int8: real images, read with the transforms the model is evaluated with, in a
fixed order, as float32 NCHW batches of one size; and a fingerprint of them for cache keys.

A source is either a config (the images of `DataLoader.Eval.dataset`, its label file's order, its
`transform_ops`) or a folder of images (walked in sorted order; `transforms=` gives the ops, PaddleClas's
deploy `PreProcess.transform_ops` form, DecodeImage added when absent). `skip` leaves out the first images,
so that a caller can keep some apart from calibration (the accuracy gate of quant_post_static holds out
the images after the calibration ones).

Every image must come out of the transforms with one shape. Given `image_shape` (C, H, W), an image of
another height or width is resized to it (bilinear; resizing commutes with the per-channel normalisation,
so this equals resizing before NormalizeImage); without it, or with another channel count, mixed shapes
are a DataError naming two files that differ.

It sits in the data layer: the int8 tool (`ppcls_ext.quant`) and deployment (TensorRT calibration) both read it.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import cv2
import numpy as np

from ..config import ConfigError, section, single_entry
from ..data.dataset import DataError, read_label_file, to_chw
from ..data.image_files import walk_images
from ..data.image_io import read_image_file
from ..data.transforms import build_transforms

logger = logging.getLogger("ppcls_ext")

EVAL_DATASET = "DataLoader.Eval.dataset"
#: what a folder's transforms start with when they do not decode themselves (as the deploy predictor does)
DECODE = {"DecodeImage": {"to_rgb": True, "channel_first": False}}

Source = Union[Mapping[str, Any], str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ImageSet:
    """Image files in their fixed order, their labels (None for a folder: no labels), the transform
    from a file's bytes to the model's input, and where they came from (for messages)."""

    files: List[str]
    labels: Optional[List[int]]
    transform: Callable[[bytes], np.ndarray]
    where: str

    def __len__(self) -> int:
        return len(self.files)


def _with_decode(ops: Sequence[Any], where: str) -> List[Any]:
    """`ops` with a DecodeImage in front unless the list starts with one."""
    ops = list(ops)
    first = single_entry(ops[0], f"{where}[0]")[0] if ops else None
    return ops if first == "DecodeImage" else [DECODE] + ops


def image_set(source: Source, transforms: Optional[Sequence[Any]] = None) -> ImageSet:
    """The images of `source`: a config's `DataLoader.Eval.dataset` (label file order and labels; its
    transform_ops unless `transforms` is given) or a folder of images (sorted; `transforms` required)."""
    if isinstance(source, Mapping):
        dataset = section(source, EVAL_DATASET)
        name = dataset.get("name", "ImageNetDataset")
        if name != "ImageNetDataset":
            raise ConfigError(f"{EVAL_DATASET}.name: calibration reads ImageNetDataset lists, got {name!r}")
        label_path = section(dataset, "cls_label_path")
        image_root = section(dataset, "image_root")
        files, labels, _ = read_label_file(label_path, image_root, dataset.get("delimiter"))
        where = f"{EVAL_DATASET}.transform_ops" if transforms is None else "transforms"
        ops = dataset.get("transform_ops") if transforms is None else transforms
        if not ops:
            raise ConfigError(f"{where}: calibration needs the evaluation transforms (decode, resize/crop, normalize)")
        return ImageSet(files, labels, build_transforms(_with_decode(ops, where), where), f"{label_path}")
    folder = os.fspath(source)
    if not os.path.isdir(folder):
        raise ConfigError(f"calibration images: {folder} is not a folder of images "
                          f"({'not a directory' if os.path.exists(folder) else 'no such directory'})")
    if not transforms:
        raise ConfigError(f"calibration images in {folder}: give the preprocessing as transforms= (PreProcess.transform_ops)")
    files = walk_images(folder)
    return ImageSet(files, None, build_transforms(_with_decode(transforms, "transforms"), "transforms"), folder)


def _read(images: ImageSet, index: int) -> np.ndarray:
    path = images.files[index]
    try:
        array = to_chw(np.asarray(images.transform(read_image_file(path))))
    except Exception as error:  # decoders and ops raise many types; re-raised naming the file
        raise DataError(f"{images.where}: calibration image {path} cannot be read: {error}") from error
    if array.ndim != 3:
        raise DataError(f"{images.where}: the transforms turn {path} into shape {array.shape}, expected C x H x W")
    return array.astype(np.float32, copy=False)


def _resized(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """A CHW float array resized bilinearly to height x width."""
    hwc = np.ascontiguousarray(array.transpose((1, 2, 0)))
    resized = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized.reshape(height, width, -1).transpose((2, 0, 1)))


def load_images(images: ImageSet, start: int, count: int, image_shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """`count` images from position `start` of `images`, transformed, as one float32 NCHW array of one shape
    (see the module's note on sizes). Fewer images than that: a DataError saying how many there are."""
    if start < 0 or count < 1:
        raise ConfigError(f"calibration images: need start >= 0 and count >= 1, got start {start}, count {count}")
    if start + count > len(images):
        raise DataError(f"{images.where} has {len(images)} images; {count} are needed after the first {start} "
                        f"({start + count} in all): add images or ask for fewer")
    target = tuple(int(d) for d in image_shape) if image_shape is not None else None
    if target is not None and len(target) != 3:
        raise ConfigError(f"calibration image_shape must be [C, H, W], got {list(image_shape)}")
    arrays: List[np.ndarray] = []
    first_file = None
    resized = 0
    for index in range(start, start + count):
        array = _read(images, index)
        reference = target or (arrays[0].shape if arrays else array.shape)
        if array.shape != reference:
            path = images.files[index]
            if target is None or array.shape[0] != target[0]:
                against = f"image_shape {list(target)}" if target else f"{first_file} ({'x'.join(map(str, reference))})"
                raise DataError(f"{images.where}: calibration images differ in shape: {path} gives "
                                f"{'x'.join(map(str, array.shape))}, {against}; end the transforms with a fixed-size op "
                                "(ResizeImage size, CropImage) or give image_shape")
            array = _resized(array, target[1], target[2])
            resized += 1
        first_file = first_file or images.files[index]
        arrays.append(array)
    if resized:
        logger.info("calibration: %d of %d images resized to %s (the transforms give other sizes)", resized, count,
                    "x".join(map(str, target)))
    return np.stack(arrays)


def calibration_batches(source: Source, *, batch_size: int, num_batches: int, image_shape: Optional[Sequence[int]] = None,
                        skip: int = 0, transforms: Optional[Sequence[Any]] = None) -> List[np.ndarray]:
    """`num_batches` float32 NCHW batches of exactly `batch_size` images each, of one shape: the images of
    `source` (a config's DataLoader.Eval or a folder, see `image_set`) after the first `skip`, in order."""
    for name, value in (("batch_size", batch_size), ("num_batches", num_batches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"calibration {name} must be a positive integer, got {value!r}")
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ConfigError(f"calibration skip must be an integer >= 0, got {skip!r}")
    images = load_images(image_set(source, transforms), skip, batch_size * num_batches, image_shape)
    return [images[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]


def fingerprint(batches: Sequence[np.ndarray]) -> str:
    """SHA-256 (hex) of the batches' count, dtypes, shapes and bytes: equal exactly when the data is."""
    digest = hashlib.sha256(f"{len(batches)} batches\n".encode())
    for batch in batches:
        array = np.ascontiguousarray(batch)
        digest.update(f"{array.dtype.str} {array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
