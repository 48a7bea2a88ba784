"""A `transform_ops` list as one callable: `build_transforms` builds PaddleClas's op list from the registry
and `Compose` runs it, letting an op take the decoding over where it offers to (`fuse_with_decode`).

The ops live in their rooms (decoding: `decoding`; resize, crops, flip, normalisation, erasing:
`image_ops`; policies: `autoaugment`, `randaugment`) and are importable from here too, as PaddleClas
integrations and user code have imported them.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Protocol, runtime_checkable

from ..config import ConfigError
from .autoaugment import AutoAugment
from .decoding import DecodeImage, DecodeRandCrop, reduction_factor
from .image_ops import (CropImage, CropImageAtRatio, NormalizeImage, RandCropImage, RandFlipImage, RandomErasing,
                        ResizeImage, ToCHWImage)
from .randaugment import RandAugment, RandAugmentV2
from .registries import TRANSFORM_OPS

__all__ = ["TRANSFORM_OPS", "AutoAugment", "Compose", "CropImage", "CropImageAtRatio", "DecodeImage", "DecodeRandCrop",
           "FusesWithDecode", "NormalizeImage", "RandAugment", "RandAugmentV2", "RandCropImage", "RandFlipImage",
           "RandomErasing", "ResizeImage", "ToCHWImage", "build_transforms", "reduction_factor"]

@runtime_checkable
class FusesWithDecode(Protocol):
    """An op that can take over the DecodeImage right before it: `fuse_with_decode(decode)` returns the one
    step that does both (with the two ops' results), or None when it cannot with that decoder."""

    def fuse_with_decode(self, decode: DecodeImage) -> Optional[Callable[[bytes], Any]]: ...


class Compose:
    """Apply ops in order. `find(op_type)` returns the ops of a class, so callers (e.g. a progressive
    schedule changing `RandCropImage.size`) never depend on positions. `steps` are the ops as run: where
    an op offers to fuse with the DecodeImage before it, the fused step replaces both."""

    def __init__(self, ops: Iterable[Any]):
        self.ops: List[Any] = list(ops)
        self.steps: List[Any] = self._plan(self.ops)

    @staticmethod
    def _plan(ops: List[Any]) -> List[Any]:
        steps: List[Any] = []
        for op in ops:
            previous = steps[-1] if steps else None
            fused = (op.fuse_with_decode(previous)
                     if isinstance(previous, DecodeImage) and isinstance(op, FusesWithDecode) else None)
            if fused is not None:
                steps[-1] = fused
            else:
                steps.append(op)
        return steps

    def __call__(self, img: Any) -> Any:
        for step in self.steps:
            img = step(img)
        return img

    def find(self, op_type: type) -> List[Any]:
        return [op for op in self.ops if isinstance(op, op_type)]

    def __repr__(self) -> str:
        return f"Compose([{', '.join(type(op).__name__ for op in self.ops)}])"


def build_transforms(op_configs: Optional[list], where: str) -> Compose:
    """A Compose from PaddleClas's `transform_ops` list, e.g. [{"DecodeImage": {"to_rgb": True}},
    {"ToCHWImage": None}]; `where` is the config path used in error messages."""
    if op_configs is None:
        return Compose([])
    if not isinstance(op_configs, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of ops like [{{DecodeImage: {{...}}}}, ...], got {op_configs!r}")
    return Compose(TRANSFORM_OPS.build(item, f"{where}[{index}]") for index, item in enumerate(op_configs))
