"""Paddle Inference: CPU (threads, oneDNN), GPU (device, memory pool) and TensorRT.

TensorRT has two documented paths, chosen by the export's format: Paddle 3 PIR programs
(`inference.json`) are converted once with `paddle.tensorrt.convert` into a model with embedded TensorRT
engines, cached on disk; legacy programs (`inference.pdmodel`, Paddle 2.x) use
`Config.enable_tensorrt_engine` with dynamic-shape ranges and a serialized-engine cache directory.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np
import paddle
import yaml
from paddle.inference import Config, create_predictor

from .options import DeploymentError, InferenceOptions, TensorRTOptions

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
    with open(path, "r", encoding="utf-8") as f:
        description = yaml.safe_load(f) or {}
    return (description.get("Global") or {}).get("data_format") == "NHWC"


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


def _cache_key(model_dir: str, trt: TensorRTOptions, shapes: Sequence) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) and name.startswith("inference."):
            stat = os.stat(path)
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(repr((trt.precision, trt.min_subgraph_size, trt.workspace_size, list(map(tuple, shapes)))).encode())
    return digest.hexdigest()[:16]


def convert_for_tensorrt(model_dir: str, trt: TensorRTOptions, warmup: Callable[[], List[np.ndarray]]) -> str:
    """PIR path: convert the export with `paddle.tensorrt.convert` into `<cache_dir>/<key>/` (reused when
    present: the second start skips the engine build) and return that directory. Input shapes come from
    `trt.shapes` (min, opt, max) or, without them, from real `warmup()` batches."""
    require_tensorrt()
    try:
        from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig, convert
    except ImportError as error:
        raise DeploymentError(f"this PaddlePaddle has no paddle.tensorrt (PIR TensorRT needs Paddle >= 3.0 "
                              f"built with TensorRT): {error}") from error
    batches = [] if trt.shapes else warmup()
    shapes = trt.shapes or [batch.shape for batch in batches]
    cache_dir = trt.cache_dir or os.path.join(model_dir, "tensorrt_cache")
    target = os.path.join(cache_dir, _cache_key(model_dir, trt, shapes))
    if os.path.isfile(os.path.join(target, PARAMS_FILE)):
        logger.info("TensorRT: reusing the converted model in %s", target)
        return target
    if trt.shapes:
        low, opt, high = trt.shapes
        inputs = [Input(min_input_shape=low, optim_input_shape=opt, max_input_shape=high, name="x")]
    else:
        inputs = [Input(warmup_data=tuple(batches), name="x")]
    staging = f"{target}.partial-{os.getpid()}"
    config = TensorRTConfig(inputs=inputs, min_subgraph_size=trt.min_subgraph_size, save_model_dir=staging,
                            precision_mode=PrecisionMode[trt.precision.upper()], workspace_size=trt.workspace_size)
    logger.info("TensorRT: converting %s (%s, shapes %s) into %s", model_dir, trt.precision, list(map(tuple, shapes)), target)
    try:
        convert(os.path.join(model_dir, "inference"), config)
        os.makedirs(cache_dir, exist_ok=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def apply_legacy_tensorrt(config: Config, trt: TensorRTOptions, shape_file: Optional[str], input_name: str = "x") -> None:
    """Legacy path: TensorRT subgraphs with dynamic shapes from `trt.shapes` or a collected `shape_file`,
    serialized engines in `trt.cache_dir`. A Paddle built without TensorRT gets a DeploymentError."""
    precision = {"fp32": Config.Precision.Float32, "fp16": Config.Precision.Half, "int8": Config.Precision.Int8}[trt.precision]
    try:
        config.enable_tensorrt_engine(workspace_size=trt.workspace_size, max_batch_size=trt.max_batch_size,
                                      min_subgraph_size=trt.min_subgraph_size, precision_mode=precision,
                                      use_static=trt.cache_dir is not None, use_calib_mode=trt.calibration)
    except RuntimeError as error:
        if "compile with TENSORRT" in str(error) or "PreconditionNotMet" in str(error):
            raise DeploymentError("use_tensorrt needs a PaddlePaddle GPU build compiled with TensorRT; this "
                                  f"Paddle ({paddle.__version__}) was built without it") from error
        raise
    if trt.cache_dir is not None:
        os.makedirs(trt.cache_dir, exist_ok=True)
        config.set_optim_cache_dir(trt.cache_dir)
    if trt.shapes:
        low, opt, high = trt.shapes
        config.set_trt_dynamic_shape_info({input_name: list(low)}, {input_name: list(high)}, {input_name: list(opt)})
    elif shape_file is not None:
        config.enable_tuned_tensorrt_dynamic_shape(shape_file, True)


class PaddlePredictor:
    """Runs an export with Paddle Inference; `run(batch)` maps an NCHW float32 batch to the outputs."""

    def __init__(self, model_dir: str, options: InferenceOptions,
                 warmup: Optional[Callable[[], List[np.ndarray]]] = None):
        self.model_dir, self.options = model_dir, options
        trt = options.tensorrt
        if trt is not None and model_format(model_dir) == "pir":
            model_dir = convert_for_tensorrt(model_dir, trt, warmup or (lambda: []))
        config = base_config(model_dir, options)
        if trt is not None and model_format(model_dir) == "legacy":
            require_tensorrt()
            apply_legacy_tensorrt(config, trt, self._collect_shapes(model_dir, options, warmup))
        self.config = config
        self.predictor = create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.name = self.describe(options)

    @staticmethod
    def describe(options: InferenceOptions) -> str:
        if options.device == "gpu":
            return f"paddle-gpu-trt-{options.tensorrt.precision}" if options.tensorrt else "paddle-gpu"
        return "paddle-cpu-onednn" if options.enable_mkldnn else "paddle-cpu"

    @staticmethod
    def _collect_shapes(model_dir: str, options: InferenceOptions, warmup) -> Optional[str]:
        """Without explicit shapes, run the warm-up batches once with shape collection on (legacy
        TensorRT's documented flow); the ranges land in `<cache>/shape_range_info.pbtxt`."""
        trt = options.tensorrt
        if trt.shapes or warmup is None:
            return None
        path = os.path.join(trt.cache_dir or os.path.join(model_dir, "tensorrt_cache"), "shape_range_info.pbtxt")
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            config = base_config(model_dir, options)
            config.collect_shape_range_info(path)
            collector = create_predictor(config)
            handle = collector.get_input_handle(collector.get_input_names()[0])
            for batch in warmup():
                handle.reshape(batch.shape)
                handle.copy_from_cpu(batch)
                collector.run()
        return path

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self.input.reshape(batch.shape)
        self.input.copy_from_cpu(batch)
        self.predictor.run()
        return self.predictor.get_output_handle(self.predictor.get_output_names()[0]).copy_to_cpu()


def warmup_batches(sizes: Iterable[int], image_size: Sequence[int], max_batch: int) -> Callable[[], List[np.ndarray]]:
    """Shape-collection inputs: batch 1 and `max_batch` at every size in `sizes` (square), values in the
    normalised range. Collected shapes only need to span what the service will see."""

    def make() -> List[np.ndarray]:
        rng = np.random.default_rng(0)
        sizes_ = list(sizes) or [int(image_size[-1])]
        return [rng.standard_normal((n, 3, s, s)).astype(np.float32) for s in sizes_ for n in sorted({1, max_batch})]

    return make
