"""TensorRT for Paddle Inference along Paddle 3's two routes, with an engine cache keyed by everything an
engine depends on.

PIR exports (`inference.json`) are converted with `paddle.tensorrt.convert`. Its `save_model_dir` is a path
*prefix*: `save_inference_model` writes `<prefix>.json` + `<prefix>.pdiparams`, and the converter writes the
serialized engines into the directory `<prefix>/` and records their absolute paths in the program. So the
conversion goes straight into its final cache entry `<cache>/<key>/` (prefix `<cache>/<key>/inference`: the
entry is a loadable model directory), under a lock, and counts as done only once `complete.json` is written
last; an entry without it is a crash leftover and is rebuilt. `convert` builds on `CUDAPlace(0)`, so it
runs in a child process that sees only the requested GPU.

Legacy exports (`inference.pdmodel`) use `Config.enable_tensorrt_engine` with dynamic shapes (given, or
collected by a warm-up run into `shape_range_info.pbtxt`, which Paddle writes when the collecting predictor
is destroyed) and serialized engines in the same kind of keyed entry.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import paddle
from paddle.inference import Config, create_predictor

from ..output_paths import replaced_atomically
from .options import DeploymentError, TensorRTOptions

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock on cache entries
    fcntl = None

logger = logging.getLogger("ppcls_ext")
MODEL_PREFIX = "inference"
COMPLETE_MARKER = "complete.json"
SHAPE_FILE = "shape_range_info.pbtxt"
Batches = Callable[[], List[np.ndarray]]


def engine_environment(gpu_id: int) -> Dict[str, str]:
    """What a serialized engine is only valid for: the GPU model and compute capability, the TensorRT
    runtime and the Paddle build (engines are not portable across any of them)."""
    major, minor = paddle.device.cuda.get_device_capability(gpu_id)
    return {"gpu": str(paddle.device.cuda.get_device_name(gpu_id)), "compute_capability": f"{major}.{minor}",
            "tensorrt": ".".join(str(v) for v in paddle.inference.get_trt_runtime_version()),
            "paddle": f"{paddle.__version__}+{paddle.version.commit}"}


def cache_root(model_dir: str, trt: TensorRTOptions) -> str:
    return os.path.abspath(trt.cache_dir or os.path.join(model_dir, "tensorrt_cache"))


def cache_key(model_dir: str, trt: TensorRTOptions, route: str, shapes: Sequence[Sequence[int]],
              environment: Dict[str, str]) -> str:
    """Hash of the export's files (name, size, mtime), the route, every TensorRT setting, the input shapes
    (given, or those of the warm-up batches) and `environment`."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) and name.startswith(MODEL_PREFIX + "."):
            stat = os.stat(path)
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    settings = {"route": route, "precision": trt.precision, "min_subgraph_size": trt.min_subgraph_size,
                "workspace_size": trt.workspace_size, "max_batch_size": trt.max_batch_size,
                "calibration": trt.calibration, "shapes": [list(map(int, s)) for s in shapes],
                "environment": environment}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def locked(entry: str) -> Iterator[None]:
    """Hold `<entry>.lock` exclusively: two processes starting on one cache entry build it once."""
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(f"{entry}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_complete(entry: str, in_place: bool = False) -> bool:
    """Whether `entry` was finished (and, with `in_place`, finished at this path: a converted PIR program
    refers to its engine files by absolute path, so a moved entry has to be rebuilt)."""
    path = os.path.join(entry, COMPLETE_MARKER)
    if not os.path.isfile(path):
        return False
    if not in_place:
        return True
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("entry") == entry


def mark_complete(entry: str, description: Dict[str, object]) -> None:
    """Write `complete.json` (what the entry was built from) atomically, as the entry's last file."""
    with replaced_atomically(os.path.join(entry, COMPLETE_MARKER)) as partial, open(partial, "w", encoding="utf-8") as f:
        json.dump(description, f, indent=1, sort_keys=True)


def input_shapes(trt: TensorRTOptions, warmup: Optional[Batches]) -> tuple:
    """(shapes for the key, warm-up batches): the given (min, opt, max) shapes, or the warm-up batches'."""
    if trt.shapes:
        return [list(s) for s in trt.shapes], []
    batches = list(warmup()) if warmup is not None else []
    if not batches:
        raise DeploymentError("TensorRT needs the input shape range: set tensorrt.shapes [min, opt, max] (NCHW) "
                              "or tensorrt.collect_sizes for a warm-up run")
    return [list(b.shape) for b in batches], batches


# --- PIR route: paddle.tensorrt.convert in a child process ------------------------------------------------


def visible_device(gpu_id: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry for `gpu_id`, an index among the devices this process sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(gpu_id)
    entries = [item.strip() for item in visible.split(",") if item.strip()]
    if not 0 <= gpu_id < len(entries):
        raise DeploymentError(f"gpu_id {gpu_id} is not among the GPUs this process sees "
                              f"(CUDA_VISIBLE_DEVICES={visible!r})")
    return entries[gpu_id]


def run_worker(command: List[str], env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True)


def convert_on_gpu(request: Dict[str, object], gpu_id: int) -> None:
    """Run `tensorrt_worker` on `request` in a child process that sees only GPU `gpu_id`, so that
    paddle.tensorrt's hard-coded CUDAPlace(0) is that GPU."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=visible_device(gpu_id),
               PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=os.path.dirname(str(request["save"])),
                                     delete=False) as f:
        json.dump(request, f)
    try:
        done = run_worker([sys.executable, "-m", "ppcls_ext.inference.tensorrt_worker", f.name], env)
    finally:
        os.remove(f.name)
    if done.returncode != 0:
        logger.error("TensorRT conversion output:\n%s", done.stderr)
        lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise DeploymentError(f"TensorRT conversion of {request['model']} on GPU {gpu_id} failed: {reason}")


def convert_for_tensorrt(model_dir: str, trt: TensorRTOptions, gpu_id: int, warmup: Optional[Batches]) -> str:
    """PIR route: the cache entry holding `inference.json` + `inference.pdiparams` with embedded TensorRT
    engines (their files in `inference/`), converted on GPU `gpu_id` unless already complete."""
    if trt.calibration:
        raise DeploymentError("tensorrt.calibration is a legacy-export (inference.pdmodel) feature: "
                              "paddle.tensorrt.convert has no int8 calibrator; for int8 on a PIR export, "
                              "export a quantized (PTQ/QAT) model")
    if trt.precision == "int8":
        logger.warning("TensorRT int8 on a PIR export uses the quantization scales in the model; without "
                       "quantize/dequantize ops TensorRT keeps those layers in float")
    shapes, batches = input_shapes(trt, warmup)
    environment = engine_environment(gpu_id)
    entry = os.path.join(cache_root(model_dir, trt), cache_key(model_dir, trt, "pir", shapes, environment))
    with locked(entry):
        if is_complete(entry, in_place=True):
            logger.info("TensorRT: reusing the converted model in %s", entry)
            return entry
        shutil.rmtree(entry, ignore_errors=True)  # a crashed conversion's leftovers, or a moved entry
        os.makedirs(entry)
        try:
            request: Dict[str, object] = {
                "model": os.path.join(os.path.abspath(model_dir), MODEL_PREFIX),
                "save": os.path.join(entry, MODEL_PREFIX), "precision": trt.precision,
                "min_subgraph_size": trt.min_subgraph_size, "workspace_size": trt.workspace_size,
                "shapes": shapes if trt.shapes else None, "batches": None}
            if batches:
                request["batches"] = os.path.join(entry, "warmup.npz")
                np.savez(str(request["batches"]), *batches)
            logger.info("TensorRT: converting %s (%s, shapes %s) on GPU %d into %s", model_dir, trt.precision,
                        shapes, gpu_id, entry)
            convert_on_gpu(request, gpu_id)
            if request["batches"]:
                os.remove(str(request["batches"]))
            engines = sorted(os.listdir(os.path.join(entry, MODEL_PREFIX)))
            if not any(name.endswith(".trt") for name in engines):
                logger.warning("TensorRT: no subgraph of %s was converted (min_subgraph_size %d): it runs on "
                               "Paddle's GPU kernels", model_dir, trt.min_subgraph_size)
            mark_complete(entry, {"entry": entry, "model_dir": os.path.abspath(model_dir), "route": "pir", "shapes": shapes,
                                  "precision": trt.precision, "environment": environment, "engines": engines})
        except BaseException:
            shutil.rmtree(entry, ignore_errors=True)
            raise
    return entry


# --- legacy route: Config.enable_tensorrt_engine ----------------------------------------------------------


PRECISIONS = {"fp32": Config.Precision.Float32, "fp16": Config.Precision.Half, "int8": Config.Precision.Int8}


def apply_legacy_tensorrt(config: Config, trt: TensorRTOptions, entry: str, shape_file: Optional[str]) -> None:
    """TensorRT subgraphs with the dynamic shapes of `trt.shapes` or a collected `shape_file`, serialized
    engines (and int8 calibration tables) in the cache entry `entry`."""
    try:
        config.enable_tensorrt_engine(workspace_size=trt.workspace_size, max_batch_size=trt.max_batch_size,
                                      min_subgraph_size=trt.min_subgraph_size, precision_mode=PRECISIONS[trt.precision],
                                      use_static=True, use_calib_mode=trt.calibration)
    except RuntimeError as error:
        if "compile with TENSORRT" in str(error) or "PreconditionNotMet" in str(error):
            raise DeploymentError("use_tensorrt needs a PaddlePaddle GPU build compiled with TensorRT; this "
                                  f"Paddle ({paddle.__version__}) was built without it") from error
        raise
    config.set_optim_cache_dir(entry)
    if trt.shapes:
        low, opt, high = ({"x": list(shape)} for shape in trt.shapes)
        config.set_trt_dynamic_shape_info(low, high, opt)
    else:
        config.enable_tuned_tensorrt_dynamic_shape(shape_file, True)


def run_batches(config: Config, batches: Sequence[np.ndarray]) -> None:
    """Run `batches` through a predictor of `config` and destroy it: Paddle writes collected shape ranges
    and int8 calibration tables in the predictor's destructor."""
    predictor = create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    for batch in batches:
        handle.reshape(list(batch.shape))
        handle.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        predictor.run()
    del handle, predictor
    gc.collect()


def collect_shape_ranges(make_config: Callable[[], Config], batches: Sequence[np.ndarray], path: str) -> None:
    """Collect the input/intermediate shape ranges of `batches` into `path` (written whole or not at all)."""
    with replaced_atomically(path) as partial:
        config = make_config()
        config.collect_shape_range_info(partial)
        run_batches(config, batches)
        if not os.path.isfile(partial):
            raise DeploymentError(f"Paddle wrote no shape range file ({partial}) after the warm-up run")


def legacy_tensorrt_config(model_dir: str, trt: TensorRTOptions, gpu_id: int, make_config: Callable[[], Config],
                           warmup: Optional[Batches]) -> Config:
    """Legacy route: a Config from `make_config` (GPU set) with TensorRT applied; shape ranges collected and
    int8 calibration run once per cache entry (the entry's key includes the warm-up shapes, so other
    `collect_sizes` or `max_batch_size` collect again)."""
    shapes, batches = input_shapes(trt, warmup)
    if trt.calibration and not batches:
        batches = list(warmup()) if warmup is not None else []
        if not batches:
            raise DeploymentError("tensorrt.calibration needs warm-up batches to calibrate int8 on")
    environment = engine_environment(gpu_id)
    entry = os.path.join(cache_root(model_dir, trt), cache_key(model_dir, trt, "legacy", shapes, environment))
    shape_file = None if trt.shapes else os.path.join(entry, SHAPE_FILE)
    with locked(entry):
        if not is_complete(entry):
            shutil.rmtree(entry, ignore_errors=True)
            os.makedirs(entry)
            try:
                if shape_file is not None:
                    collect_shape_ranges(make_config, batches, shape_file)
                if trt.calibration:  # int8 calibration: tables are written when this predictor is destroyed
                    calibrating = make_config()
                    apply_legacy_tensorrt(calibrating, trt, entry, shape_file)
                    run_batches(calibrating, batches)
                mark_complete(entry, {"model_dir": os.path.abspath(model_dir), "route": "legacy", "shapes": shapes,
                                      "precision": trt.precision, "calibration": trt.calibration,
                                      "environment": environment})
            except BaseException:
                shutil.rmtree(entry, ignore_errors=True)
                raise
    config = make_config()
    apply_legacy_tensorrt(config, trt, entry, shape_file)
    return config
