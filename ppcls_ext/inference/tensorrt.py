"""TensorRT for Paddle Inference along Paddle 3's two routes, with an engine cache keyed by everything an
engine depends on.

Input shapes: one (min, opt, max) NCHW range per predictor, given as `tensorrt.shapes` or spanning the
warm-up shapes with opt = the shape the service runs (not whichever warm-up batch came first).

PIR exports (`inference.json`) are converted with `paddle.tensorrt.convert`, always given explicit min/opt/max
shapes: with three feeds Paddle's shape collection takes, per dimension, the smallest, middle and largest
value (collect_shape_manager.cc `StatisticShapeRangeInfo`, "shapes.size() == 3"), i.e. exactly ours, while
warm-up data would make opt the most frequent size, ties broken by an unstable sort. Its `save_model_dir` is a
path *prefix*: `save_inference_model` writes `<prefix>.json` + `<prefix>.pdiparams`, and the converter writes
the serialized engines into the directory `<prefix>/` (created only when a subgraph is converted) and records
their absolute paths in the program. So the conversion goes straight into its final cache entry
`<cache>/<key>/` (prefix `<cache>/<key>/inference`: the entry is a loadable model directory), under a lock,
and counts as done only once `complete.json` is written last; an entry without it is a crash leftover and is
rebuilt. `convert` builds on `CUDAPlace(0)`, so it runs in a child process that sees only the requested GPU.

Legacy exports (`inference.pdmodel`) use `Config.enable_tensorrt_engine` with shape ranges for every
TensorRT input, intermediate tensors included, collected by running the min, max and opt shapes through
Paddle's shape collection (`collect_shape_range_info`; Paddle writes the file when the collecting predictor is
destroyed, and takes per dimension the most frequent value as opt, so opt runs most often) and read back
with `enable_tuned_tensorrt_dynamic_shape`; int8 calibration tables and serialized engines live in the same
keyed entry.
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
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from paddle.inference import Config, create_predictor

from ..output_paths import replaced_atomically
from . import trt_runtime
from .options import DeploymentError, TensorRTOptions
from .trt_int8 import CalibrationSet, calibration_set, calibration_summary, require_scales

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock on cache entries
    fcntl = None

logger = logging.getLogger("ppcls_ext")
MODEL_PREFIX = "inference"
COMPLETE_MARKER = "complete.json"
SHAPE_FILE = "shape_range_info.pbtxt"
CALIBRATION_TABLE_PREFIX = "trt_calib_"  # analysis/helper.h GetTrtCalibPath: <dir>/trt_calib_<engine key>
Shape = Tuple[int, ...]
ShapeRange = Tuple[Shape, Shape, Shape]
#: environment variables a conversion child must not inherit: the launcher's GPU choice is an index among
#: all GPUs, and the child sees only one (CUDA_VISIBLE_DEVICES)
CHILD_DROPPED_ENV = ("FLAGS_selected_gpus",)


def engine_environment(gpu_id: int) -> Dict[str, str]:
    """What a serialized engine is only valid for: the GPU model and compute capability, the TensorRT
    runtime (and the tensorrt wheel, which builds PIR engines and whose version gates reuse too) and the
    Paddle build (engines are not portable across any of them)."""
    runtime = trt_runtime.runtime_version()
    major, minor = paddle.device.cuda.get_device_capability(gpu_id)
    return {"gpu": str(paddle.device.cuda.get_device_name(gpu_id)), "compute_capability": f"{major}.{minor}",
            "tensorrt": trt_runtime.dotted(runtime), "tensorrt_wheel": trt_runtime.wheel_version() or "none",
            "paddle": f"{paddle.__version__}+{paddle.version.commit}"}


def cache_root(model_dir: str, trt: TensorRTOptions) -> str:
    return os.path.abspath(trt.cache_dir or os.path.join(model_dir, "tensorrt_cache"))


def cache_key(model_dir: str, trt: TensorRTOptions, route: str, shapes: ShapeRange, environment: Dict[str, str],
              calibration: Optional[str] = None) -> str:
    """Hash of the export's files (name, size, mtime), the route, every TensorRT setting, the (min, opt, max)
    shapes, `environment` and the calibration data's fingerprint."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) and name.startswith(MODEL_PREFIX + "."):
            stat = os.stat(path)
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    settings = {"route": route, "precision": trt.precision, "min_subgraph_size": trt.min_subgraph_size,
                "workspace_size": trt.workspace_size, "max_batch_size": trt.max_batch_size,
                "calibration": calibration, "shapes": [list(map(int, s)) for s in shapes],
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


def shape_range(trt: TensorRTOptions, warmup_shapes: Sequence[Sequence[int]],
                serving_shape: Optional[Sequence[int]]) -> ShapeRange:
    """(min, opt, max): `trt.shapes` as given; otherwise min and max span `warmup_shapes` and opt is
    `serving_shape` (the batch and image size the service runs; the largest warm-up shape without one),
    brought into that range."""
    if trt.shapes:
        return tuple(tuple(int(d) for d in s) for s in trt.shapes)  # type: ignore[return-value]
    if not warmup_shapes:
        raise DeploymentError("TensorRT needs the input shape range: set tensorrt.shapes [min, opt, max] (NCHW) "
                              "or tensorrt.collect_sizes (from Python: PaddlePredictor(..., warmup_shapes=...))")
    shapes = np.array([[int(d) for d in s] for s in warmup_shapes])
    low, high = shapes.min(axis=0), shapes.max(axis=0)
    wanted = np.array([int(d) for d in serving_shape]) if serving_shape is not None else high
    opt = np.clip(wanted, low, high)
    if serving_shape is not None and not np.array_equal(opt, wanted):
        logger.warning("TensorRT: the serving shape %s lies outside the collected range %s..%s; opt shape %s",
                       list(wanted), low.tolist(), high.tolist(), opt.tolist())
    return tuple(low.tolist()), tuple(opt.tolist()), tuple(high.tolist())


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


def child_environment(gpu_id: int) -> Dict[str, str]:
    """This environment for the conversion child: only GPU `gpu_id` visible, ppcls_ext importable, and no
    inherited FLAGS_selected_gpus (an index among all GPUs, which the child does not see)."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {key: value for key, value in os.environ.items() if key not in CHILD_DROPPED_ENV}
    env.update(CUDA_VISIBLE_DEVICES=visible_device(gpu_id),
               PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    return env


def convert_on_gpu(request: Dict[str, object], gpu_id: int, cache: str) -> None:
    """Run `tensorrt_worker` on `request` in a child process that sees only GPU `gpu_id`, so that
    paddle.tensorrt's hard-coded CUDAPlace(0) is that GPU."""
    env = child_environment(gpu_id)
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
        named = trt_runtime.named_failure(RuntimeError(reason), cache)
        raise (trt_runtime.TensorRTError if named else DeploymentError)(
            f"TensorRT conversion of {request['model']} on GPU {gpu_id} failed: {named or reason}")


def converted_engines(entry: str) -> List[str]:
    """The engine files the converter wrote; its engine folder exists only when a subgraph was converted
    (util.py `get_cache_path` is called from `convert_subgraph_to_trt` alone)."""
    folder = os.path.join(entry, MODEL_PREFIX)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def convert_for_tensorrt(model_dir: str, trt: TensorRTOptions, gpu_id: int, shapes: ShapeRange) -> str:
    """PIR route: the cache entry holding `inference.json` + `inference.pdiparams` with embedded TensorRT
    engines (their files in `inference/`), converted on GPU `gpu_id` unless already complete."""
    if trt.calibration:
        raise DeploymentError("tensorrt.calibration is a legacy-export (inference.pdmodel) feature: "
                              "paddle.tensorrt.convert has no int8 calibrator; for int8 on a PIR export, "
                              "export a quantized (QDQ) model")
    if trt.precision == "int8":
        require_scales(model_dir, "pir")
    environment = engine_environment(gpu_id)
    trt_runtime.check_wheel(trt_runtime.version_numbers(environment["tensorrt"]))
    root = cache_root(model_dir, trt)
    entry = os.path.join(root, cache_key(model_dir, trt, "pir", shapes, environment))
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
                "shapes": [list(s) for s in shapes]}
            logger.info("TensorRT: converting %s (%s, min/opt/max %s) on GPU %d into %s", model_dir, trt.precision,
                        [list(s) for s in shapes], gpu_id, entry)
            convert_on_gpu(request, gpu_id, root)
            engines = converted_engines(entry)
            if not any(name.endswith(".trt") for name in engines):
                logger.warning("TensorRT: no subgraph of %s was converted (min_subgraph_size %d): it runs on "
                               "Paddle's GPU kernels", model_dir, trt.min_subgraph_size)
            mark_complete(entry, {"entry": entry, "model_dir": os.path.abspath(model_dir), "route": "pir",
                                  "shapes": [list(s) for s in shapes], "precision": trt.precision,
                                  "environment": environment, "engines": engines})
        except BaseException:
            shutil.rmtree(entry, ignore_errors=True)
            raise
    return entry


