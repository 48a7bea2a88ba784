"""MicroNet's deploy form: the same function as the training form (`micronet.MicroNet`), rebuilt from its
weights as a short chain of large standard operators for inference engines (Paddle Inference, ONNX Runtime
through paddle2onnx, TensorRT). docs/micronet-speed.md has the measurements behind each choice.

What the rewrite does, all exact up to float rounding:

- Batch norms are folded into the convolution / linear layer before them; ReLU6 into the convolution
  before it (ONNX Runtime and oneDNN fuse conv + clip).
- Channel shuffles cost nothing: a fixed channel permutation is a relabelling of the tensor that follows.
  Every tensor is kept in some stored channel order; depthwise and dense convolutions, ReLU6 and the
  coefficient layers of Dynamic Shift-Max take any order (their weights are permuted instead), and a
  grouped convolution takes any order that keeps its groups contiguous. Dynamic Shift-Max gathers its
  input anyway (see below), so it writes its output in the order the next grouped convolution (or the
  residual addition) needs; a separate gather is left only where no Shift-Max comes before such a point.
- Dynamic Shift-Max is two gathers of its input (x in the stored order wanted downstream, and x shifted
  circularly across groups), the coefficient branch pool -> linear -> relu -> linear -> max/min bounds (the
  hard-sigmoid's slope, the coefficient scale and the init offsets folded into the second linear layer),
  and max_k(a_k * x + b_k * shifted) as broadcast products. Gathering x too costs one copy and keeps both
  operands of every product in the same plain memory format, which Paddle Inference's oneDNN kernels need
  (mixed formats run oneDNN's reference kernel, 50-100x slower).
- Every reshape has its channel count written out (only batch and image size stay dynamic), so no
  Shape/Slice/Concat chains reach the exported graph.

`micronet_deploy_form(model)` builds it; `models.deploy.deploy_form` (what tools/export_model.py exports)
calls it for the MicroNet models it can express (`expressible`), the generic batch-norm folding for
everything else.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .deploy import fold_batch_norms
from .layers import ConvBNAct, maximum, minimum
from .micronet import (
    ChannelShuffle,
    DepthSpatialSepConv,
    DYMicroBlock,
    DYShiftMax,
    MicroNet,
    MicroNetStem,
    SpatialSepConvSF,
    SwishLinear,
)

# --- the inference graph as data: steps over one tensor, numpy weights ------------------------------


@dataclass
class Conv:
    """A convolution with bias (batch norm folded), optionally followed by ReLU6."""

    weight: np.ndarray  # (out, in / groups, kh, kw)
    bias: np.ndarray
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    groups: int
    relu6: bool = False


@dataclass
class Shuffle:
    """A fixed channel permutation of the training form: output channel i = input channel perm[i]."""

    perm: np.ndarray


@dataclass
class Gather:
    """A channel gather that the deploy form executes: output channel i = stored input channel index[i]."""

    index: np.ndarray


@dataclass
class Relu6:
    pass


@dataclass
class ShiftMax:
    """Dynamic Shift-Max: with x = input[:, source] (the input itself when source is None), coefficients
    min(max(expand(relu(reduce(mean(x)))), lower), upper) split into [a_1, b_1(, a_2, b_2)]; output
    max_k(a_k * x + b_k * input[:, shift])."""

    reduce_weight: np.ndarray  # (C, R), Paddle's [in, out]
    reduce_bias: np.ndarray
    expand_weight: np.ndarray  # (R, 2 * branches * C): the hard-sigmoid's slope, the scale and offsets folded in
    expand_bias: np.ndarray
    lower: np.ndarray  # (2 * branches * C,): init value - act_max
    upper: np.ndarray  # init value + act_max
    shift: np.ndarray  # (C,): input[:, shift] is the shifted tensor
    branches: int
    source: Optional[np.ndarray] = None


@dataclass
class Residual:
    """out = steps(x) + x."""

    steps: List["Step"]


@dataclass
class Head:
    """ReLU6 -> global average pool -> hardswish, then each (weight [in, out], bias) linear layer followed by
    hardswish (the embedding, then the classifier when the model has one)."""

    linears: List[Tuple[np.ndarray, np.ndarray]]


Step = Union[Conv, Shuffle, Gather, Relu6, ShiftMax, Residual, Head]


# --- reading the training form ------------------------------------------------------------------------


def _numpy(tensor: paddle.Tensor) -> np.ndarray:
    return np.array(tensor.numpy(), dtype=np.float32)


def _conv(block: ConvBNAct) -> Conv:
    """A (batch-norm folded) ConvBNAct without activation as a Conv step. (Paddle's Conv2D keeps its
    stride, padding, dilation and groups in private attributes only.)"""
    conv = block.conv
    if not isinstance(block.bn, nn.Identity) or not isinstance(block.act, nn.Identity):
        raise NotImplementedError("expected a folded convolution without activation")
    padding = conv._padding
    if isinstance(padding, str) or len(padding) != 2 or list(conv._dilation) != [1, 1] or conv._padding_mode != "zeros":
        raise NotImplementedError(f"unsupported convolution {conv}")
    weight = _numpy(conv.weight)
    bias = _numpy(conv.bias) if conv.bias is not None else np.zeros(weight.shape[0], np.float32)
    return Conv(weight, bias, tuple(int(s) for s in conv._stride), tuple(int(p) for p in padding), int(conv._groups))


def _shift_max(layer: DYShiftMax) -> ShiftMax:
    """A DYShiftMax after `DYShiftMax.to_deploy_form`, whose expand layer computes z * 2m * slope + c for
    act_max m and init value c: its coefficients are that, clipped to [c - m, c + m]."""
    if not layer.deploy_form:
        raise NotImplementedError("expected a DYShiftMax in deploy form")
    inits = [v for pair in zip(layer.init_a, layer.init_b) for v in pair]
    offsets = np.repeat(np.array(inits, np.float32), layer.expand.weight.shape[1] // len(inits))
    return ShiftMax(_numpy(layer.reduce.weight), _numpy(layer.reduce.bias), _numpy(layer.expand.weight),
                    _numpy(layer.expand.bias), offsets - layer.act_max, offsets + layer.act_max,
                    layer.shift.numpy().astype(np.int64), layer.branches)


def _steps_of(layer: nn.Layer) -> List[Step]:
    if isinstance(layer, ConvBNAct):
        return [_conv(layer)]
    if isinstance(layer, (DepthSpatialSepConv, SpatialSepConvSF)):
        steps = [_conv(layer.conv_kx1), _conv(layer.conv_1xk)]
        shuffle = getattr(layer, "shuffle", None)
        return steps + (_steps_of(shuffle) if shuffle is not None else [])
    if isinstance(layer, ChannelShuffle):
        return [] if layer.is_identity else [Shuffle(layer.perm.numpy().astype(np.int64))]
    if isinstance(layer, DYShiftMax):
        return [_shift_max(layer)]
    if isinstance(layer, nn.ReLU6):
        return [Relu6()]
    if isinstance(layer, nn.Identity):
        return []
    raise NotImplementedError(f"no deploy form for {type(layer).__name__}")


def _linear(layer: SwishLinear) -> Tuple[np.ndarray, np.ndarray]:
    if not isinstance(layer.bn, nn.Identity):
        raise NotImplementedError("expected a folded SwishLinear")
    return _numpy(layer.fc.weight), _numpy(layer.fc.bias)


def read_steps(model: MicroNet) -> List[Step]:
    """The steps of a MicroNet in training form, batch norms folded (natural channel order)."""
    folded = fold_batch_norms(model)
    stem = folded.stem
    if not isinstance(stem, MicroNetStem) or not isinstance(stem.act, nn.ReLU6):
        raise NotImplementedError("only the ReLU6 stem has a deploy form")
    steps: List[Step] = _steps_of(stem.conv) + [Relu6()]
    for block in folded.stages:
        if not isinstance(block, DYMicroBlock):
            raise NotImplementedError(f"unexpected stage {type(block).__name__}")
        body = [step for _, layer in block.named_children() for step in _steps_of(layer)]
        steps += [Residual(body)] if block.has_residual else body
    linears = [_linear(folded.embed)]
    if isinstance(folded.classifier, SwishLinear):
        linears.append(_linear(folded.classifier))
    elif not isinstance(folded.classifier, nn.Identity):
        raise NotImplementedError(f"unexpected classifier {type(folded.classifier).__name__}")
    return steps + [Head(linears)]


# --- channel orders -------------------------------------------------------------------------------------


def _positions(order: np.ndarray) -> np.ndarray:
    """Inverse permutation: positions[order[i]] = i."""
    positions = np.empty_like(order)
    positions[order] = np.arange(order.size)
    return positions


@dataclass
class _Chain:
    """Steps being emitted, and the stored order of the tensor they produce: stored channel i holds the
    training form's channel order[i]."""

    order: np.ndarray
    steps: List[Step] = field(default_factory=list)

    def gather_to(self, order: np.ndarray) -> None:
        """Emit a gather that puts the tensor into `order` (merged with a gather just before it)."""
        index = _positions(self.order)[order]
        self.order = order.copy()
        if self.steps and isinstance(self.steps[-1], Gather):
            index = self.steps.pop().index[index]
        if not np.array_equal(index, np.arange(index.size)):
            self.steps.append(Gather(index))


