"""What every model in the zoo shares: stem -> stages -> head, multi-scale features, and loading
checkpoints written by PaddleClas's own classes (whose parameter names differ from ours)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Sequence, Tuple, TypeVar

import paddle
import paddle.nn as nn
from paddle.nn.initializer.lazy_init import lazy_init_helper

from .layers import build_format

Builder = TypeVar("Builder", bound=Callable[..., nn.Layer])


def initialize_once(build: Builder) -> Builder:
    """Decorate a model builder so that each parameter is initialised once, by the model's own
    initialiser, instead of by Paddle's default first (2-3x faster for the large variants). Inside a
    caller's `paddle.LazyGuard` parameters stay lazy, as the caller asked."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        if lazy_init_helper().state:
            return build(*args, **kwargs)
        with paddle.LazyGuard():
            model = build(*args, **kwargs)
        for param in model.parameters():
            param.initialize()
        return model

    return wrapper


@dataclass(frozen=True)
class FeatureInfo:
    """One multi-scale output: the stage it comes from, its stride w.r.t. the input and its width."""

    stage: int
    stride: int
    channels: int


def stage_feature_info(stem_stride: int, stage_strides: Sequence[int], stage_channels: Sequence[int]) -> List[FeatureInfo]:
    """For each distinct total stride, the last stage that produces it (where a detector would tap)."""
    info: Dict[int, FeatureInfo] = {}
    total = stem_stride
    for index, (stride, channels) in enumerate(zip(stage_strides, stage_channels)):
        total *= stride
        info[total] = FeatureInfo(stage=index, stride=total, channels=channels)
    return list(info.values())


def select_features(info: Sequence[FeatureInfo], strides: Iterable[int]) -> List[FeatureInfo]:
    """The entries of `info` for the requested strides, in the requested order."""
    by_stride = {item.stride: item for item in info}
    chosen = []
    for stride in strides:
        if stride not in by_stride:
            raise ValueError(f"no stage has stride {stride}; available strides: {sorted(by_stride)}")
        chosen.append(by_stride[stride])
    return chosen


def run_stages(x: paddle.Tensor, stem: nn.Layer, stages: Sequence[nn.Layer], taps: Sequence[int]) -> List[paddle.Tensor]:
    """Run stem and stages up to the last tapped stage, returning the tapped stage outputs in `taps` order."""
    outputs: Dict[int, paddle.Tensor] = {}
    x = stem(x)
    for index, stage in enumerate(stages[: max(taps) + 1]):
        x = stage(x)
        if index in taps:
            outputs[index] = x
    return [outputs[index] for index in taps]


def _nchw_to_nhwc(layer: nn.Layer, inputs: Tuple[paddle.Tensor, ...]) -> Tuple[paddle.Tensor, ...]:
    return (paddle.transpose(inputs[0], [0, 2, 3, 1]),) + tuple(inputs[1:])


