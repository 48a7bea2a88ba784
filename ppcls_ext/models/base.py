"""What every model in the zoo shares: stem -> stages -> head, multi-scale features, PaddleClas's
backbone API (`stop_after`, `update_res`, ...), and loading checkpoints written by PaddleClas's own
classes (whose parameter names differ from ours)."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import paddle
import paddle.nn as nn
from paddle.nn.initializer.lazy_init import lazy_init_helper

from .layers import build_format
from .numerics import Numerics

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


#: the tensor names of the leaf layers a key map pairs (conv, linear, batch norm)
_LEAF_TENSORS = ("weight", "bias", "_mean", "_variance")


def _nchw_to_nhwc(layer: nn.Layer, inputs: Tuple[paddle.Tensor, ...]) -> Tuple[paddle.Tensor, ...]:
    return (paddle.transpose(inputs[0], [0, 2, 3, 1]),) + tuple(inputs[1:])


# --- PaddleClas's backbone API (its TheseusLayer), generic over the families -----------------------------

_PATTERN_PART = re.compile(r"([A-Za-z_]\w*|\d+)((?:\[\d+\])*)")


def resolve_layer_pattern(root: nn.Layer, pattern: str) -> List[Tuple[nn.Layer, str]]:
    """The (parent, child name) steps from `root` down to the layer a PaddleClas pattern names: names
    joined by dots, list items by `[i]` (`stages[2][0].dw`) or by Paddle's own names (`stages.2.0.dw`).
    An unknown name is an error naming what exists there (PaddleClas only logs a warning and goes on)."""
    steps: List[Tuple[nn.Layer, str]] = []
    parent = root
    for part in str(pattern).split("."):
        match = _PATTERN_PART.fullmatch(part)
        if match is None:
            raise ValueError(f"layer pattern {pattern!r}: cannot read {part!r}; write names joined by dots, "
                             f"list items as [i], e.g. 'stages[2]' or 'stages[5][0].dw'")
        for name in [match.group(1)] + re.findall(r"\[(\d+)\]", match.group(2)):
            children = dict(parent.named_children())
            if name not in children:
                where = ".".join(n for _, n in steps) or type(root).__name__
                raise ValueError(f"{type(root).__name__} has no layer {pattern!r}: {where} has no {name!r}; "
                                 f"it has {', '.join(children) or 'no sub-layers'}")
            steps.append((parent, name))
            parent = children[name]
    return steps


def _layer_at(steps: Sequence[Tuple[nn.Layer, str]]) -> nn.Layer:
    parent, name = steps[-1]
    return getattr(parent, name)


def _tap_hook(layer: nn.Layer, inputs: Any, output: Any) -> Any:
    """Forward post-hook of a tapped layer: cuts the gradient (freeze_befor) and records the output under
    its keys in the model's sink. The state lives in attributes, so deep copies (EMA) keep working."""
    if layer._tap_detach:
        output = output.detach()
    for key in layer._tap_keys:
        layer._tap_sink[key] = output
    return output


def _model_output_hook(model: "ImageClassifier", inputs: Any, output: Any) -> Any:
    """Forward post-hook of the model: the stop layer's output instead of the model's (stop_after), then
    PaddleClas's result dict {"logits": ..., pattern: ...} when return patterns are set (update_res)."""
    sink = model._tap_sink
    if model._stop_pattern is not None:
        output = sink.pop(_STOP_KEY)
    if not model._return_patterns:
        sink.clear()
        return output
    result = {"logits": output}
    for pattern in model._return_patterns:
        result[pattern] = sink.pop(pattern)
    sink.clear()
    return result


_STOP_KEY = "\0stop_after"


class Head(nn.Layer):
    """Where PaddleClas's progressive trainer ramps dropout: on every sub-layer whose class is named `Head`
    it sets `_dropout.p = dropout_rate[stage]`. Holds the model's classifier dropout and its per-stage rates
    (ours reads the same list); it computes nothing itself."""

    def __init__(self, dropout: nn.Dropout, rates: Sequence[float]):
        super().__init__()
        self._dropout = dropout
        self.dropout_rate = [float(rate) for rate in rates]

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self._dropout(x)


