"""Latency of the deployment backends for one model, measured side by side: every repetition runs each
backend once in turn (interleaved, so machine noise hits them alike), after warm-up; reported as median
and 90th-percentile latency, images/s, and the largest logit difference from the dygraph model."""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import paddle

from ..engine.export import export_inference_model, inference_config
from ..models.deploy import deploy_form
from ..registry import create_model, get_model_config
from ..report import markdown_table
from ..weights import randomize_
from .onnx_backend import OnnxPredictor
from .options import InferenceOptions
from .paddle_backend import PaddlePredictor

BACKENDS = ("dygraph", "paddle-cpu", "paddle-cpu-onednn", "onnxruntime")


@dataclass
class Measurement:
    model: str
    backend: str
    batch_size: int
    size: int
    median_ms: float
    p90_ms: float
    images_per_s: float
    max_abs_diff: float


def _runners(model: paddle.nn.Layer, export_dir: str, backends: Sequence[str], threads: int) -> Dict[str, Callable]:
    runners: Dict[str, Callable] = {}
    for backend in backends:
        if backend == "dygraph":
            def run(batch, model=model):
                with paddle.no_grad():
                    return model(paddle.to_tensor(batch)).numpy()
            runners[backend] = run
        elif backend == "onnxruntime":
            runners[backend] = OnnxPredictor(export_dir, threads).run
        elif backend in ("paddle-cpu", "paddle-cpu-onednn"):
            options = InferenceOptions(cpu_threads=threads, enable_mkldnn=backend.endswith("onednn"))
            runners[backend] = PaddlePredictor(export_dir, options).run
        else:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return runners


def benchmark(model_name: str, backends: Sequence[str] = BACKENDS, batch_sizes: Sequence[int] = (1, 8),
              size: Optional[int] = None, threads: int = 2, repeats: int = 20, warmup: int = 3,
              weights: Optional[str] = None) -> List[Measurement]:
    """Export `model_name` (random or given weights) to a temporary folder and time each backend."""
    size = size or get_model_config(model_name).eval_size
    model = create_model(model_name, pretrained=weights or False)
    if not weights:
        randomize_(model.state_dict())  # outputs of a realistic scale, so that the differences mean something
    model.eval()
    results = []
    with tempfile.TemporaryDirectory() as export_dir:
        export_dir = f"{export_dir}/inference"
        # logits, not probabilities: a near-uniform softmax of random weights would hide differences
        description = inference_config(model_name, [], 5, None, [3, size, size], False)
        export_inference_model(deploy_form(model), export_dir, description, softmax=False)  # as the export tool does
        runners = _runners(model, export_dir, backends, threads)
        for batch_size in batch_sizes:
            batch = np.random.default_rng(0).standard_normal((batch_size, 3, size, size)).astype(np.float32)
            reference = runners["dygraph"](batch) if "dygraph" in runners else None
            times: Dict[str, List[float]] = {name: [] for name in runners}
            diffs = {name: float(np.abs(run(batch) - reference).max()) if reference is not None else float("nan")
                     for name, run in runners.items()}
            for _ in range(warmup):
                for run in runners.values():
                    run(batch)
            for _ in range(repeats):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run(batch)
                    times[name].append(time.perf_counter() - start)
            for name, samples in times.items():
                median, p90 = np.median(samples), np.percentile(samples, 90)
                results.append(Measurement(model_name, name, batch_size, size, median * 1000, p90 * 1000,
                                           batch_size / median, diffs[name]))
    return results


def markdown(measurements: Sequence[Measurement]) -> str:
    header = ["model", "backend", "batch", "size", "median ms", "p90 ms", "images/s", "max logit diff vs dygraph"]
    return markdown_table(header, ([m.model, m.backend, m.batch_size, m.size, f"{m.median_ms:.2f}", f"{m.p90_ms:.2f}",
                                    f"{m.images_per_s:.1f}", f"{m.max_abs_diff:.1e}"] for m in measurements), "llrrrrrr")
