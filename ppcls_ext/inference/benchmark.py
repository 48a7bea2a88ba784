"""Latency of the deployment backends for one model: each CPU backend served alone by its own worker
process (`worker.BackendProcess`, as it would be deployed; measured in one process, backends disturb
each other), dygraph in this process; the backends' blocks of back-to-back calls alternate with a pause
between them (`timing.alternate`), so machine noise hits them alike. Reported: median and 90th-percentile
latency, images/s, and the largest logit difference from the dygraph model."""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import paddle

from ..models.deploy import deploy_form
from ..registry import create_model, get_model_config
from ..report import markdown_table
from ..serving.export import export_inference_model, inference_config
from ..timing import SETTLE_SECONDS, alternate, median_ms, percentile_ms, time_calls
from ..weights import randomize_
from .options import InferenceOptions
from .worker import CPU_BACKENDS, BackendProcess, input_batch

BACKENDS = ("dygraph",) + CPU_BACKENDS
#: timed calls per block; a backend's `repeats` calls are split into rounds of this many
CALLS_PER_BLOCK = 5


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


def benchmark(model_name: str, backends: Sequence[str] = BACKENDS, batch_sizes: Sequence[int] = (1, 8),
              size: Optional[int] = None, threads: int = 2, repeats: int = 20, warmup: int = 2,
              weights: Optional[str] = None) -> List[Measurement]:
    """Export `model_name` (random or given weights) to a temporary folder and time each backend:
    `repeats` timed calls per backend and batch size, in blocks of CALLS_PER_BLOCK after `warmup`
    untimed calls each."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; valid: {', '.join(BACKENDS)}")
    size = size or get_model_config(model_name).eval_size
    model = create_model(model_name, pretrained=weights or False)
    if not weights:
        randomize_(model.state_dict())  # outputs of a realistic scale, so that the differences mean something
    model.eval()

    def dygraph(batch):
        with paddle.no_grad():
            return model(paddle.to_tensor(batch)).numpy()

    calls = min(CALLS_PER_BLOCK, repeats)
    rounds = max(1, math.ceil(repeats / calls))
    results = []
    with tempfile.TemporaryDirectory() as export_dir:
        export_dir = f"{export_dir}/inference"
        # logits, not probabilities: a near-uniform softmax of random weights would hide differences
        description = inference_config(model_name, [], 5, None, [3, size, size], False)
        export_inference_model(deploy_form(model), export_dir, description, softmax=False)  # as the export tool does
        workers = {b: BackendProcess(export_dir, b, InferenceOptions(cpu_threads=threads)) for b in backends if b != "dygraph"}
        try:
            for batch_size in batch_sizes:
                shape = (batch_size, 3, size, size)
                batch = input_batch(shape)
                reference = dygraph(batch)
                diffs = {name: float(abs(worker.outputs(shape) - reference).max()) for name, worker in workers.items()}
                blocks: Dict[str, Callable[[], List[float]]] = {
                    name: (lambda worker=worker: worker.time(shape, calls, warmup)) for name, worker in workers.items()}
                if "dygraph" in backends:
                    diffs["dygraph"] = 0.0
                    blocks["dygraph"] = lambda: time_calls(lambda: dygraph(batch), calls, warmup)
                samples = alternate({name: blocks[name] for name in backends}, rounds, settle=SETTLE_SECONDS)
                for name in backends:
                    median = median_ms(samples[name])
                    results.append(Measurement(model_name, name, batch_size, size, median, percentile_ms(samples[name], 90),
                                               batch_size * 1000.0 / median, diffs[name]))
        finally:
            for worker in workers.values():
                worker.close()
    return results


def markdown(measurements: Sequence[Measurement]) -> str:
    header = ["model", "backend", "batch", "size", "median ms", "p90 ms", "images/s", "max logit diff vs dygraph"]
    return markdown_table(header, ([m.model, m.backend, m.batch_size, m.size, f"{m.median_ms:.2f}", f"{m.p90_ms:.2f}",
                                    f"{m.images_per_s:.1f}", f"{m.max_abs_diff:.1e}"] for m in measurements), "llrrrrrr")
