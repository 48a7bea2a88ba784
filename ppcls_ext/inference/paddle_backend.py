"""Paddle Inference: CPU (threads, oneDNN), GPU (device, memory pool) and TensorRT.

TensorRT (tensorrt.py) has two routes, chosen by the export's format: PIR programs (`inference.json`)
are converted once with `paddle.tensorrt.convert` and the converted model is loaded; legacy programs
(`inference.pdmodel`) get `Config.enable_tensorrt_engine`. TensorRT's own failures (library, engine build,
cached engine) reach the caller as TensorRTError naming them.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import yaml
from paddle.inference import Config, create_predictor

from ..config import ConfigError, read_yaml_file
from .options import DeploymentError, InferenceOptions
from .tensorrt import cache_root, convert_for_tensorrt, legacy_tensorrt_config, shape_range
from .trt_runtime import named_errors

logger = logging.getLogger("ppcls_ext")
PROGRAM_FILES = {"pir": "inference.json", "legacy": "inference.pdmodel"}
PARAMS_FILE = "inference.pdiparams"


def model_format(model_dir: str) -> str:
    """"pir" for a Paddle 3 export (inference.json), "legacy" for inference.pdmodel."""
    for kind, name in PROGRAM_FILES.items():
        if os.path.isfile(os.path.join(model_dir, name)) and os.path.isfile(os.path.join(model_dir, PARAMS_FILE)):
            return kind
    raise DeploymentError(f"{model_dir} holds no Paddle inference model: expected inference.json (or "
                          f"inference.pdmodel) with inference.pdiparams, as tools/export_model.py writes")


def computes_channels_last(model_dir: str) -> bool:
    """Whether the export's inference.yml records an NHWC model (`create_model(..., data_format="NHWC")`)."""
    path = os.path.join(model_dir, "inference.yml")
    if not os.path.isfile(path):
        return False
    try:
        description = read_yaml_file(path)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    glob = description.get("Global") if isinstance(description, dict) else None
    return isinstance(glob, dict) and glob.get("data_format") == "NHWC"


def require_cuda() -> None:
    if not paddle.is_compiled_with_cuda():
        raise DeploymentError(f"use_gpu needs a CUDA build of PaddlePaddle (paddlepaddle-gpu); this is the CPU "
                              f"build {paddle.__version__}. Install paddlepaddle-gpu for your CUDA version.")


def require_tensorrt() -> None:
    require_cuda()
    if tuple(paddle.inference.get_trt_compile_version()) == (0, 0, 0):
        raise DeploymentError("use_tensorrt needs a PaddlePaddle GPU build compiled with TensorRT (the "
                              "paddlepaddle-gpu wheels with '-trt' / the official CUDA builds); this build has no TensorRT")


def base_config(model_dir: str, options: InferenceOptions) -> Config:
    """A Config for `model_dir` with the device, thread, oneDNN and IR settings of `options`."""
    kind = model_format(model_dir)
    config = Config(os.path.join(model_dir, PROGRAM_FILES[kind]), os.path.join(model_dir, PARAMS_FILE))
    if options.device == "gpu":
        require_cuda()
        config.enable_use_gpu(options.gpu_mem, options.gpu_id)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(options.cpu_threads)
        if not options.cpu_spin_wait and "KMP_BLOCKTIME" not in os.environ:
            os.environ["KMP_BLOCKTIME"] = "0"  # read when Intel OpenMP starts: before Paddle's first parallel region
        if options.enable_mkldnn and computes_channels_last(model_dir):
            logger.warning("%s computes channels-last (NHWC), which Paddle's oneDNN passes mis-handle (the stem "
                           "convolution fails): running without oneDNN", model_dir)
            config.disable_mkldnn()
        elif options.enable_mkldnn:
            config.set_mkldnn_cache_capacity(10)  # bounded cache of per-shape kernels for dynamic shapes
            config.enable_mkldnn()
        else:
            config.disable_mkldnn()
    config.switch_ir_optim(options.ir_optim)
    if kind == "legacy":  # Paddle 3 rejects memory_optimize_pass for PIR programs (PaddlePaddle/Paddle#75496)
        config.enable_memory_optim()
    config.disable_glog_info()
    return config


class PaddlePredictor:
    """Runs an export with Paddle Inference; `run(batch)` maps an NCHW float32 batch to the outputs."""

    def __init__(self, model_dir: str, options: InferenceOptions, warmup_shapes: Sequence[Sequence[int]] = (),
                 serving_shape: Optional[Sequence[int]] = None):
        """With TensorRT: `warmup_shapes` span the input shape range unless `tensorrt.shapes` is given, and
        `serving_shape` (the batch and image size served) is the opt shape within it."""
        self.model_dir, self.options = model_dir, options
        trt = options.tensorrt
        if trt is None:
            self.config = base_config(model_dir, options)
            self.predictor = create_predictor(self.config)
        else:
            require_tensorrt()
            with named_errors(cache_root(model_dir, trt)):
                shapes = shape_range(trt, warmup_shapes, serving_shape)
                if model_format(model_dir) == "pir":  # the converted model, engines embedded
                    self.config = base_config(convert_for_tensorrt(model_dir, trt, options.gpu_id, shapes), options)
                else:
                    self.config = legacy_tensorrt_config(model_dir, trt, options.gpu_id,
                                                         lambda: base_config(model_dir, options), shapes)
                self.predictor = create_predictor(self.config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.name = self.describe(options)

    @staticmethod
    def describe(options: InferenceOptions) -> str:
        if options.device == "gpu":
            return f"paddle-gpu-trt-{options.tensorrt.precision}" if options.tensorrt else "paddle-gpu"
        return "paddle-cpu-onednn" if options.enable_mkldnn else "paddle-cpu"

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self.input.reshape(batch.shape)
        self.input.copy_from_cpu(batch)
        self.predictor.run()
        return self.predictor.get_output_handle(self.predictor.get_output_names()[0]).copy_to_cpu()


def warmup_shapes(sizes: Iterable[int], image_size: Sequence[int], max_batch: int) -> List[Tuple[int, int, int, int]]:
    """The shapes TensorRT's input range spans: batch 1 and `max_batch` at every size in `sizes` (square;
    the export's size when empty)."""
    sizes_ = list(sizes) or [int(image_size[-1])]
    return [(n, int(image_size[0]), s, s) for s in sizes_ for n in sorted({1, max_batch})]
