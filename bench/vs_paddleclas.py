"""Ours vs PaddleClas's own classes on the same weights, side by side, in one run.

For each model, PaddleClas's class gets realistic random weights and ours loads the same state dict;
then, per measurement, the contenders run alternately (`ppcls_ext.timing.alternate`: each round runs
every contender once, in an order that flips every round, so machine noise hits them alike) and the
median is reported. Exports are served as deployed: each (contender, backend) by its own worker
process, timed in blocks of back-to-back calls with a pause between blocks (in one process, Paddle's
OpenMP threads keep spinning for 200 ms after a call and slow down whatever runs next):

- dygraph: forward latency in eval mode;
- train: images/s of a training step (forward, cross-entropy, backward, Momentum update);
- paddle / paddle-onednn: Paddle Inference latency of each model's export, oneDNN off / on;
- onnxruntime: ONNX Runtime latency of each model's export (paddle2onnx);
- deploy form: our model with its batch norms folded (`ppcls_ext.models.deploy.deploy_form`), exported, on
  the same backends.

Each row gives both medians, the median of the per-repetition ratios ours / PaddleClas (latency: lower
is better; images/s: higher is better) and the largest logit difference between the two on that
backend. The summary compares our fastest CPU path with ONNX Runtime on PaddleClas's export.

    python bench/vs_paddleclas.py                                   # M0, M3, B0, V2-S; ~10 min on 2 cores
    python bench/vs_paddleclas.py --models MicroNet_M0 --repeats 10 --markdown output/bench.md
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

import ppcls_ext  # first: applies the CPU settings before Paddle loads MKL
import numpy as np
import paddle
import paddle.nn.functional as F
from ppcls_ext.cpu_env import APPLIED as CPU_NOTES
from ppcls_ext.serving.export import export_inference_model, inference_config
from ppcls_ext.inference.options import InferenceOptions
from ppcls_ext.inference.worker import BackendProcess, input_batch
from ppcls_ext.models.deploy import deploy_form
from ppcls_ext.paddleclas_plugin import paddleclas_original
from ppcls_ext.report import markdown_table, publish
from ppcls_ext.timing import SETTLE_SECONDS, alternate, paired_ratio, time_calls
from ppcls_ext.weights import randomize_

THEIRS, OURS, DEPLOY = "PaddleClas", "ours", "ours, deploy form"
BACKENDS = ("paddle", "paddle-onednn", "onnxruntime")
#: our benchmark's backend names -> the worker's
WORKER_BACKENDS = {"paddle": "paddle-cpu", "paddle-onednn": "paddle-cpu-onednn", "onnxruntime": "onnxruntime"}
#: timed calls per block of an exported model in its worker process
CALLS_PER_BLOCK = 5
#: inference sizes: each model's nominal size, except that PaddleClas pads every V2 variant for 384
SIZES = {"EfficientNetV2_S": 384}


def interleaved(runners: Dict[str, Callable[[], object]], repeats: int, warmup: int) -> Dict[str, List[float]]:
    """Seconds per call of in-process runners of one runtime (dygraph Paddle), one call per round each,
    alternating; one shared warm-up first."""
    for run in runners.values():
        time_calls(run, 0, warmup)
    return alternate({name: (lambda run=run: time_calls(run, 1)) for name, run in runners.items()}, repeats)


def same_weights(name: str, seed: int = 0):
    """(PaddleClas's model, ours) holding the same random weights, in eval mode."""
    theirs = paddleclas_original(name)
    state = randomize_(theirs.state_dict(), seed=seed)
    theirs.set_state_dict(state)
    ours = ppcls_ext.create_model(name)
    ppcls_ext.load_weights(ours, state, source=f"PaddleClas {name}")
    ours.eval()
    return theirs, ours


def train_step(model: paddle.nn.Layer, images: paddle.Tensor, labels: paddle.Tensor) -> Callable[[], object]:
    optimizer = paddle.optimizer.Momentum(learning_rate=1e-3, momentum=0.9, parameters=model.parameters())

    def step():
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return loss

    return step


def export(model: paddle.nn.Layer, name: str, directory: str, size: int) -> str:
    description = inference_config(name, [], 5, None, [3, size, size], softmax=False)
    return export_inference_model(model, directory, description, softmax=False)


class Table:
    HEADER = ["model", "measure", "batch", "size", "PaddleClas", "ours", "ours / PaddleClas", "max logit diff"]

    def __init__(self):
        self.rows: List[List[object]] = []

    def add(self, model: str, measure: str, batch: int, size: int, theirs: List[float], ours: List[float],
            images: Optional[int] = None, diff: Optional[float] = None) -> None:
        """One row from paired time samples: median ms (or, given `images` per call, images/s), and the
        median of the per-repetition ratios, which cancels drift of the machine's speed between them."""
        if images is None:
            values = [f"{statistics.median(side) * 1000:.2f}" for side in (theirs, ours)]
            ratio = paired_ratio(ours, theirs)
        else:
            values = [f"{images / statistics.median(side):.2f}" for side in (theirs, ours)]
            ratio = paired_ratio(theirs, ours)
        diff_text = "-" if diff is None else f"{diff:.1e}"
        self.rows.append([model, measure, batch, size, values[0], values[1], f"{ratio:.2f}", diff_text])
        print(self.markdown(self.rows[-1:]).splitlines()[-1], flush=True)

    def markdown(self, rows: Optional[List[List[object]]] = None) -> str:
        return markdown_table(self.HEADER, self.rows if rows is None else rows, "llrrrrrr")


def bench_model(name: str, args, table: Table, summary: List[str]) -> None:
    size = SIZES.get(name, ppcls_ext.get_model_config(name).eval_size)
    theirs, ours = same_weights(name)
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(input_batch((args.batch, 3, size, size)))
    with paddle.no_grad():
        reference = {THEIRS: theirs(x).numpy(), OURS: ours(x).numpy()}
        times = interleaved({THEIRS: lambda: theirs(x), OURS: lambda: ours(x)}, args.repeats, args.warmup)
    table.add(name, "dygraph forward, ms", args.batch, size, times[THEIRS], times[OURS],
              diff=float(np.abs(reference[OURS] - reference[THEIRS]).max()))

    fastest: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {THEIRS: export(theirs, name, os.path.join(tmp, "theirs"), size),
                OURS: export(ours, name, os.path.join(tmp, "ours"), size),
                DEPLOY: export(deploy_form(ours), name, os.path.join(tmp, "deploy"), size)}
        shape = (args.batch, 3, size, size)
        calls = min(CALLS_PER_BLOCK, args.repeats)
        rounds = max(1, math.ceil(args.repeats / calls))
        for backend in args.backends:
            options = InferenceOptions(cpu_threads=args.threads)
            workers = {who: BackendProcess(d, WORKER_BACKENDS[backend], options) for who, d in dirs.items()}
            try:
                outputs = {who: worker.outputs(shape) for who, worker in workers.items()}
                times = alternate({who: (lambda worker=worker: worker.time(shape, calls, args.warmup))
                                   for who, worker in workers.items()}, rounds, settle=SETTLE_SECONDS)
            finally:
                for worker in workers.values():
                    worker.close()
            for who in (OURS, DEPLOY):
                table.add(name, f"{backend}, ms" + (" (deploy form)" if who == DEPLOY else ""), args.batch, size,
                          times[THEIRS], times[who], diff=float(np.abs(outputs[who] - outputs[THEIRS]).max()))
                fastest[f"{backend}{' (deploy form)' if who == DEPLOY else ''}"] = statistics.median(times[who])
            fastest[f"{backend} (theirs)"] = statistics.median(times[THEIRS])

    if args.train_batch:
        train_size = min(size, args.train_size)
        images = paddle.to_tensor(rng.standard_normal((args.train_batch, 3, train_size, train_size)).astype("float32"))
        labels = paddle.to_tensor(rng.integers(0, 1000, (args.train_batch, 1)).astype("int64"))
        theirs, ours = same_weights(name)  # fresh copies: training changes the weights
        theirs.train(), ours.train()
        steps = {THEIRS: train_step(theirs, images, labels), OURS: train_step(ours, images, labels)}
        times = interleaved(steps, max(5, args.repeats // 2), 1)
        table.add(name, "train step, images/s", args.train_batch, train_size, times[THEIRS], times[OURS],
                  images=args.train_batch)

    ours_best = min((b for b in fastest if "(theirs)" not in b), key=fastest.get)
    if "onnxruntime (theirs)" in fastest:
        summary.append(f"- {name}: our fastest CPU path ({ours_best}, {fastest[ours_best] * 1000:.2f} ms) / ONNX Runtime on "
                       f"PaddleClas's export ({fastest['onnxruntime (theirs)'] * 1000:.2f} ms) = "
                       f"{fastest[ours_best] / fastest['onnxruntime (theirs)']:.2f}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["MicroNet_M0", "MicroNet_M3", "EfficientNetB0", "EfficientNetV2_S"])
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--batch", type=int, default=1, help="inference batch size")
    parser.add_argument("--train-batch", type=int, default=16, help="training batch size (0: skip training)")
    parser.add_argument("--train-size", type=int, default=224, help="training image size (at most the inference size)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    table, summary = Table(), []
    print("\n".join(table.markdown().splitlines()[:2]), flush=True)
    for name in args.models:
        bench_model(name, args, table, summary)
    notes = [f"paddle {paddle.__version__}, {args.threads} threads; medians of {args.repeats} calls (dygraph: one call "
             f"per round, alternating; exports: each in its own worker process, blocks of {CALLS_PER_BLOCK} calls "
             f"alternating with {SETTLE_SECONDS} s pauses); {max(5, args.repeats // 2)} steps for training; ratios are "
             f"medians of the per-round ratios"]
    notes += CPU_NOTES
    print()
    publish("\n".join([table.markdown(), ""] + summary + [""] + [f"- {note}" for note in notes]), args.markdown)


if __name__ == "__main__":
    main()
