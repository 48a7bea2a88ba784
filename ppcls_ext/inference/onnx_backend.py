"""ONNX: convert an export with paddle2onnx, and run it with ONNX Runtime.

paddle2onnx 2.1.0 is asked for the bare converted model (no post-processing of its own): its default
step, Polygraphy constant folding, switches Polygraphy's automatic `pip install` on (it pulled numpy 2
over the pinned 1.24.4), and its onnxoptimizer step always fails ("pass eliminate_nop_cast  is
unknown", a trailing space in its pass list) and writes the model unoptimised. We run that step's
onnxoptimizer passes ourselves, correctly spelled; they install nothing. For ONNX Runtime they change
nothing measurable (its own graph optimisations give the same graph either way: 381 nodes for
MicroNet_M0, 260 for EfficientNetB0, identical outputs); they make the file tidy for other consumers
(weights as initializers instead of Constant nodes: MicroNet_M0 1207 -> 817 nodes), and
`eliminate_identity` drops the Identity node paddle2onnx writes after nearly every operator (MicroNet_M0
in deploy form: 645 -> 360 nodes).
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

from ..output_paths import replaced_atomically
from .options import DeploymentError
from .paddle_backend import PARAMS_FILE, PROGRAM_FILES, computes_channels_last, model_format

logger = logging.getLogger("ppcls_ext")
#: ONNX Runtime's graph optimisations for serving: all of them, including the NCHWc layout transforms
GRAPH_OPTIMIZATION_LEVEL = "ORT_ENABLE_ALL"
ONNX_FILE = "inference.onnx"  # the name PaddleClas's own deploy predictor reads with use_onnx
#: paddle2onnx 2.1.0's own onnxoptimizer pass list, with its misspelt last pass corrected
ONNX_PASSES = ("eliminate_identity", "eliminate_deadend", "extract_constant_to_initializer", "eliminate_unused_initializer",
               "eliminate_duplicate_initializer", "eliminate_nop_cast")


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise DeploymentError(f"the ONNX path needs {module}, one of ppcls_ext's requirements: pip install -e . ({error})") from error


def export_onnx(model_dir: str, opset: int = 13, force: bool = False) -> str:
    """Convert `model_dir`'s Paddle export to `model_dir/inference.onnx` (kept while newer than the
    weights, unless `force`); written under a temporary name and renamed."""
    target = os.path.join(model_dir, ONNX_FILE)
    params = os.path.join(model_dir, PARAMS_FILE)
    program = os.path.join(model_dir, PROGRAM_FILES[model_format(model_dir)])
    if not force and os.path.isfile(target) and os.path.getmtime(target) >= os.path.getmtime(params):
        return target
    if computes_channels_last(model_dir):  # paddle2onnx would abort the whole process on it
        raise DeploymentError(f"{model_dir} computes channels-last (NHWC), which paddle2onnx cannot convert; export the "
                              f"model in NCHW (the default data_format) for ONNX")
    paddle2onnx, onnx, onnxoptimizer = (_require(name) for name in ("paddle2onnx", "onnx", "onnxoptimizer"))
    try:  # without a file name paddle2onnx returns the model and skips its own post-processing
        converted = paddle2onnx.export(program, params, None, opset_version=opset, enable_onnx_checker=True, verbose=False)
    except Exception as error:  # it logs the cause, then fails on its own unset result
        raise DeploymentError(f"paddle2onnx could not convert {program} (its log above says why)") from error
    model = onnxoptimizer.optimize(onnx.load_model_from_string(converted), list(ONNX_PASSES))
    onnx.checker.check_model(model, full_check=True)
    with replaced_atomically(target, "ONNX conversion") as partial:
        onnx.save(model, partial)
    logger.info("ONNX: converted %s to %s", program, target)
    return target


class OnnxPredictor:
    """ONNX Runtime on CPU; `run(batch)` maps an NCHW float32 batch to the outputs. `threads` intra-op
    threads, operators run one at a time; `spin_wait`: the pool's threads spin after a call (ONNX
    Runtime's default) or sleep at once (see InferenceOptions.cpu_spin_wait). `model_file`: an ONNX model
    to run as it is (the int8 model of quant_post_static) instead of the folder's converted export."""

    name = "onnxruntime"

    def __init__(self, model_dir: str, threads: Optional[int] = None, spin_wait: bool = True,
                 model_file: Optional[str] = None, name: Optional[str] = None):
        ort = _require("onnxruntime")
        path = model_file or export_onnx(model_dir)
        self.name = name or self.name
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVEL)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
