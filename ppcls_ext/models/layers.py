"""Building blocks shared by every family: rounding rules, the memory layout layers are built in,
conv-BN-activation, squeeze-excite, drop-path."""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable, Iterator, Literal, Optional, Tuple, Union

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

IntPair = Union[int, Tuple[int, int]]
PaddingMode = Literal["same", "symmetric"]
PADDING_MODES = ("same", "symmetric")
ActLayer = Optional[Callable[[], nn.Layer]]
#: SiLU as Paddle's `swish` op (x * sigmoid(x), the same function): Paddle Inference's oneDNN passes fuse
#: swish into the convolution before it, while the `silu` op of nn.Silu runs unfused with layout reorders
#: around it (EfficientNetB0, batch 1, oneDNN: 44 ms with silu, 27 ms with swish)
SiLU = nn.Swish


DATA_FORMATS = ("NCHW", "NHWC")
_BUILD_FORMAT = contextvars.ContextVar("ppcls_ext_build_data_format", default="NCHW")


@contextlib.contextmanager
def building_in(data_format: str) -> Iterator[None]:
    """Layers created inside compute in `data_format`: the layout-aware constructors below pass it to
    Paddle's public `data_format=` argument, and layout-aware layers of ours read `channel_axis()`.
    One switch around a model's construction, instead of a parameter threaded through every block."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    token = _BUILD_FORMAT.set(data_format)
    try:
        yield
    finally:
        _BUILD_FORMAT.reset(token)


def build_format() -> str:
    """The layout layers are being built in ("NCHW" outside `building_in`)."""
    return _BUILD_FORMAT.get()


def channel_axis() -> int:
    """The channel axis of the layout being built: 1 (NCHW) or -1 (NHWC)."""
    return 1 if build_format() == "NCHW" else -1


def conv2d(*args, **kwargs) -> nn.Conv2D:
    return nn.Conv2D(*args, data_format=build_format(), **kwargs)


def batch_norm2d(*args, **kwargs) -> nn.BatchNorm2D:
    return nn.BatchNorm2D(*args, data_format=build_format(), **kwargs)


def global_avg_pool() -> nn.AdaptiveAvgPool2D:
    return nn.AdaptiveAvgPool2D(1, data_format=build_format())


def _legacy_program_op(op_type: str, inputs: dict, like: paddle.Tensor, attrs: Optional[dict] = None) -> paddle.Tensor:
    """Record `op_type` in a legacy (pre-PIR) static program, for `export_format: legacy`: Paddle 3.3.1's
    `F.sigmoid`, `paddle.maximum` and `paddle.minimum` accept only dygraph tensors and PIR values. LayerHelper is the only
    way Paddle offers to append a legacy operator."""
    from paddle.base.layer_helper import LayerHelper

    helper = LayerHelper(op_type)
    out = helper.create_variable_for_type_inference(like.dtype)
    helper.append_op(type=op_type, inputs=inputs, outputs={"Out": out}, attrs=attrs or {})
    return out


def _recording_legacy_program() -> bool:
    return not paddle.in_dynamic_mode() and not paddle.framework.use_pir_api()


def sigmoid(x: paddle.Tensor) -> paddle.Tensor:
    """F.sigmoid, also while a legacy program is recorded."""
    if _recording_legacy_program():
        return _legacy_program_op("sigmoid", {"X": x}, x)
    return F.sigmoid(x)


def maximum(x: paddle.Tensor, y: paddle.Tensor) -> paddle.Tensor:
    """paddle.maximum (element-wise, broadcasting), also while a legacy program is recorded."""
    if _recording_legacy_program():
        return _legacy_program_op("elementwise_max", {"X": x, "Y": y}, x, {"axis": -1})
    return paddle.maximum(x, y)


def minimum(x: paddle.Tensor, y: paddle.Tensor) -> paddle.Tensor:
    """paddle.minimum (element-wise, broadcasting), also while a legacy program is recorded."""
    if _recording_legacy_program():
        return _legacy_program_op("elementwise_min", {"X": x, "Y": y}, x, {"axis": -1})
    return paddle.minimum(x, y)


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None, guard: bool = True) -> int:
    """Round `value` to the nearest multiple of `divisor`, never below `min_value` (default: `divisor`).

    With `guard` (EfficientNet-V1, MobileNet, MicroNet) a result more than 10% below `value` is bumped up
    by one `divisor`; EfficientNetV2 rounds without that guard.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if guard and rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, multiplier: float) -> int:
    """Depth scaling: number of blocks in a stage after multiplying by `multiplier`, rounded up."""
    return int(math.ceil(multiplier * repeats))


def _pair(value: IntPair) -> Tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv_padding(kernel_size: IntPair, stride: IntPair, mode: PaddingMode) -> Union[str, Tuple[int, int]]:
    """Padding argument for `nn.Conv2D`.

    "same" is TensorFlow's SAME: the output is ceil(input / stride) and any odd total padding goes to the
    bottom/right. Paddle's `padding="SAME"` computes that from the actual input at run time (and exports as
    such), so it is right at every input size. Where SAME is symmetric for every input (stride 1, odd
    kernel) the explicit `k // 2` is used instead. "symmetric" is PyTorch-style `k // 2` on both sides.
    """
    if mode not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {mode!r}")
    kernel, strides = _pair(kernel_size), _pair(stride)
    if mode == "same" and (strides != (1, 1) or any(k % 2 == 0 for k in kernel)):
        return "SAME"
    return kernel[0] // 2, kernel[1] // 2


class ConvBNAct(nn.Layer):
    """Convolution without bias, batch norm, then an optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        groups: int = 1,
        act_layer: ActLayer = SiLU,
        padding: PaddingMode = "symmetric",
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
    ):
        super().__init__()
        self.conv = conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=conv_padding(kernel_size, stride, padding),
            groups=groups,
            bias_attr=False,
        )
        self.bn = batch_norm2d(out_channels, momentum=bn_momentum, epsilon=bn_epsilon)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Layer):
    """Channel attention: global average -> 1x1 reduce -> activation -> 1x1 expand -> sigmoid gate."""

    def __init__(self, channels: int, reduced_channels: int, act_layer: Callable[[], nn.Layer] = SiLU):
        super().__init__()
        self.pool = global_avg_pool()
        self.reduce = conv2d(channels, reduced_channels, 1)
        self.act = act_layer()
        self.expand = conv2d(reduced_channels, channels, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        scale = self.expand(self.act(self.reduce(self.pool(x))))
        return x * sigmoid(scale)


class DropPath(nn.Layer):
    """Stochastic depth: in training, zero the whole residual branch of a sample with probability `rate`
    and scale the kept ones by 1 / (1 - rate); identity in evaluation."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = paddle.bernoulli(paddle.full_like(x[:, :1, :1, :1], keep))
        return x * (mask / keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"