class PaddleClasBackbone:
    """PaddleClas's backbone API (its `TheseusLayer`: what `RecModel`, `BackboneStopLayer` and users of
    intermediate features call), on a model with `stages` and `feature_info`. Same semantics as PaddleClas,
    except that a pattern naming no layer is an error instead of a warning."""

    _tap_sink: Dict[str, paddle.Tensor]
    _stop_pattern: Optional[str] = None
    _return_patterns: Tuple[str, ...] = ()

    @property
    def stages_pattern(self) -> List[str]:
        """The pattern of each multi-scale output (one per stride, as `feature_info`), for `return_stages`."""
        return [f"stages[{item.stage}]" for item in self.feature_info]

    def _ensure_output_hook(self) -> None:
        if "_tap_sink" not in self.__dict__:
            self._tap_sink = {}
            self.register_forward_post_hook(_model_output_hook)

    def _tap(self, layer: nn.Layer, key: Optional[str] = None, detach: bool = False) -> None:
        self._ensure_output_hook()
        if "_tap_keys" not in layer.__dict__:
            layer._tap_keys, layer._tap_detach, layer._tap_sink = [], False, self._tap_sink
            layer.register_forward_post_hook(_tap_hook)
        if key is not None and key not in layer._tap_keys:
            layer._tap_keys.append(key)
        layer._tap_detach = layer._tap_detach or detach

    def stop_after(self, stop_layer_name: str) -> bool:
        """Stop forward (and backward) after the named layer: every layer after it, at each level of its
        path, becomes an Identity (their parameters are dropped, as PaddleClas does), and the model returns
        that layer's output. Residual additions around it are switched off, as their output is discarded."""
        steps = resolve_layer_pattern(self, stop_layer_name)
        for parent, name in steps:
            following = False
            for child_name, _ in list(parent.named_children()):
                if following:
                    setattr(parent, child_name, nn.Identity())
                following = following or child_name == name
            if parent is not self and getattr(parent, "has_residual", False):
                parent.has_residual = False
        self._tap(_layer_at(steps), _STOP_KEY)
        self._stop_pattern = stop_layer_name
        return True

    def update_res(self, return_patterns: Union[str, Sequence[str]]) -> List[str]:
        """Also return the outputs of the named layers: the model then returns PaddleClas's dict
        {"logits": output, pattern: that layer's output, ...}. Replaces earlier patterns; returns them."""
        patterns = [return_patterns] if isinstance(return_patterns, str) else list(return_patterns)
        layers = [_layer_at(resolve_layer_pattern(self, pattern)) for pattern in patterns]
        for layer in self.sublayers():
            if "_tap_keys" in layer.__dict__:
                layer._tap_keys[:] = [key for key in layer._tap_keys if key == _STOP_KEY]
        for pattern, layer in zip(patterns, layers):
            self._tap(layer, pattern)
        self._return_patterns = tuple(patterns)
        return patterns

    def freeze_befor(self, layer_name: str) -> bool:
        """Freeze the named layer and every layer before it (PaddleClas's spelling); gradients stop at its
        output. "Before" is registration order at each level of the path, as `stop_after`'s "after":
        `stages[3]` freezes the stem and stages 0-3. Frozen parameters take no gradient and so get no
        optimizer state, and the frozen layers run in evaluation mode while the model trains (batch-norm
        statistics kept, no dropout or drop-path); PaddleClas only cuts the gradient. Parameter names are
        unchanged (PaddleClas wraps the layer instead)."""
        steps = resolve_layer_pattern(self, layer_name)
        for parent, name in steps:
            for child_name, child in parent.named_children():
                if child_name == name:
                    break
                freeze_layer(child)
        freeze_layer(_layer_at(steps))
        self._tap(_layer_at(steps), detach=True)
        return True

    def set_lr_mult_list(self, lr_mult_list: Sequence[float]) -> List[float]:
        """PaddleClas's `lr_mult_list`: multipliers of the optimizer's learning rate for the stem and each
        stage, in that order (the head and classifier keep the optimizer's rate), stored as Paddle's
        `ParamAttr(learning_rate=...)` stores them. A part with multiplier 0 takes no gradient and gets no
        optimizer state: its weights stay as with PaddleClas's rate 0 (its batch norms still track
        statistics, as there); `freeze_befor` freezes completely. Returns the multipliers."""
        parts = [self.stem] + list(self.stages)
        multipliers = list(lr_mult_list) if isinstance(lr_mult_list, (list, tuple)) else None
        if multipliers is None or len(multipliers) != len(parts):
            raise ValueError(f"lr_mult_list: {type(self).__name__} takes {len(parts)} multipliers (the stem, then "
                             f"{len(parts) - 1} stages), got {lr_mult_list!r}")
        for index, value in enumerate(multipliers):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"lr_mult_list[{index}]: expected a number >= 0, got {value!r}")
        for part, value in zip(parts, multipliers):
            for param in part.parameters():
                param.optimize_attr["learning_rate"] = float(value)
                if value == 0:
                    param.stop_gradient = True
        return [float(value) for value in multipliers]

    def upgrade_sublayer(self, layer_name_pattern: Union[str, Sequence[str]],
                         handle_func: Callable[[nn.Layer, str], nn.Layer]) -> List[str]:
        """Replace each named layer by `handle_func(layer, pattern)`; returns the patterns replaced."""
        patterns = [layer_name_pattern] if isinstance(layer_name_pattern, str) else list(layer_name_pattern)
        for pattern in patterns:
            steps = resolve_layer_pattern(self, pattern)
            parent, name = steps[-1]
            setattr(parent, name, handle_func(getattr(parent, name), pattern))
        return patterns

    def init_net(self, return_patterns: Optional[Sequence[str]] = None,
                 return_stages: Union[None, bool, int, Sequence[int]] = None,
                 freeze_befor: Optional[str] = None, stop_after: Optional[str] = None,
                 lr_mult_list: Optional[Sequence[float]] = None) -> None:
        """PaddleClas's backbone keywords (Arch keys): `return_stages` (True, an index or indices into
        `stages_pattern`) takes precedence over `return_patterns`, as in PaddleClas."""
        if lr_mult_list is not None:
            self.set_lr_mult_list(lr_mult_list)
        if return_stages is not None and return_stages is not False:
            if return_stages is True:
                indices = list(range(len(self.stages_pattern)))
            else:
                indices = [return_stages] if isinstance(return_stages, int) else list(return_stages)
            bad = [i for i in indices if not 0 <= i < len(self.stages_pattern)]
            if bad:
                raise ValueError(f"return_stages {bad} out of range; stages_pattern is {self.stages_pattern}")
            return_patterns = [self.stages_pattern[i] for i in indices]
        if return_patterns:
            self.update_res(return_patterns)
        if freeze_befor is not None:
            self.freeze_befor(freeze_befor)
        if stop_after is not None:
            self.stop_after(stop_after)

    def set_stage_dropout(self, rates: Sequence[float]) -> None:
        """Per-stage classifier dropout for progressive learning (PaddleClas's list-valued `dropout_rate`):
        starts at the first rate; a sub-layer `Head` carries the list to PaddleClas's trainer and ours."""
        rates = [float(rate) for rate in rates]
        if not rates or not all(0.0 <= rate < 1.0 for rate in rates):
            raise ValueError(f"dropout: per-stage rates must be in [0, 1), got {rates}")
        self.dropout.p = rates[0]
        self.stage_dropout = Head(self.dropout, rates)


