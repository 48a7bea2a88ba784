"""Stand-ins for the parts of Paddle that only a CUDA + TensorRT build runs, each following Paddle's source.

- `StandInConfig`: `paddle.inference.Config` with the method set and signatures of the *installed* build,
  read from its pybind11 docstrings (e.g. "enable_tensorrt_engine(self: ..., workspace_size: int =
  1073741824, max_batch_size: int = 1, ..., use_cuda_graph: bool = False) -> None"): a method the real
  class lacks raises AttributeError, an unknown keyword or a wrong argument count or type raises TypeError.
- `StandInPredictor`: `paddle.inference.create_predictor`. Following paddle/fluid/inference/api/
  analysis_predictor.cc (`AnalysisPredictor::~AnalysisPredictor`: "if (config_.shape_range_info_collected())
  { StatisticShapeRangeInfo(); }"), collected shape ranges reach their file only when the predictor is
  destroyed; following paddle/fluid/framework/new_executor/instruction/tensorrt_engine_instruction.cc
  (`ReadBinaryFileToString(engine_serialized_path)` in the constructor), a converted model's engine files
  must exist where the program records them.
- `tensorrt_export_module`: `paddle.tensorrt.export` as in PaddlePaddle/Paddle python/paddle/tensorrt/
  export.py (develop, commit 7357bc7f; the same in every stored version since PR #71722, March 2025, i.e.
  Paddle 3.0-3.3): `Input.__init__`, `PrecisionMode`, `TensorRTConfig.__init__` with their exact
  parameters and checks; `convert(model_path, config)` resolves `model_path` as a file or a prefix
  ("if os.path.isfile(model_path): ... else: model_prefix = model_path; params_path = model_prefix +
  '.pdiparams'"), refuses `save_model_dir == model_path`, and writes what `convert_to_trt` writes:
  the engines via converter.py `CACHE_ROOT = get_cache_path(self.trt_config.save_model_dir)`,
  `CACHE_FILE = f"{CACHE_ROOT}/engine_{engine_name}_{self.engine_num}.trt"` (util.py `get_cache_path`:
  "if not os.path.exists(cache_path): os.makedirs(cache_path)"), whose path goes into the program
  (`trt_params.engine_serialized_data = CACHE_FILE`), then `paddle.static.save_inference_model(
  trt_config.save_model_dir, ...)`, which (python/paddle/static/pir_io.py `save_inference_model_pir`,
  read in the installed 3.3.1) treats it as a path prefix: "model_path = path_prefix + '.json'",
  "params_path = path_prefix + '.pdiparams'", after `os.makedirs(os.path.dirname(path_prefix))`.
  The stand-in's `.json` is a small JSON document holding the engine paths in place of a PIR program.
"""
from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import types
from typing import Any, Dict, List, Optional, Tuple

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


# --- create_predictor ----------------------------------------------------------------------------------------


class _Handle:
    def __init__(self, owner: "StandInPredictor"):
        self.owner = owner

    def reshape(self, shape):
        self.owner.shape = [int(d) for d in shape]

    def copy_from_cpu(self, array):
        assert list(array.shape) == self.owner.shape, "copy_from_cpu after a reshape to another shape"
        self.owner.fed.append(array.shape)

    def copy_to_cpu(self):
        return np.zeros((self.owner.shape[0], 10), np.float32)


class StandInPredictor:
    """create_predictor(config) of a GPU build, for a StandInConfig; logs {config, runs} in `log` (not
    itself, so that dropping the predictor destroys it, as in Paddle)."""

    log: List[Dict[str, Any]] = []

    def __init__(self, config: StandInConfig):
        self.config, self.shape, self.fed, self.runs = config, None, [], []
        for path in config.model.values():
            if isinstance(path, str) and not os.path.isfile(path):
                raise RuntimeError(f"(NotFound) Cannot open file {path}")
        if config.program_file.endswith(".json"):
            with open(config.program_file, encoding="utf-8") as f:
                program = json.load(f)
            for engine in program.get("engine_serialized_data", []):  # tensorrt_engine_instruction.cc
                if not os.path.isfile(engine):
                    raise RuntimeError(f"Cannot open file {engine}: the converted model's engine is missing")
        for arguments in config.called("enable_tuned_tensorrt_dynamic_shape"):
            if not os.path.isfile(arguments["shape_range_info_path"]):
                raise RuntimeError(f"(NotFound) shape range info file {arguments['shape_range_info_path']}")
        self.collecting = [a["arg0"] for a in config.called("collect_shape_range_info")]
        StandInPredictor.log.append({"config": config, "runs": self.runs})

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
            with open(path, "w", encoding="utf-8") as f:
                low = np.min(self.runs, axis=0).tolist() if self.runs else []
                high = np.max(self.runs, axis=0).tolist() if self.runs else []
                f.write(f'shape_info {{ name: "x" min_shape: {low} max_shape: {high} }}\n')


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


def tensorrt_export_module(record: Dict[str, list], fail_after_engines: bool = False) -> types.ModuleType:
    """A `paddle.tensorrt.export` whose `convert` writes the files Paddle's writes and appends what it was
    asked (and which GPUs the process saw) to `record["conversions"]`."""

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
        record["conversions"].append({"model_path": model_path, "config": config,
                                      "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
        engines = []
        if config.save_model_dir:
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
            prefix = config.save_model_dir
            if prefix.endswith("/"):
                raise ValueError("'path_prefix' should not be a directory")
            prefix = os.path.abspath(os.path.normpath(prefix))
            os.makedirs(os.path.dirname(prefix), exist_ok=True)
            with open(prefix + ".json", "w", encoding="utf-8") as f:
                json.dump({"engine_serialized_data": engines}, f)
            with open(prefix + ".pdiparams", "wb") as f:
                f.write(b"params")
        return types.SimpleNamespace(engines=engines)  # the converted pir.Program

    module = types.ModuleType("paddle.tensorrt.export")
    module.Input, module.PrecisionMode, module.TensorRTConfig, module.convert = Input, PrecisionMode, TensorRTConfig, convert
    return module