# --- legacy route: Config.enable_tensorrt_engine ----------------------------------------------------------


PRECISIONS = {"fp32": Config.Precision.Float32, "fp16": Config.Precision.Half, "int8": Config.Precision.Int8}


def apply_legacy_tensorrt(config: Config, trt: TensorRTOptions, entry: str, shape_file: str) -> None:
    """TensorRT subgraphs with the collected shape ranges of `shape_file` (every engine input), serialized
    engines and int8 calibration tables in the cache entry `entry`."""
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


def collection_batches(shapes: ShapeRange) -> List[np.ndarray]:
    """Inputs for shape collection: min and max once, opt three times (Paddle's collected opt is the most
    frequent value of each dimension, analysis_predictor.cc `StatisticShapeRangeInfo`)."""
    low, opt, high = shapes
    return [np.zeros(shape, np.float32) for shape in (low, high, opt, opt, opt)]


def collect_shape_ranges(make_config: Callable[[], Config], shapes: ShapeRange, path: str) -> None:
    """Collect the shape ranges of every tensor for `shapes` into `path` (written whole or not at all)."""
    with replaced_atomically(path) as partial:
        config = make_config()
        config.collect_shape_range_info(partial)
        run_batches(config, collection_batches(shapes))
        if not os.path.isfile(partial):
            raise DeploymentError(f"Paddle wrote no shape range file ({partial}) after the collection run")