def _grouped_conv(chain: _Chain, conv: Conv) -> None:
    out_channels, in_per_group = conv.weight.shape[:2]
    groups = conv.groups
    out_per_group = out_channels // groups
    blocks = (chain.order // in_per_group).reshape(groups, in_per_group)
    if not (blocks == blocks[:, :1]).all():  # the stored order splits a group: restore the training order
        chain.gather_to(np.arange(chain.order.size))
        blocks = (chain.order // in_per_group).reshape(groups, in_per_group)
    source = blocks[:, 0]  # the training form's group that stored block b holds
    weight, bias = np.empty_like(conv.weight), np.empty_like(conv.bias)
    order = np.empty(out_channels, np.int64)
    for b, group in enumerate(source):
        rows = slice(group * out_per_group, (group + 1) * out_per_group)
        columns = chain.order[b * in_per_group:(b + 1) * in_per_group] - group * in_per_group
        stored = slice(b * out_per_group, (b + 1) * out_per_group)
        weight[stored] = conv.weight[rows][:, columns]
        bias[stored] = conv.bias[rows]
        order[stored] = np.arange(rows.start, rows.stop)
    chain.steps.append(replace(conv, weight=weight, bias=bias))
    chain.order = order


def _fuse_relu6(chain: _Chain) -> None:
    """ReLU6 commutes with gathers: fuse it into the convolution before them, if there is one."""
    for step in reversed(chain.steps):
        if isinstance(step, Conv) and not step.relu6:
            step.relu6 = True
            return
        if not isinstance(step, Gather):
            break
    chain.steps.append(Relu6())


def _shift_max_in_order(step: ShiftMax, order: np.ndarray, out_order: np.ndarray, gather_input: bool) -> ShiftMax:
    """`step` reading a tensor stored in `order` and writing `out_order`: its shift gather also applies the
    stored order, and x is gathered too when the orders differ or `gather_input` asks for it."""
    channels = out_order.size
    positions = _positions(order)
    columns = (np.arange(2 * step.branches)[:, None] * channels + out_order[None, :]).ravel()
    source = positions[out_order] if gather_input or not np.array_equal(order, out_order) else None
    return replace(step, reduce_weight=step.reduce_weight[out_order], expand_weight=step.expand_weight[:, columns],
                   expand_bias=step.expand_bias[columns], lower=step.lower[columns], upper=step.upper[columns],
                   shift=positions[step.shift[out_order]], source=source)


def _is_depthwise(step: Step) -> bool:
    return isinstance(step, Conv) and step.weight.shape[1] == 1 and step.weight.shape[0] == step.groups


def _order_wanted_after(steps: Sequence[Step], order: np.ndarray, end_order: Optional[np.ndarray]) -> np.ndarray:
    """The order a tensor about to run through `steps` is best stored in: where the next step that cares is
    a grouped convolution (or the end, with `end_order` required), the order that reaches it as the training
    form's order (or as `end_order`) through the shuffles and depthwise convolutions before it; else `order`."""
    perms = []
    for step in steps:
        if isinstance(step, Shuffle):
            perms.append(step.perm)
        elif not _is_depthwise(step):
            if not (isinstance(step, Conv) and step.groups > 1):
                return order
            target = np.arange(order.size)
            break
    else:
        if end_order is None:
            return order
        target = end_order
    for perm in reversed(perms):  # a relabelling maps stored value v to positions(perm)[v]; undo them
        target = perm[target]
    return target


def arrange(steps: Sequence[Step], order: Optional[np.ndarray] = None, end_order: Optional[np.ndarray] = None,
            gather_input: bool = True) -> Tuple[List[Step], np.ndarray]:
    """The deploy steps of training-form `steps` applied to a tensor stored in `order` (default: as the
    training form has it): shuffles become relabellings, weights take the stored orders, and gathers appear
    only where no weight can absorb an order; with `end_order`, the output is stored in it. Dynamic Shift-Max
    gathers its input too where `gather_input` (see `ShiftMaxStep`). Returns the steps and the output order."""
    chain = _Chain(np.arange(_in_channels(steps)) if order is None else np.asarray(order))
    for index, step in enumerate(steps):
        if isinstance(step, Shuffle):
            chain.order = _positions(step.perm)[chain.order]
        elif isinstance(step, Conv):
            _grouped_conv(chain, step)
        elif isinstance(step, Relu6):
            _fuse_relu6(chain)
        elif isinstance(step, ShiftMax):
            wanted = _order_wanted_after(steps[index + 1:], chain.order, end_order)
            chain.steps.append(_shift_max_in_order(step, chain.order, wanted, gather_input))
            chain.order = wanted
        elif isinstance(step, Residual):
            body, _ = arrange(step.steps, chain.order, chain.order, gather_input)
            chain.steps.append(Residual(body))
        elif isinstance(step, Head):
            (weight, bias), *rest = step.linears
            chain.steps.append(Head([(weight[chain.order], bias)] + list(rest)))
            chain.order = np.arange(step.linears[-1][0].shape[1])
        else:
            raise TypeError(f"unexpected step {step!r}")
    if end_order is not None:
        chain.gather_to(end_order)
    return chain.steps, chain.order


def _in_channels(steps: Sequence[Step]) -> int:
    for step in steps:
        if isinstance(step, Conv):
            return step.weight.shape[1] * step.groups
        if isinstance(step, Residual):
            return _in_channels(step.steps)
    raise ValueError("no convolution to take the input width from")


# --- the Paddle layers ----------------------------------------------------------------------------------


def _parameter(layer: nn.Layer, value: np.ndarray) -> paddle.Tensor:
    parameter = layer.create_parameter(list(value.shape), dtype="float32",
                                       default_initializer=nn.initializer.Assign(value.astype(np.float32)))
    return parameter


class ConvStep(nn.Layer):
    def __init__(self, step: Conv):
        super().__init__()
        self.weight, self.bias = _parameter(self, step.weight), _parameter(self, step.bias)
        self.stride, self.padding, self.groups, self.relu6 = list(step.stride), list(step.padding), step.groups, step.relu6

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding, groups=self.groups)
        return F.relu6(y) if self.relu6 else y

    def extra_repr(self) -> str:
        return f"{list(self.weight.shape)}, groups={self.groups}, stride={self.stride}, relu6={self.relu6}"


class GatherStep(nn.Layer):
    def __init__(self, step: Gather):
        super().__init__()
        self.register_buffer("index", paddle.to_tensor(step.index.astype(np.int64)), persistable=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.index_select(x, self.index, axis=1)

    def extra_repr(self) -> str:
        return f"channels={self.index.shape[0]}"


class Relu6Step(nn.Layer):
    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.relu6(x)


class ShiftMaxStep(nn.Layer):
    def __init__(self, step: ShiftMax):
        super().__init__()
        self.channels, self.branches = step.shift.size, step.branches
        self.reduce_weight, self.reduce_bias = _parameter(self, step.reduce_weight), _parameter(self, step.reduce_bias)
        self.expand_weight, self.expand_bias = _parameter(self, step.expand_weight), _parameter(self, step.expand_bias)
        self.lower, self.upper = _parameter(self, step.lower), _parameter(self, step.upper)
        self.register_buffer("shift", paddle.to_tensor(step.shift.astype(np.int64)), persistable=False)
        self.gathers_input = step.source is not None
        if self.gathers_input:
            self.register_buffer("source", paddle.to_tensor(step.source.astype(np.int64)), persistable=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        shifted = paddle.index_select(x, self.shift, axis=1)
        if self.gathers_input:
            x = paddle.index_select(x, self.source, axis=1)
        pooled = paddle.reshape(F.adaptive_avg_pool2d(x, 1), [-1, self.channels])
        z = F.linear(F.relu(F.linear(pooled, self.reduce_weight, self.reduce_bias)), self.expand_weight, self.expand_bias)
        coefficients = minimum(maximum(z, self.lower), self.upper)  # (paddle2onnx 2.1.0 drops F.hardtanh's bounds)
        parts = paddle.split(paddle.reshape(coefficients, [-1, 2 * self.branches * self.channels, 1, 1]),
                             2 * self.branches, axis=1)
        out = x * parts[0] + shifted * parts[1]
        if self.branches == 2:
            out = maximum(out, x * parts[2] + shifted * parts[3])
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, branches={self.branches}"


class ResidualStep(nn.Layer):
    def __init__(self, steps: Sequence[Step]):
        super().__init__()
        self.body = nn.Sequential(*[step_layer(step) for step in steps])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.body(x) + x


class HeadStep(nn.Layer):
    def __init__(self, step: Head):
        super().__init__()
        self.channels = step.linears[0][0].shape[0]
        self.weights = nn.ParameterList([_parameter(self, weight) for weight, _ in step.linears])
        self.biases = nn.ParameterList([_parameter(self, bias) for _, bias in step.linears])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = paddle.reshape(F.hardswish(F.adaptive_avg_pool2d(F.relu6(x), 1)), [-1, self.channels])
        for weight, bias in zip(self.weights, self.biases):
            x = F.hardswish(F.linear(x, weight, bias))
        return x


_LAYERS = {Conv: ConvStep, Gather: GatherStep, Relu6: Relu6Step, ShiftMax: ShiftMaxStep, Head: HeadStep}


def step_layer(step: Step) -> nn.Layer:
    if isinstance(step, Residual):
        return ResidualStep(step.steps)
    return _LAYERS[type(step)](step)


class MicroNetDeploy(nn.Layer):
    """MicroNet's deploy form (see the module docstring): evaluation only, NCHW."""

    data_format = "NCHW"

    def __init__(self, steps: Sequence[Step], model_name: str = "MicroNet"):
        super().__init__()
        self.steps = nn.Sequential(*[step_layer(step) for step in steps])
        self.model_name = model_name
        self.eval()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.steps(x)


def expressible(model: nn.Layer) -> bool:
    """Whether `micronet_deploy_form` can rebuild `model`: a MicroNet classifier in NCHW with a ReLU6 stem
    (every variant of MICRONET_SPECS), without backbone taps (stop_after / return_patterns) that change what
    it returns."""
    return (isinstance(model, MicroNet) and model.data_format == "NCHW" and isinstance(model.stem.act, nn.ReLU6)
            and model._stop_pattern is None and not model._return_patterns)


@paddle.no_grad()
def micronet_deploy_form(model: MicroNet) -> MicroNetDeploy:
    """The deploy form of `model` (which is left untouched)."""
    steps, _ = arrange(read_steps(model))
    return MicroNetDeploy(steps, type(model).__name__)
