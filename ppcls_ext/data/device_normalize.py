"""Normalising on the device: loader workers ship uint8 CHW batches (a quarter of float32's bytes to
collate, share and copy to the GPU) and the training/eval loop normalises each batch where it lands.

Switched on per loader with `DataLoader.<Train|Eval>.loader.normalize_on_device: True`; PaddleClas's
NormalizeImage (+ ToCHWImage) in the workers stays the default. The transform list is unchanged (exports
and inference keep their NormalizeImage): the loader replaces its last NormalizeImage by a uint8 CHW
layout step and attaches the batch normaliser, which the loop applies with

    images = batch_normalizer(loader)(images)

Normalisation is affine, so mixup / cutmix (which blend uint8 batches as float32) commute with it.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import paddle

from ..config import ConfigError
from .image_ops import NormalizeImage, ToCHWImage
from .transforms import Compose

#: the loader attribute holding its batch normaliser
ATTRIBUTE = "device_normalize"


class ToCHWUint8:
    """Stands in for the NormalizeImage moved to the device: HWC uint8 -> contiguous CHW uint8."""

    def __call__(self, img) -> np.ndarray:
        array = np.asarray(img)
        if array.ndim != 3 or array.dtype != np.uint8:
            raise ValueError(f"normalize_on_device: expected an HWC uint8 image before NormalizeImage, got "
                             f"{array.dtype} of shape {array.shape}")
        return np.ascontiguousarray(array.transpose((2, 0, 1)))


class DeviceNormalize:
    """NormalizeImage's (x * scale - mean) / std per channel on an NCHW batch (uint8 or float), computed in
    float32 where the batch is, with the same folded constants as NormalizeImage."""

    def __init__(self, normalize: NormalizeImage):
        mul, add = normalize.affine()
        self.mul, self.add = mul.reshape(1, -1, 1, 1), add.reshape(1, -1, 1, 1)
        self._constants: Optional[Tuple[paddle.Tensor, paddle.Tensor]] = None

    def __call__(self, images: paddle.Tensor) -> paddle.Tensor:
        if self._constants is None or self._constants[0].place != images.place:
            self._constants = (paddle.to_tensor(self.mul, place=images.place), paddle.to_tensor(self.add, place=images.place))
        mul, add = self._constants
        return images.astype("float32") * mul + add


def split_normalization(transform: Compose, where: str) -> Tuple[Compose, DeviceNormalize]:
    """`transform` with its NormalizeImage replaced by ToCHWUint8, and the DeviceNormalize for the batches.
    The NormalizeImage must be the last op (a ToCHWImage may follow) and plain (3 channels, float32):
    anything after it would see uint8 pixels instead of normalised values."""
    positions = [i for i, op in enumerate(transform.ops) if isinstance(op, NormalizeImage)]
    if not positions:
        raise ConfigError(f"{where}: normalize_on_device needs a NormalizeImage in transform_ops")
    position = positions[-1]
    normalize = transform.ops[position]
    after = transform.ops[position + 1:]
    if any(not isinstance(op, ToCHWImage) for op in after):
        raise ConfigError(f"{where}: normalize_on_device needs NormalizeImage to be the last op (ToCHWImage may "
                          f"follow); found {', '.join(type(op).__name__ for op in after)} after it")
    if normalize.channel_num != 3 or normalize.output_dtype is not np.float32:
        raise ConfigError(f"{where}: normalize_on_device supports NormalizeImage with channel_num 3 and float32 "
                          f"output only")
    return Compose(transform.ops[:position] + [ToCHWUint8()]), DeviceNormalize(normalize)


def batch_normalizer(loader) -> Callable[[paddle.Tensor], paddle.Tensor]:
    """What the loop applies to each image batch of `loader`: its DeviceNormalize, or nothing."""
    return getattr(loader, ATTRIBUTE, None) or (lambda images: images)
