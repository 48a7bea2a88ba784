"""int8 models by ONNX Runtime's static quantization: QDQ format, per-channel int8 weights, uint8 activations
with ranges calibrated once on real images; any set of layers (graph nodes) can be kept in float.

The float model is first prepared by ONNX Runtime's `quant_pre_process` (its graph optimisations and ONNX
shape inference; its symbolic shape inference is skipped: it cannot resolve the dynamic batch and image
sizes of our exports, and the QDQ model keeps them dynamic). Calibration runs once (`create_calibrator`);
each int8 variant is then built in memory by `QDQQuantizer` from those ranges, which is what
`quantize_static` does after calibrating, without calibrating again.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..config import ConfigError

#: ONNX Runtime calibration methods by their names in the config
CALIBRATE_METHODS = ("MinMax", "Entropy", "Percentile")
#: the weighted operators: where int8 saves time on CPU and where ONNX Runtime has int8 kernels (QLinearConv,
#: MatMulInteger); elementwise operators stay float unless asked for
DEFAULT_OP_TYPES = ("Conv", "Gemm", "MatMul")
POOLING = ("GlobalAveragePool", "ReduceMean", "GlobalMaxPool")
#: operators a pooled-feature branch passes through before its weighted nodes (reshapes, activations, biases)
PASSTHROUGH = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Relu", "Clip", "Add", "Mul", "Div",
               "Sigmoid", "HardSigmoid", "HardSwish", "Identity", "Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class QuantSettings:
    """How to quantize: operator types, per-channel weights, 7-bit weights (`reduce_range`, for CPUs whose
    int8 dot product saturates: without VNNI), and the calibration method."""

    op_types: Sequence[str] = DEFAULT_OP_TYPES
    per_channel: bool = True
    reduce_range: bool = False
    calibrate_method: str = "MinMax"

    def __post_init__(self) -> None:
        if self.calibrate_method not in CALIBRATE_METHODS:
            raise ConfigError(f"calibrate_method must be one of {', '.join(CALIBRATE_METHODS)}, got {self.calibrate_method!r}")


@dataclass(frozen=True)
class Layer:
    """A quantizable node: its name in the graph, operator, weight tensor, output channels and kernel, and
    its role where the graph tells it (stem, classifier, gate: a branch that ends in a sigmoid or scales
    another tensor, as squeeze-excite and Dynamic Shift-Max do)."""

    name: str
    op_type: str
    weight: str
    shape: Sequence[int] = field(default_factory=tuple)
    role: str = ""

    def describe(self) -> str:
        shape = "x".join(map(str, self.shape))
        return f"{self.name} ({self.op_type} {self.weight}{' ' + shape if shape else ''}{', ' + self.role if self.role else ''})"


class _Batches:
    """An ONNX Runtime CalibrationDataReader over in-memory batches (defined on first use: onnxruntime is
    imported only when quantizing)."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]):
        self._items = iter([{input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches])

    def get_next(self):
        return next(self._items, None)


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer logs every weight scale it adjusts through the root logger at INFO (hundreds of
    lines per model, and models are built once per layer in the sensitivity pass); keep its warnings only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _require():
    try:
        import onnx
        import onnxruntime.quantization as quantization
    except ImportError as error:  # ml_dtypes / sympy are imported by onnxruntime.quantization
        raise ConfigError(f"int8 quantization needs onnx, onnxruntime with its quantization tools, ml_dtypes and sympy, "
                          f"ppcls_ext's requirements: pip install -e . ({error})") from error
    return onnx, quantization


def _roles(graph) -> Dict[str, str]:
    """Role names of nodes the graph identifies: the stem (the weighted node reading the input), the
    classifier (the last weighted node), and gates: other weighted nodes fed by globally pooled features
    within a few steps (the coefficient branches of squeeze-excite and Dynamic Shift-Max)."""
    producer = {output: node for node in graph.node for output in node.output}
    weighted = [n for n in graph.node if n.op_type in DEFAULT_OP_TYPES]
    roles: Dict[str, str] = {}
    inputs = {i.name for i in graph.input}
    for node in weighted:
        if node.input and node.input[0] in inputs:
            roles[node.name] = "stem"
    if weighted:
        roles[weighted[-1].name] = "classifier"
    for node in weighted:
        if node.name in roles:
            continue
        tensor = node.input[0] if node.input else ""
        for _ in range(6):
            source = producer.get(tensor)
            if source is None:
                break
            if source.op_type in POOLING:
                roles[node.name] = "on pooled features: an SE / Shift-Max coefficient branch or the head"
                break
            if source.op_type not in PASSTHROUGH or not source.input:
                break
            tensor = source.input[0]
    return roles


class Quantizer:
    """A float ONNX model prepared for quantization, calibrated once on `batches`; `build(exclude)` returns
    the serialized int8 model with the nodes named in `exclude` kept in float, `build(only=[name])` one with
    only that node quantized (the sensitivity pass)."""

    def __init__(self, onnx_path: str, batches: Sequence[np.ndarray], settings: QuantSettings = QuantSettings()):
        onnx, quantization = _require()
        self.settings = settings
        self._quantization = quantization
        with tempfile.TemporaryDirectory(prefix="ppcls_ext_int8_") as work, _quiet_root_logger():
            prepared = os.path.join(work, "prepared.onnx")
            quantization.quant_pre_process(onnx_path, prepared, skip_symbolic_shape=True)
            self.model = onnx.load(prepared)
            self.input_name = self.model.graph.input[0].name
            calibrator = quantization.create_calibrator(
                prepared, list(settings.op_types), augmented_model_path=os.path.join(work, "augmented.onnx"),
                calibrate_method=getattr(quantization.CalibrationMethod, settings.calibrate_method))
            calibrator.collect_data(_Batches(self.input_name, batches))
            self.ranges = calibrator.compute_data()
            del calibrator
        self.float_model = self.model.SerializeToString()
        self.layers = self._layers()

    def _layers(self) -> List[Layer]:
        initializers = {init.name: tuple(init.dims) for init in self.model.graph.initializer}
        roles = _roles(self.model.graph)
        layers = []
        for node in self.model.graph.node:
            if node.op_type not in self.settings.op_types:
                continue
            weight = next((name for name in node.input[1:] if name in initializers), "")
            layers.append(Layer(node.name, node.op_type, weight.split("_deepcopy")[0], initializers.get(weight, ()),
                                roles.get(node.name, "")))
        return layers

    def build(self, exclude: Iterable[str] = (), only: Optional[Sequence[str]] = None) -> bytes:
        q = self._quantization
        quantizer = q.QDQQuantizer(model=copy.deepcopy(self.model), per_channel=self.settings.per_channel,
                                   reduce_range=self.settings.reduce_range, weight_qType=q.QuantType.QInt8,
                                   activation_qType=q.QuantType.QUInt8, tensors_range=self.ranges,
                                   nodes_to_quantize=list(only or []), nodes_to_exclude=list(exclude),
                                   op_types_to_quantize=list(self.settings.op_types), extra_options={})
        with _quiet_root_logger():
            quantizer.quantize_model()
        return quantizer.model.model.SerializeToString()


class OnnxRunner:
    """An ONNX Runtime session on serialized model bytes: `run(images, batch_size)` returns the outputs of
    all images, computed in batches."""

    def __init__(self, model: bytes, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        outputs = [self.session.run(None, {self.input_name: np.ascontiguousarray(images[i:i + batch_size])})[0]
                   for i in range(0, len(images), batch_size)]
        return np.concatenate(outputs).astype(np.float64)
