"""Stand-ins for the parts of Paddle that only a CUDA + TensorRT build runs, each following Paddle's source
(PaddlePaddle/Paddle, files named below; where the stored versions differ, the behaviour common to them).
They accept what Paddle accepts and fail where Paddle fails, with Paddle's messages and exception types
(paddle/fluid/pybind/exception.cc: InvalidArgument -> ValueError, PreconditionNotMet/NotFound ->
RuntimeError, Fatal -> SystemError).

- `StandInConfig`: `paddle.inference.Config` with the method set and signatures of the *installed* build,
  read from its pybind11 docstrings (e.g. "enable_tensorrt_engine(self: ..., workspace_size: int =
  1073741824, max_batch_size: int = 1, ..., use_cuda_graph: bool = False) -> None"): a method the real
  class lacks raises AttributeError, an unknown keyword or a wrong argument count or type raises TypeError.
- `GpuBuild`: what the machine decides: the libnvinfer version, whether it loads, failures to inject.
  `runtime_version` is `paddle.inference.get_trt_runtime_version`, which loads libnvinfer through phi's
  dynload (tensorrt/helper.h `GetInferLibVersion` -> `dy::getInferLibVersion`; dynamic_loader.cc
  `GetTensorRtDsoHandle` -> `GetDsoHandleFromSearchPath(FLAGS_tensorrt_dir, "libnvinfer.so")`, whose
  PreconditionNotMet text "The third-party dynamic library (%s) that Paddle depends on is not configured
  correctly. (error code is %s)" is in the installed libphi.so).
- `StandInPredictor`: `paddle.inference.create_predictor` of a GPU build, for a StandInConfig. The stand-in
  legacy program has two TensorRT subgraph inputs, the image `x` and an intermediate tensor (a subgraph
  that starts after an op TensorRT does not take), `SUBGRAPH_INPUTS`:
  * shape ranges: analysis_predictor.cc `~AnalysisPredictor` ("if (config_.shape_range_info_collected())
    { StatisticShapeRangeInfo(); }") writes the collected ranges of every tensor only when the predictor is
    destroyed, per dimension min, max and the most frequent value as opt (`ShapeMaxFreq`; ties fall to an
    unstable std::sort, here: the smallest value), in shape_range_info.proto's text format; tuned ranges are
    read back by tensorrt_subgraph_pass.cc (`DeserializeShapeRangeInfo`). A subgraph input without a range
    fails as op_converter.h `ConvertBlockToTRTEngine` does: "some trt inputs dynamic shape info not set"
    (InvalidArgument).
  * int8: with `use_calib_mode` the pass reads the table `<model_opt_cache_dir>/trt_calib_<key>`
    (tensorrt_subgraph_pass.cc `GetTrtCalibTableData`; ir_pass_manager.cc: the optim cache dir when set,
    else `<model dir>/_opt_cache/`); without one the engine op calibrates (tensorrt_engine_op.h
    `RunCalibration`: buffers sized from the first batch, `calib_buffers[x] = t.memory_size()`; every later
    batch copied with that size, trt_int8_calibrator.cc `setBatch`) and the destroyed predictor writes the
    table to `<model dir>/_opt_cache/trt_calib_<key>` (analysis_predictor.cc `SaveTrtCalibToDisk`). The
    stand-in's table records the shapes and bytes it was calibrated on, and the batches whose size differed
    from the first (which Paddle truncates or over-reads silently). Without `use_calib_mode` a float program
    has no scales and the build fails as TensorRT and engine.cc `FreezeNetwork` do ("Calibration failure
    occurred with no scaling factors detected" -> "Build TensorRT cuda engine failed!", Fatal).
  * `use_static`: engines are serialized to `<model_opt_cache_dir>/trt_serialize_<key>` (helper.h
    `GetTrtEngineSerializedPath`) and deserialized from there on the next start; a failed deserialization
    raises engine.cc `Deserialize`'s "Building TRT cuda engine failed when deserializing engine info" (Fatal).
  * a missing libnvinfer fails when the engine is created, as dynload does.
  * a converted PIR model's engine files must exist where the program records them
    (new_executor/instruction/tensorrt_engine_instruction.cc: `ReadBinaryFileToString(engine_serialized_path)`).
- `tensorrt_export_module`: `paddle.tensorrt.export` as in python/paddle/tensorrt/export.py (commit 7357bc7f;
  the same since PR #71722, i.e. Paddle 3.0-3.3): `Input.__init__`, `PrecisionMode`, `TensorRTConfig.__init__`
  with their exact parameters and checks; `convert(model_path, config)` resolves `model_path` as a file or a
  prefix, refuses `save_model_dir == model_path`, feeds `generate_input_data()`'s three arrays (min, opt,
  max) or the warm-up data to the shape collection, whose profile is per dimension the middle of three
  sorted values, else the most frequent (collect_shape_manager.cc `StatisticShapeRangeInfo`); converts each
  subgraph of at least `min_subgraph_size` ops (util.py `run_trt_partition`, `FLAGS_trt_min_group_size`),
  creating the engine folder only then (converter.py `convert_subgraph_to_trt` -> util.py `get_cache_path`:
  "if not os.path.exists(cache_path): os.makedirs(cache_path)"; `CACHE_FILE =
  f"{CACHE_ROOT}/engine_{engine_name}_{self.engine_num}.trt"`, whose path goes into the program); in INT8 it
  only sets the INT8 flag and takes scales from quantize/dequantize ops (util.py `run_pir_pass`,
  `set_dynamic_range`), so a program without them fails as TensorRT does ("Calibration failure occurred with
  no scaling factors detected") and the converter asserts ("Failed to build engine. please see ERROR log
  from trt.Logger"); then `paddle.static.save_inference_model(trt_config.save_model_dir, ...)` treats the
  dir as a path prefix (python/paddle/static/pir_io.py `save_inference_model_pir`, read in the installed
  3.3.1: "model_path = path_prefix + '.json'"). The stand-in's `.json` holds the engine paths and the op
  names in place of a PIR program.
"""
from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import sys
import types
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle

