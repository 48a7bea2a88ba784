"""Where TensorRT int8 gets its scales: from a quantized export (quantize/dequantize ops in the program), or
from calibration on real images.

A float export has no scales. On the PIR route `paddle.tensorrt` then only sets TensorRT's INT8 flag
(converter.py `config.set_flag(trt.BuilderFlag.INT8)`; scales come only from `set_dynamic_range`, i.e. from
the `inputs_scale` that util.py `run_pir_pass` -> `delete_quant_dequant_linear_op_pass` takes from
`pd_op.quantize_linear`/`dequantize_linear`), TensorRT stops with "Calibration failure occurred with no scaling
factors detected" and the converter asserts "Failed to build engine". So int8 without calibration is refused
here, before anything is built, unless the program holds those ops.

Calibration (legacy exports) reads `calibration_batches` batches from `tensorrt.calibration_data` with
ppcls_ext.data.calibration, every batch at the engine's opt shape: Paddle sizes its calibration buffers from
the first batch it sees (tensorrt_engine_op.h `RunCalibration`: `calib_buffers[x] = t.memory_size()`,
`runtime_batch = t_shape[0]`) and copies that many bytes from every later batch (trt_int8_calibrator.cc
`setBatch`: `cudaMemcpy(d.first, it.second, d.second, ...)`), and TensorRT calibrates a dynamic-shape engine
at its profile's opt dimensions.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

import numpy as np
import yaml

from ..config import ConfigError, load_config
from ..data.calibration import calibration_batches, fingerprint
from .options import DeploymentError, TensorRTOptions

#: op types that carry int8 scales: Paddle's QDQ format, and the older fake-quant / out_threshold forms
QUANT_OPS = ("quantize_linear", "dequantize_linear")
LEGACY_QUANT_MARKERS = (b"quantize_linear", b"fake_quantize", b"fake_channel_wise_quantize", b"out_threshold")


def _pir_op_names(node: Any) -> Iterator[str]:
    """Every op name in a PIR program's JSON (`{"#": "1.conv2d", ...}` in ops lists, nested regions included)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ops" and isinstance(value, list):
                for op in value:
                    if isinstance(op, dict) and isinstance(op.get("#"), str):
                        yield op["#"]
            yield from _pir_op_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _pir_op_names(item)


def has_quantization_scales(model_dir: str) -> bool:
    """Whether the export's program holds int8 scales: quantize/dequantize ops (PIR `inference.json`: ops
    named "1.quantize_linear" — dialect 1 is pd_op — or "pd_op.quantize_linear"; legacy `inference.pdmodel`:
    those op types, fake-quant ops or `out_threshold` attributes)."""
    program = os.path.join(model_dir, "inference.json")
    if os.path.isfile(program):
        with open(program, encoding="utf-8") as f:
            names = {name.split(".", 1)[-1].rstrip("_") for name in _pir_op_names(json.load(f))}
        return any(op in names for op in QUANT_OPS)
    with open(os.path.join(model_dir, "inference.pdmodel"), "rb") as f:
        data = f.read()
    return any(marker in data for marker in LEGACY_QUANT_MARKERS)


def require_scales(model_dir: str, route: str) -> None:
    """Refuse int8 without calibration on an export that has no quantization scales, in one line."""
    if not has_quantization_scales(model_dir):
        fix = ("quantize the model first (a QDQ export)" if route == "pir" else
               "quantize the model first, or calibrate: tensorrt.calibration: True with tensorrt.calibration_data")
        raise DeploymentError(f"TensorRT int8 needs quantization scales, and {model_dir} is a float export (no "
                              f"quantize/dequantize ops): TensorRT would stop with 'Calibration failure occurred with "
                              f"no scaling factors detected'; {fix}")


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration batches (all of one shape), their fingerprint, and where they came from."""

    batches: List[np.ndarray]
    fingerprint: str
    source: str


def export_preprocessing(model_dir: str) -> List[Any]:
    """The export's PreProcess.transform_ops (its inference.yml), which a calibration folder is read with."""
    path = os.path.join(model_dir, "inference.yml")
    if not os.path.isfile(path):
        raise ConfigError(f"tensorrt.calibration_data is a folder, which is read with the export's preprocessing, but "
                          f"{model_dir} has no inference.yml: give a training config (its DataLoader.Eval) instead")
    with open(path, encoding="utf-8") as f:
        description = yaml.safe_load(f) or {}
    ops = list(((description.get("PreProcess") or {}).get("transform_ops")) or [])
    if not ops:
        raise ConfigError(f"{path} has no PreProcess.transform_ops to read the calibration folder with: give a training "
                          "config (its DataLoader.Eval) as tensorrt.calibration_data")
    return ops


def calibration_set(model_dir: str, trt: TensorRTOptions, shape: Sequence[int]) -> CalibrationSet:
    """`trt.calibration_batches` batches of `shape` (N, C, H, W: the engine's opt shape) from
    `trt.calibration_data`: a folder (with the export's preprocessing) or a training config YAML."""
    source_path = str(trt.calibration_data)
    batch, image_shape = int(shape[0]), [int(d) for d in shape[1:]]
    if os.path.isdir(source_path):
        batches = calibration_batches(source_path, batch_size=batch, num_batches=trt.calibration_batches,
                                      image_shape=image_shape, transforms=export_preprocessing(model_dir))
    elif os.path.isfile(source_path) and source_path.endswith((".yaml", ".yml")):
        batches = calibration_batches(load_config(source_path), batch_size=batch, num_batches=trt.calibration_batches,
                                      image_shape=image_shape)
    else:
        raise ConfigError(f"tensorrt.calibration_data: {source_path} is neither a folder of images nor a training "
                          "config (.yaml)")
    wrong = [i for i, b in enumerate(batches) if tuple(b.shape) != tuple(int(d) for d in shape)]
    if wrong:
        raise ConfigError(f"tensorrt.calibration_data: calibration batch {wrong[0]} has shape {list(batches[wrong[0]].shape)}, "
                          f"expected the opt shape {list(shape)} (Paddle sizes its calibration buffers from the first batch)")
    return CalibrationSet(batches, fingerprint(batches), source_path)


def calibration_summary(calibration: Optional[CalibrationSet]) -> Optional[dict]:
    """What complete.json records of the calibration."""
    if calibration is None:
        return None
    return {"source": os.path.abspath(calibration.source), "fingerprint": calibration.fingerprint,
            "batches": len(calibration.batches), "shape": list(calibration.batches[0].shape)}
