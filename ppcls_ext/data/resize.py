"""The resize back-end of the transform ops: cv2 or PIL by PaddleClas's interpolation names."""
from __future__ import annotations

import random
from typing import Tuple, Union

import cv2
import numpy as np
from PIL import Image

from .autoaugment import ImageLike


def as_array(img: ImageLike, op: str) -> np.ndarray:
    """The image as a numpy array (a PIL image is converted; an array passes through uncopied)."""
    if isinstance(img, np.ndarray):
        return img
    if isinstance(img, Image.Image):
        return np.asarray(img)
    raise TypeError(f"{op}: expected an image as a numpy array or PIL image, got {type(img).__name__}")


class Resizer:
    """Resize with cv2 or PIL by interpolation name, as PaddleClas's UnifiedResize: 'random' picks
    bilinear or bicubic per call; None is bilinear; an int is used as the backend's own flag."""

    CV2 = {
        "nearest": (cv2.INTER_NEAREST,),
        "bilinear": (cv2.INTER_LINEAR,),
        "area": (cv2.INTER_AREA,),
        "bicubic": (cv2.INTER_CUBIC,),
        "lanczos": (cv2.INTER_LANCZOS4,),
        "random": (cv2.INTER_LINEAR, cv2.INTER_CUBIC),
    }
    PIL = {
        "nearest": (Image.Resampling.NEAREST,),
        "bilinear": (Image.Resampling.BILINEAR,),
        "bicubic": (Image.Resampling.BICUBIC,),
        "box": (Image.Resampling.BOX,),
        "lanczos": (Image.Resampling.LANCZOS,),
        "hamming": (Image.Resampling.HAMMING,),
        "random": (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC),
    }

    def __init__(self, interpolation: Union[str, int, None], backend: str, op: str):
        if not isinstance(backend, str) or backend.lower() not in ("cv2", "pil"):
            raise ValueError(f"{op}: backend must be 'cv2' or 'pil', got {backend!r}")
        self.backend = backend.lower()
        table = self.CV2 if self.backend == "cv2" else self.PIL
        if interpolation is None:
            self.flags = table["bilinear"]
        elif isinstance(interpolation, (int, np.integer)) and not isinstance(interpolation, bool):
            self.flags = (int(interpolation),)
        elif isinstance(interpolation, str) and interpolation.lower() in table:
            self.flags = table[interpolation.lower()]
        else:
            raise ValueError(f"{op}: interpolation {interpolation!r} is not available with backend "
                             f"{self.backend!r}; expected one of {', '.join(table)} or null")

    def __call__(self, img: ImageLike, size: Tuple[int, int], return_numpy: bool = True) -> ImageLike:
        """`img` resized to size = (width, height)."""
        flag = self.flags[0] if len(self.flags) == 1 else random.choice(self.flags)
        if self.backend == "cv2":
            return cv2.resize(as_array(img, "resize"), size, interpolation=flag)
        pil = img if isinstance(img, Image.Image) else Image.fromarray(img)
        resized = pil.resize(size, flag)
        return np.asarray(resized) if return_numpy else resized