RealConfig = paddle.inference.Config

# --- Config: signatures from the installed build's pybind11 docstrings --------------------------------------


def _split_top_level(text: str) -> List[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[(<{":
            depth += 1
        elif char in "])>}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def pybind_overloads(name: str) -> List[List[Tuple[str, str, bool]]]:
    """Each overload of `Config.<name>` as [(parameter, type, has_default)], `self` left out."""
    doc = getattr(RealConfig, name).__doc__ or ""
    overloads = []
    for line in doc.splitlines():
        match = re.match(rf"^\s*(?:\d+\.\s+)?{re.escape(name)}\((.*)\)\s*->", line)
        if not match or match.group(1) == "*args, **kwargs":
            continue
        params = []
        for part in _split_top_level(match.group(1)):
            declaration, _, default = part.partition(" = ")
            pname, _, ptype = declaration.partition(":")
            if pname.strip() != "self":
                params.append((pname.strip(), ptype.strip(), bool(default)))
        overloads.append(params)
    if not overloads:
        raise AssertionError(f"no signature in the docstring of paddle.inference.Config.{name}")
    return overloads


def _type_ok(value: Any, ptype: str) -> bool:
    if ptype == "str":
        return isinstance(value, str)
    if ptype in ("int", "bool"):  # pybind11 converts bools and ints into each other, nothing else
        return isinstance(value, (int, np.integer))
    if ptype == "float":
        return isinstance(value, (int, float, np.number))
    if ptype.endswith("Precision"):
        return isinstance(value, RealConfig.Precision)
    if ptype.startswith("dict[str, list[int]]"):
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and all(isinstance(d, (int, np.integer)) for d in v)
            for k, v in value.items())
    if ptype.startswith(("list[", "set[")):
        return isinstance(value, (list, tuple, set))
    return True


def bind(name: str, args: tuple, kwargs: dict) -> Dict[str, Any]:
    """The arguments of a call to `Config.<name>` by parameter name, as pybind11 would accept them."""
    errors = []
    for params in pybind_overloads(name):
        names = [p[0] for p in params]
        bound: Dict[str, Any] = {}
        if len(args) > len(params):
            errors.append(f"{len(args)} positional arguments for {names}")
            continue
        for (pname, _, _), value in zip(params, args):
            bound[pname] = value
        unknown = [k for k in kwargs if k not in names or re.fullmatch(r"arg\d+", k)]
        if unknown:
            errors.append(f"unknown keyword(s) {unknown}; parameters {names}")
            continue
        bound.update(kwargs)
        missing = [p for p, _, has_default in params if p not in bound and not has_default]
        wrong = [p for p, t, _ in params if p in bound and not _type_ok(bound[p], t)]
        if missing or wrong:
            errors.append(f"missing {missing}, wrong type {wrong} for {params}")
            continue
        return bound
    raise TypeError(f"paddle.inference.Config.{name}(): incompatible arguments {args} {kwargs}: {'; '.join(errors)}")


class StandInConfig:
    """paddle.inference.Config of a CUDA + TensorRT build: records the calls whose signatures the installed
    build's Config declares; anything else fails as it would on the real class."""

    Precision = RealConfig.Precision

    def __init__(self, *args, **kwargs):
        self.model = bind("__init__", args, kwargs)
        self.calls: List[Tuple[str, Dict[str, Any]]] = []

    def __getattr__(self, name: str):
        if name.startswith("_") or not callable(getattr(RealConfig, name, None)):
            raise AttributeError(f"paddle.inference.Config has no method {name!r} (Paddle {paddle.__version__})")

        def method(*args, **kwargs):
            self.calls.append((name, bind(name, args, kwargs)))

        return method

    def called(self, name: str) -> List[Dict[str, Any]]:
        return [arguments for called, arguments in self.calls if called == name]

    @property
    def program_file(self) -> str:
        return self.model["arg0"]



# --- the GPU build and its machine ---------------------------------------------------------------------------

LIBNVINFER_MISSING = (
    "(PreconditionNotMet) The third-party dynamic library (libnvinfer.so) that Paddle depends on is not configured "
    "correctly. (error code is libnvinfer.so: cannot open shared object file: No such file or directory)\n"
    "  Suggestions:\n  1. Check if the third-party dynamic library (e.g. CUDA, CUDNN) is installed correctly and its "
    "version is matched with paddlepaddle you installed.\n  2. Configure third-party dynamic library environment "
    "variables as follows:\n  - Linux: set LD_LIBRARY_PATH by `export LD_LIBRARY_PATH=...`")
BUILD_FAILED = ("(Fatal) Build TensorRT cuda engine failed! Please recheck you configurations related to "
                "paddle-TensorRT.\n  [Hint: infer_engine_ should not be null.] (at ../paddle/fluid/inference/tensorrt/engine.cc)")
DESERIALIZE_FAILED = ("(Fatal) Building TRT cuda engine failed when deserializing engine info. Please check:\n"
                      "1. Your TRT serialization is generated and loaded on the same GPU architecture;\n2. The Paddle "
                      "Inference version of generating serialization file and doing inference are consistent.")
NO_SCALES = "Calibration failure occurred with no scaling factors detected."
SHAPES_NOT_SET = "(InvalidArgument) some trt inputs dynamic shape info not set, check the INFO log above for more details."

#: the stand-in legacy program's TensorRT subgraph inputs, with their shapes for an input shape
SUBGRAPH_INPUTS = {"x": lambda s: list(s), "index_select_0.tmp_0": lambda s: [s[0], 16, (s[2] + 1) // 2, (s[3] + 1) // 2]}


@dataclass
class GpuBuild:
    """A CUDA + TensorRT build on a machine: libnvinfer's version and whether it loads, and failures to inject."""

    trt_version: Tuple[int, int, int] = (8, 6, 1)
    libnvinfer: bool = True
    build_fails: bool = False
    deserialize_fails: bool = False

    def runtime_version(self) -> Tuple[int, int, int]:
        """paddle.inference.get_trt_runtime_version: loads libnvinfer through dynload."""
        if not self.libnvinfer:
            raise RuntimeError(LIBNVINFER_MISSING)
        return self.trt_version

    def compile_version(self) -> Tuple[int, int, int]:
        return self.trt_version


# --- create_predictor ----------------------------------------------------------------------------------------


def per_dimension_opt(shapes: Sequence[Sequence[int]]) -> List[int]:
    """Paddle's collected opt: per dimension the most frequent value (ties: the smallest, one outcome of the
    unstable sort in `ShapeMaxFreq`)."""
    result = []
    for values in zip(*shapes):
        counts = Counter(int(v) for v in values)
        best = max(counts.values())
        result.append(min(v for v, c in counts.items() if c == best))
    return result


def shape_range_text(ranges: Dict[str, Tuple[List[int], List[int], List[int]]]) -> str:
    """shape_range_info.proto in protobuf text format: one `shape_range_info { name min_shape... }` per tensor."""
    blocks = []
    for name, (low, high, opt) in ranges.items():
        fields = [f'  name: "{name}"'] + [f"  min_shape: {d}" for d in low] + [f"  max_shape: {d}" for d in high] + \
                 [f"  opt_shape: {d}" for d in opt]
        blocks.append("shape_range_info {\n" + "\n".join(fields) + "\n}\n")
    return "".join(blocks)


def read_shape_ranges(path: str) -> Dict[str, Dict[str, List[int]]]:
    """The text format back: {name: {"min_shape": [...], "max_shape": [...], "opt_shape": [...]}}."""
    ranges: Dict[str, Dict[str, List[int]]] = {}
    for block in re.findall(r"shape_range_info \{(.*?)\}", open(path, encoding="utf-8").read(), re.S):
        name = re.search(r'name: "([^"]+)"', block).group(1)
        ranges[name] = {key: [int(v) for v in re.findall(rf"{key}: (-?\d+)", block)]
                        for key in ("min_shape", "max_shape", "opt_shape")}
    return ranges


def program_has_scales(path: str) -> bool:
    """Whether a stand-in program holds quantize/dequantize ops."""
    with open(path, "rb") as f:
        return b"quantize_linear" in f.read()


class _Handle:
    def __init__(self, owner: "StandInPredictor"):
        self.owner = owner

    def reshape(self, shape):
        self.owner.shape = [int(d) for d in shape]

    def copy_from_cpu(self, array):
        if list(array.shape) != self.owner.shape:
            raise ValueError("(InvalidArgument) copy_from_cpu after a reshape to another shape")
        self.owner.fed.append(np.array(array))

    def copy_to_cpu(self):
        return np.zeros((self.owner.shape[0], 10), np.float32)


class StandInPredictor:
    """create_predictor(config) of a GPU build (`build`), for a StandInConfig; logs {config, runs, mode} in
    `log` (not itself, so that dropping the predictor destroys it, as in Paddle)."""

    log: List[Dict[str, Any]] = []
    build: GpuBuild = GpuBuild()

    def __init__(self, config: StandInConfig):
        self.config, self.shape, self.fed, self.runs, self.mode = config, None, [], [], "failed"
        self.collecting = [a["arg0"] for a in config.called("collect_shape_range_info")]
        self.calibration_table: Optional[str] = None
        for path in config.model.values():
            if isinstance(path, str) and not os.path.isfile(path):
                raise RuntimeError(f"(NotFound) Cannot open file {path}")
        if config.program_file.endswith(".json"):
            with open(config.program_file, encoding="utf-8") as f:
                program = json.load(f)
            for engine in program.get("engine_serialized_data", []):  # tensorrt_engine_instruction.cc
                if not os.path.isfile(engine):
                    raise RuntimeError(f"(NotFound) Cannot open file {engine}: the converted model's engine is missing")
        self.mode = self._prepare_tensorrt() if config.called("enable_tensorrt_engine") else "gpu"
        StandInPredictor.log.append({"config": config, "runs": self.runs, "mode": self.mode, "fed": self.fed,
                                     "table": self.calibration_table})

    def _opt_cache_dir(self) -> str:
        """ir_pass_manager.cc: the optim cache dir when set, else `<model dir>/_opt_cache/`."""
        given = self.config.called("set_optim_cache_dir")
        return given[-1]["arg0"] if given else os.path.join(os.path.dirname(self.config.program_file), "_opt_cache")

    def _engine_key(self, calibration: bool) -> str:
        """tensorrt_subgraph_pass.cc `GenerateEngineKey`: subgraph inputs/outputs, max_batch_size (not for the
        calibration key) and precision, hashed."""
        (engine,) = self.config.called("enable_tensorrt_engine")
        text = "#".join(SUBGRAPH_INPUTS) + ("" if calibration else f"#{engine.get('max_batch_size', 1)}") + \
            f"#{int(engine.get('precision_mode', RealConfig.Precision.Float32))}"
        return str(int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10**19)

    def _prepare_tensorrt(self) -> str:
        """What tensorrt_subgraph_pass.cc + engine.cc do when the predictor is created; returns the mode."""
        build = StandInPredictor.build
        if not build.libnvinfer:
            raise RuntimeError(LIBNVINFER_MISSING)
        (engine,) = self.config.called("enable_tensorrt_engine")
        ranges: Dict[str, Any] = {}
        for tuned in self.config.called("enable_tuned_tensorrt_dynamic_shape"):
            path = tuned["shape_range_info_path"]
            if not os.path.isfile(path):
                raise RuntimeError(f"(NotFound) shape range info file {path}")
            ranges.update(read_shape_ranges(path))
        for given in self.config.called("set_trt_dynamic_shape_info"):
            ranges.update({name: {"min_shape": shape} for name, shape in given.get("min_input_shape", {}).items()})
        if ranges and any(name not in ranges for name in SUBGRAPH_INPUTS):
            raise ValueError(SHAPES_NOT_SET)
        self.ranges = ranges
        int8 = engine.get("precision_mode") == RealConfig.Precision.Int8
        calib_mode = engine.get("use_calib_mode", True)
        cache = self._opt_cache_dir()
        if int8 and calib_mode:
            table = os.path.join(cache, f"trt_calib_{self._engine_key(calibration=True)}")
            if not os.path.isfile(table):
                return "calibrating"  # the engine op runs natively and feeds the calibrator
            with open(table, encoding="utf-8") as f:
                self.calibration_table = f.read()
        elif int8 and not program_has_scales(self.config.program_file):
            print(f"[TRT] ERROR: {NO_SCALES}", file=sys.stderr)
            raise SystemError(BUILD_FAILED)
        serialized = os.path.join(cache, f"trt_serialize_{self._engine_key(calibration=False)}")
        if engine.get("use_static") and os.path.isfile(serialized):
            if build.deserialize_fails:
                raise SystemError(DESERIALIZE_FAILED)
            return "int8" if int8 else "engine"
        if build.build_fails:
            raise SystemError(BUILD_FAILED)
        if engine.get("use_static"):
            os.makedirs(cache, exist_ok=True)
            with open(serialized, "wb") as f:
                f.write(b"serialized engine")
        return "int8" if int8 else "engine"

    def get_input_names(self):
        return ["x"]

    def get_output_names(self):
        return ["softmax_0.tmp_0"]

    def get_input_handle(self, name):
        return _Handle(self)

    def get_output_handle(self, name):
        return _Handle(self)

    def run(self):
        self.runs.append(tuple(self.shape))

    def __del__(self):
        for path in self.collecting:  # AnalysisPredictor's destructor: StatisticShapeRangeInfo()
            if not self.runs:
                continue
            ranges = {}
            for name, derive in SUBGRAPH_INPUTS.items():
                shapes = [derive(run) for run in self.runs]
                ranges[name] = (np.min(shapes, axis=0).tolist(), np.max(shapes, axis=0).tolist(), per_dimension_opt(shapes))
            with open(path, "w", encoding="utf-8") as f:
                f.write(shape_range_text(ranges))
        if self.mode == "calibrating" and self.fed:  # SaveTrtCalibToDisk
            folder = os.path.join(os.path.dirname(self.config.program_file), "_opt_cache")
            os.makedirs(folder, exist_ok=True)
            first = self.fed[0].nbytes
            table = {"buffer_bytes": first, "shapes": [list(a.shape) for a in self.fed],
                     "data": hashlib.sha256(b"".join(np.ascontiguousarray(a, np.float32).tobytes() for a in self.fed)).hexdigest(),
                     "mismatched_batches": [i for i, a in enumerate(self.fed) if a.nbytes != first]}
            with open(os.path.join(folder, f"trt_calib_{self._engine_key(calibration=True)}"), "w", encoding="utf-8") as f:
                json.dump(table, f)


# --- paddle.tensorrt.export -----------------------------------------------------------------------------------


class PrecisionMode(enum.Enum):
    FP32 = "FP32"
    FP16 = "FP16"
    BF16 = "BF16"
    INT8 = "INT8"


class Input:
    def __init__(self, warmup_data: Optional[tuple] = None, min_input_shape: Optional[tuple] = None,
                 max_input_shape: Optional[tuple] = None, optim_input_shape: Optional[tuple] = None,
                 input_data_type: Optional[str] = "float32", input_range: Optional[tuple] = None,
                 name: Optional[str] = None) -> None:
        if warmup_data is not None:
            if min_input_shape or max_input_shape or optim_input_shape:
                raise ValueError("warmup data provided; min/max/optim shapes are ignored.")
        elif None in (min_input_shape, max_input_shape, optim_input_shape):
            raise ValueError("When warm_data is None, min/max/optim shapes must be specified.")
        self.warmup_data, self.min_input_shape, self.max_input_shape = warmup_data, min_input_shape, max_input_shape
        self.optim_input_shape, self.input_data_type, self.input_range, self.name = (
            optim_input_shape, input_data_type, input_range, name)

    def generate_input_data(self):
        if self.warmup_data is not None:
            raise RuntimeError("generate_input_data() should not be called when warmup_data is provided.")
        low, high = self.input_range or ((0.0, 1.0) if "float" in self.input_data_type else (1, 10))
        return tuple(np.random.uniform(low, high, size=s).astype(self.input_data_type)
                     for s in (self.min_input_shape, self.optim_input_shape, self.max_input_shape))


class TensorRTConfig:
    def __init__(self, inputs: list, min_subgraph_size: Optional[int] = 3, save_model_dir: Optional[str] = None,
                 disable_ops=None, precision_mode: PrecisionMode = PrecisionMode.FP32, ops_run_float=None,
                 optimization_level: Optional[int] = 3, disable_passes: list = [],  # noqa: B006 (Paddle's default)
                 workspace_size: Optional[int] = 1 << 30, use_cuda_graph: Optional[bool] = False,
                 refit_params_path: Optional[str] = None) -> None:
        has_input_data = [i.warmup_data is not None for i in inputs]
        if any(has_input_data) and not all(has_input_data):
            raise ValueError("All Inputs must have input_data if any does.")
        self.inputs, self.min_subgraph_size, self.save_model_dir = inputs, min_subgraph_size, save_model_dir
        self.precision_mode, self.ops_run_float, self.disable_ops = precision_mode, ops_run_float, disable_ops
        self.disable_passes, self.optimization_level, self.workspace_size = disable_passes, optimization_level, workspace_size
        self.use_cuda_graph, self.refit_params_path = use_cuda_graph, refit_params_path


def collected_profile(feeds: Sequence[np.ndarray]) -> Tuple[List[int], List[int], List[int]]:
    """collect_shape_manager.cc `StatisticShapeRangeInfo` for one input: three feeds give per dimension the
    sorted (smallest, middle, largest); any other count gives min, the most frequent value and max."""
    shapes = [list(f.shape) for f in feeds]
    if len(shapes) == 3:
        columns = [sorted(values) for values in zip(*shapes)]
        return [c[0] for c in columns], [c[1] for c in columns], [c[2] for c in columns]
    return np.min(shapes, axis=0).tolist(), per_dimension_opt(shapes), np.max(shapes, axis=0).tolist()


def program_ops(model_path: str) -> List[str]:
    """The op names of a stand-in export's program (`fake_export` writes them as a PIR-like JSON)."""
    path = model_path if model_path.endswith(".json") else model_path + ".json"
    with open(path, encoding="utf-8") as f:
        program = json.load(f)
    return [op["#"] for block in program["program"]["regions"][0]["blocks"] for op in block["ops"]]


def tensorrt_export_module(record: Dict[str, list], fail_after_engines: bool = False) -> types.ModuleType:
    """A `paddle.tensorrt.export` whose `convert` writes the files Paddle's writes and appends what it was
    asked, the profile it built, and which GPUs the process saw, to `record["conversions"]`."""

    def convert(model_path: str, config: TensorRTConfig):
        if os.path.abspath(config.save_model_dir) == os.path.abspath(model_path):
            raise ValueError("The `config.save_model_dir` and `model_path` cannot be the same. Please specify a "
                             "different directory for saving the model.")
        if os.path.isfile(model_path):
            model_dir, model_file = os.path.split(model_path)
            model_prefix, ext = os.path.splitext(model_file)
            if ext not in (".json", ".pdmodel"):
                raise ValueError(f"Unsupported extension {ext}. Only support json/pdmodel")
            params_path = os.path.join(model_dir, model_prefix + ".pdiparams")
        else:
            params_path = model_path + ".pdiparams"
            if not (os.path.exists(model_path + ".json") or os.path.exists(model_path + ".pdmodel")):
                raise ValueError(f"No valid model file found in the directory '{model_path}'. Expected either "
                                 "'json' or 'pdmodel'. Please ensure that the directory contains one of these files.")
        if not os.path.exists(params_path):
            raise ValueError(f"Parameters file '{params_path}' not found. Please ensure the weights file exists "
                             "in the model directory.")
        (trt_input,) = config.inputs
        feeds = trt_input.warmup_data if trt_input.warmup_data is not None else trt_input.generate_input_data()
        ops = program_ops(model_path)
        record["conversions"].append({"model_path": model_path, "config": config, "profile": collected_profile(feeds),
                                      "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                      "selected_gpus": os.environ.get("FLAGS_selected_gpus")})
        group = [op for op in ops if op.split(".", 1)[-1] not in ("data", "fetch") and op != "p"]
        engines = []
        if config.save_model_dir and len(group) >= config.min_subgraph_size:  # one subgraph: the whole group
            if config.precision_mode == PrecisionMode.INT8 and not any("quantize_linear" in op for op in ops):
                print(f"[TRT] [E] 4: [standardEngineBuilder.cpp::buildErrorMessage] {NO_SCALES}", file=sys.stderr)
                raise AssertionError("Failed to build engine. please see ERROR log from trt.Logger")
            cache_root = config.save_model_dir  # get_cache_path(save_model_dir)
            if not os.path.exists(cache_root):
                os.makedirs(cache_root)
            engine_name = int(hashlib.sha256(model_path.encode()).hexdigest(), 16) % 10**8
            engines.append(f"{cache_root}/engine_{engine_name}_1.trt")
            with open(engines[-1], "wb") as f:
                f.write(b"serialized engine")
            with open(f"{cache_root}/engine_{engine_name}_1.pir", "w") as f:
                f.write("group op")
            if fail_after_engines:
                raise RuntimeError("Failed to build engine. please see ERROR log from trt.Logger")
        if config.save_model_dir:
            prefix = config.save_model_dir
            if prefix.endswith("/"):
                raise ValueError("'path_prefix' should not be a directory")
            prefix = os.path.abspath(os.path.normpath(prefix))
            os.makedirs(os.path.dirname(prefix), exist_ok=True)
            with open(prefix + ".json", "w", encoding="utf-8") as f:
                json.dump({"engine_serialized_data": engines, "ops": ops}, f)
            with open(prefix + ".pdiparams", "wb") as f:
                f.write(b"params")
        return types.SimpleNamespace(engines=engines)  # the converted pir.Program

    module = types.ModuleType("paddle.tensorrt.export")
    module.Input, module.PrecisionMode, module.TensorRTConfig, module.convert = Input, PrecisionMode, TensorRTConfig, convert
    return module