def _run_in_eval_mode(layer: nn.Layer, inputs: Any) -> None:
    """Forward pre-hook of each layer of a frozen part: it runs in evaluation mode, whatever mode the model
    was put in (`Layer.train()` sets every sub-layer's `training` directly, wrappers included). On every
    layer, not only the part's root: containers such as `stages` (a LayerList) are never called."""
    layer.training = False


def freeze_layer(layer: nn.Layer) -> None:
    """Freeze `layer`: its parameters stop taking gradients and its layers always run in evaluation mode."""
    for param in layer.parameters():
        param.stop_gradient = True
    for sublayer in layer.sublayers(include_self=True):
        if not getattr(sublayer, "_frozen", False):
            sublayer._frozen = True
            sublayer.register_forward_pre_hook(_run_in_eval_mode)


def stage_dropout_rates(model: nn.Layer) -> Optional[List[float]]:
    """The per-stage dropout rates a model carries for progressive learning (see `Head`), if any."""
    for layer in model.sublayers(include_self=True):
        if type(layer).__name__ == "Head" and hasattr(layer, "dropout_rate") and hasattr(layer, "_dropout"):
            return list(layer.dropout_rate)
    return None


class ImageClassifier(PaddleClasBackbone, nn.Layer):
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

    # --- numerics and checkpoints written by PaddleClas ----------------------------------------------

    def numerics(self) -> Optional[Numerics]:
        """The numerics the model was built with, which its weights must match (see `numerics.py`); None
        for a model that takes no such build options."""
        return None

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
            if not found and any(f"{ours_prefix}.".startswith(p) for p in self.classifier_prefixes):
                # no classifier (class_num=0): name their head's tensors as ours, for the loader to skip
                mapping.update({f"{theirs_prefix}.{leaf}": f"{ours_prefix}.{leaf}" for leaf in _LEAF_TENSORS})
            elif not found:
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