class ImageClassifier(nn.Layer):
    """Base class of the zoo. Subclasses create `stem`, `stages` (a LayerList) and their head, call
    `_set_stage_layout` once `stem` exists, and implement `forward_features`, `forward_head` and `paddleclas_key_map`."""

    #: parameters whose shape depends on class_num (skipped when loading weights for another class count)
    classifier_prefixes: Tuple[str, ...] = ("classifier.",)

    def __init__(self):
        super().__init__()
        self.data_format = build_format()

    def _set_stage_layout(self, stem_stride: int, stage_strides: Sequence[int], stage_channels: Sequence[int]) -> None:
        self._feature_info = stage_feature_info(stem_stride, stage_strides, stage_channels)
        if self.data_format == "NHWC":  # inputs stay NCHW: transposed once, before the stem
            self.stem.register_forward_pre_hook(_nchw_to_nhwc)

    @property
    def feature_info(self) -> List[FeatureInfo]:
        """Multi-scale outputs available from `forward_stages`, one per stride."""
        return list(self._feature_info)

    def forward_stages(self, x: paddle.Tensor, strides: Sequence[int] = (4, 8, 16, 32)) -> List[paddle.Tensor]:
        """Feature maps at the requested strides (e.g. for an FPN); see `feature_info` for their widths."""
        taps = [item.stage for item in select_features(self._feature_info, strides)]
        return run_stages(x, self.stem, self.stages, taps)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        raise NotImplementedError

    def forward_head(self, x: paddle.Tensor) -> paddle.Tensor:
        raise NotImplementedError

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- memory layout ------------------------------------------------------------------------------

    #: "NCHW", or "NHWC" for a model built inside `layers.building_in("NHWC")` (channels-last, the layout
    #: NVIDIA tensor cores run convolutions in): its layers get Paddle's `data_format="NHWC"`, inputs stay
    #: NCHW and are transposed once, before the stem, and stage outputs (`forward_stages`) are NHWC.
    #: Weights are layout-free: checkpoints and outputs are unchanged.
    data_format = "NCHW"

    # --- checkpoints written by PaddleClas -------------------------------------------------------------

    def paddleclas_key_map(self) -> Dict[str, str]:
        """PaddleClas state-dict key -> our key, for the same architecture built by PaddleClas."""
        raise NotImplementedError

    def _leaf_key_map(self, module_pairs: Iterable[Tuple[str, str]]) -> Dict[str, str]:
        """Expand (their module path, our module path) pairs into a key map over every tensor of our module.
        Module paths name leaf layers (conv, BN, linear), whose tensors are named alike in both."""
        ours = self.state_dict()
        mapping: Dict[str, str] = {}
        for theirs_prefix, ours_prefix in module_pairs:
            found = False
            for key in ours:
                if key.startswith(ours_prefix + ".") and "." not in key[len(ours_prefix) + 1 :]:
                    mapping[theirs_prefix + key[len(ours_prefix) :]] = key
                    found = True
            if not found:
                raise KeyError(f"{type(self).__name__} has no module {ours_prefix!r} (mapped from {theirs_prefix!r})")
        return mapping

    def convert_state_dict(self, state_dict: Mapping[str, object]) -> Dict[str, object]:
        """Return `state_dict` with our key names: PaddleClas-layout dicts are renamed, ours pass through.
        Keys that belong to neither layout are kept as they are, so the caller's checks can name them."""
        ours = set(self.state_dict().keys())
        if all(key in ours for key in state_dict):
            return dict(state_dict)
        key_map = self.paddleclas_key_map()
        if not any(key in key_map for key in state_dict):
            return dict(state_dict)
        return {key_map.get(key, key): value for key, value in state_dict.items()}

    def to_paddleclas_state_dict(self) -> Dict[str, paddle.Tensor]:
        """Our weights under PaddleClas's key names, e.g. to use a model trained here in PaddleClas."""
        ours_to_theirs = {ours: theirs for theirs, ours in self.paddleclas_key_map().items()}
        return {ours_to_theirs[key]: value for key, value in self.state_dict().items()}

    def set_state_dict(self, state_dict, use_structured_name: bool = True):
        """As `nn.Layer.set_state_dict`, also accepting checkpoints in PaddleClas's layout (so PaddleClas's
        own `load_dygraph_pretrain`, which calls `set_dict`, loads official weights into our models)."""
        if use_structured_name:
            state_dict = self.convert_state_dict(state_dict)
        return super().set_state_dict(state_dict, use_structured_name=use_structured_name)

    set_dict = set_state_dict
    load_dict = set_state_dict


class FeatureExtractor(nn.Layer):
    """A zoo model without its head, returning its stage outputs at the requested strides (a
    detection/segmentation backbone). `feature_info` lists the stride and width of each output."""

    def __init__(self, model: ImageClassifier, strides: Sequence[int] = (4, 8, 16, 32)):
        super().__init__()
        self.feature_info = select_features(model.feature_info, strides)
        self._taps = [item.stage for item in self.feature_info]
        self.stem = model.stem
        self.stages = nn.LayerList(list(model.stages)[: max(self._taps) + 1])

    def forward(self, x: paddle.Tensor) -> List[paddle.Tensor]:
        return run_stages(x, self.stem, self.stages, self._taps)
