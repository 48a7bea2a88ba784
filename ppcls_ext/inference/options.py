"""How to run an exported model: backend, device and TensorRT settings, from PaddleClas's deploy keys."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Tuple

from ..config import ConfigError
from ..errors import UserError

Shape = Tuple[int, int, int, int]
BACKENDS = ("paddle", "onnxruntime", "auto")
PRECISIONS = ("fp32", "fp16", "int8")


class DeploymentError(UserError, RuntimeError):
    """A deployment request this installation cannot serve (e.g. TensorRT on a CPU build of Paddle);
    the message says what is needed."""


@dataclass
class TensorRTOptions:
    """TensorRT subgraphs on GPU. Input shapes are dynamic: give `shapes` = (min, opt, max) NCHW, or let
    the range span batch 1 and `max_batch_size` at the `collect_sizes` (opt: the batch and image size the
    service runs). Converted models / serialized engines are kept in `cache_dir`, so the second start skips
    the build. int8 takes its scales from a quantized export, or, with `calibration`, from
    `calibration_batches` batches of real images at the opt shape read from `calibration_data` (a folder
    of images, read with the export's preprocessing, or a training config, read from its DataLoader.Eval)."""

    precision: str = "fp32"
    min_subgraph_size: int = 3
    workspace_size: int = 1 << 30
    max_batch_size: int = 8
    shapes: Optional[Tuple[Shape, Shape, Shape]] = None
    collect_sizes: Sequence[int] = ()
    cache_dir: Optional[str] = None
    calibration: bool = False
    calibration_data: Optional[str] = None
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TensorRT precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.calibration and self.precision != "int8":
            raise ConfigError(f"tensorrt.calibration is int8 calibration; precision is {self.precision!r} (set use_int8: True)")
        if self.calibration and not self.calibration_data:
            raise ConfigError("tensorrt.calibration needs tensorrt.calibration_data: a folder of calibration images "
                              "(read with the export's preprocessing) or a training config (its DataLoader.Eval images)")
        if self.calibration_data and not self.calibration:
            raise ConfigError("tensorrt.calibration_data is read only with tensorrt.calibration: True")
        if isinstance(self.calibration_batches, bool) or not isinstance(self.calibration_batches, int) \
                or self.calibration_batches < 1:
            raise ConfigError(f"tensorrt.calibration_batches must be a positive integer, got {self.calibration_batches!r}")
        if self.shapes is not None:
            self.shapes = tuple(tuple(int(d) for d in shape) for shape in self.shapes)
            if len(self.shapes) != 3 or any(len(s) != 4 for s in self.shapes):
                raise ConfigError(f"TensorRT shapes must be three NCHW shapes (min, opt, max), got {self.shapes}")
            low, opt, high = self.shapes
            if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                raise ConfigError(f"TensorRT shapes must satisfy min <= opt <= max in every dimension, got {self.shapes}")


@dataclass
class InferenceOptions:
    """Backend ("paddle", "onnxruntime", or "auto": on CPU, measure the candidates and keep the fastest),
    device, CPU threads and oneDNN, GPU memory pool and TensorRT.

    CPU threads: `cpu_threads` for Paddle Inference's math library and ONNX Runtime's intra-op pool (ONNX
    Runtime runs operators one at a time: one inter-op thread). `cpu_spin_wait` keeps each runtime's
    default of spinning its worker threads after a call (Intel OpenMP for KMP_BLOCKTIME, 200 ms; ONNX
    Runtime's pool briefly), which shortens back-to-back calls on a machine the service has to itself;
    False makes them sleep at once (KMP_BLOCKTIME=0, set before Paddle's first parallel region; ONNX
    Runtime's session.intra_op.allow_spinning=0), for machines shared with other busy processes."""

    backend: str = "paddle"
    device: str = "cpu"
    gpu_id: int = 0
    gpu_mem: int = 8000
    cpu_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    enable_mkldnn: bool = True
    ir_optim: bool = True
    cpu_spin_wait: bool = True
    tensorrt: Optional[TensorRTOptions] = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.device not in ("cpu", "gpu"):
            raise ConfigError(f"device must be 'cpu' or 'gpu', got {self.device!r}")
        if self.tensorrt is not None and self.device != "gpu":
            raise ConfigError("use_tensorrt needs use_gpu: TensorRT runs on NVIDIA GPUs only")
        if self.tensorrt is not None and self.backend != "paddle":
            raise ConfigError(f"use_tensorrt is a Paddle Inference option; backend is {self.backend!r}")


def options_from_config(glob: Mapping[str, Any]) -> InferenceOptions:
    """`Global` of a PaddleClas deploy config (use_gpu, gpu_mem, enable_mkldnn, cpu_num_threads,
    use_fp16, use_int8, use_tensorrt, ir_optim, use_onnx) plus ours (backend, gpu_id, cpu_spin_wait,
    tensorrt: {...})."""
    backend = str(glob.get("backend") or ("onnxruntime" if glob.get("use_onnx") else "paddle"))
    tensorrt = None
    if glob.get("use_tensorrt"):
        trt = dict(glob.get("tensorrt") or {})
        if "precision" not in trt:
            trt["precision"] = "int8" if glob.get("use_int8") else "fp16" if glob.get("use_fp16") else "fp32"
        trt.setdefault("max_batch_size", int(glob.get("batch_size", 1)))
        try:
            tensorrt = TensorRTOptions(**trt)
        except TypeError as error:
            raise ConfigError(f"Global.tensorrt: {error}") from error
    elif glob.get("use_fp16") or glob.get("use_int8"):
        raise ConfigError("Global.use_fp16 / use_int8 need use_tensorrt: True (reduced precision runs through TensorRT)")
    return InferenceOptions(
        backend=backend,
        device="gpu" if glob.get("use_gpu") else "cpu",
        gpu_id=int(glob.get("gpu_id", 0)),
        gpu_mem=int(glob.get("gpu_mem", 8000)),
        cpu_threads=int(glob.get("cpu_num_threads") or os.cpu_count() or 1),
        enable_mkldnn=bool(glob.get("enable_mkldnn", True)),
        ir_optim=bool(glob.get("ir_optim", True)),
        cpu_spin_wait=bool(glob.get("cpu_spin_wait", True)),
        tensorrt=tensorrt,
    )