def _tables(folder: str) -> Dict[str, int]:
    """The calibration tables in `folder` and their modification times."""
    if not os.path.isdir(folder):
        return {}
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)
            if name.startswith(CALIBRATION_TABLE_PREFIX)}


def calibrate(make_config: Callable[[], Config], trt: TensorRTOptions, entry: str, shape_file: str, model_dir: str,
              calibration: CalibrationSet) -> List[str]:
    """Run the calibration batches through a calibrating predictor and destroy it; returns the calibration
    tables, moved into `entry`, where the serving predictor reads them (ir_pass_manager.cc: with an optim
    cache dir, `model_opt_cache_dir` is that dir; tensorrt_subgraph_pass.cc reads `GetTrtCalibTableData(
    model_opt_cache_dir, calibration_engine_key)`). AnalysisPredictor::SaveTrtCalibToDisk writes them under
    `<model dir>/_opt_cache/` (in the sources read) — or the entry; both are looked at."""
    written = os.path.join(os.path.abspath(model_dir), "_opt_cache")
    had_folder = os.path.isdir(written)
    before = {folder: _tables(folder) for folder in (entry, written)}
    config = make_config()
    apply_legacy_tensorrt(config, trt, entry, shape_file)
    run_batches(config, calibration.batches)
    tables = []
    for folder, old in before.items():
        for name, mtime in _tables(folder).items():
            if old.get(name) != mtime:
                if folder != entry:
                    shutil.move(os.path.join(folder, name), os.path.join(entry, name))
                tables.append(name)
    if not had_folder and os.path.isdir(written) and not os.listdir(written):
        os.rmdir(written)
    if not tables:
        raise DeploymentError(f"TensorRT int8 calibration on {len(calibration.batches)} batches from "
                              f"{calibration.source} wrote no calibration table (trt_calib_* in {entry} or {written}; "
                              "is the model folder writable?): the predictor would calibrate again instead of running int8")
    return sorted(tables)


def legacy_tensorrt_config(model_dir: str, trt: TensorRTOptions, gpu_id: int, make_config: Callable[[], Config],
                           shapes: ShapeRange) -> Config:
    """Legacy route: a Config from `make_config` (GPU set) with TensorRT applied; shape ranges collected and
    int8 calibration run once per cache entry (its key covers the shapes and the calibration data)."""
    if trt.precision == "int8" and not trt.calibration:
        require_scales(model_dir, "legacy")
    calibration = calibration_set(model_dir, trt, shapes[1]) if trt.calibration else None
    environment = engine_environment(gpu_id)
    key = cache_key(model_dir, trt, "legacy", shapes, environment, calibration.fingerprint if calibration else None)
    entry = os.path.join(cache_root(model_dir, trt), key)
    shape_file = os.path.join(entry, SHAPE_FILE)
    with locked(entry):
        if not is_complete(entry):
            shutil.rmtree(entry, ignore_errors=True)
            os.makedirs(entry)
            try:
                collect_shape_ranges(make_config, shapes, shape_file)
                tables = calibrate(make_config, trt, entry, shape_file, model_dir, calibration) if calibration else []
                mark_complete(entry, {"model_dir": os.path.abspath(model_dir), "route": "legacy",
                                      "shapes": [list(s) for s in shapes], "precision": trt.precision,
                                      "calibration": calibration_summary(calibration), "calibration_tables": tables,
                                      "environment": environment})
            except BaseException:
                shutil.rmtree(entry, ignore_errors=True)
                raise
        else:
            logger.info("TensorRT: reusing the shape ranges%s in %s", " and calibration" if calibration else "", entry)
    config = make_config()
    apply_legacy_tensorrt(config, trt, entry, shape_file)
    return config
