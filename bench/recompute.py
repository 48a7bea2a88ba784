"""Peak training memory and step time with and without activation recomputation (`Arch.recompute`).

Each (model, recompute setting) runs in a fresh process: build the model, one untimed training step
(forward, cross-entropy, backward, Momentum update), then --steps timed ones. Peak memory is the process's
peak resident set size on CPU (`ru_maxrss`; it includes the ~0.5 GB of Paddle itself, reported as
"after build"), and `paddle.device.cuda.max_memory_allocated()` with --device gpu.

    python bench/recompute.py        # EfficientNetB7 @ 600 px and EfficientNetV2_L @ 384 px, batch 2; ~8 min, ~9 GB
    python bench/recompute.py --runs EfficientNetV2_S:384:4 --recompute off all 0,1,2 --markdown output/recompute.md

Needs free memory for the largest run (EfficientNetB7 at 600 px, batch 2: ~8.5 GB without recompute).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

from ppcls_ext.report import markdown_table, publish

DEFAULT_RUNS = ["EfficientNetB7:600:2", "EfficientNetV2_L:384:2"]


def recompute_option(text: str):
    """"off" -> False, "all" -> True, "0,1,2" -> [0, 1, 2]."""
    if text in ("off", "all"):
        return text == "all"
    return [int(i) for i in text.split(",")]


def one_run(name: str, size: int, batch: int, recompute: str, steps: int, device: str) -> dict:
    """Runs in the child process: the measurements of one configuration."""
    import numpy as np

    import ppcls_ext
    import paddle
    import paddle.nn.functional as F
    from ppcls_ext.timing import time_calls

    paddle.set_device(device)
    model = ppcls_ext.create_model(name, recompute=recompute_option(recompute))
    model.train()
    after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    optimizer = paddle.optimizer.Momentum(learning_rate=1e-3, momentum=0.9, parameters=model.parameters())
    rng = np.random.default_rng(0)
    images = paddle.to_tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
    labels = paddle.to_tensor(rng.integers(0, 1000, (batch, 1)))

    def step():
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return float(loss)

    seconds = time_calls(step, steps, warmup=1)
    result = {"after_build_gb": after_build, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
              "step_s": statistics.median(seconds)}
    if device == "gpu":
        result["peak_gb"] = paddle.device.cuda.max_memory_allocated() / 2 ** 30
    return result


def run_child(name: str, size: int, batch: int, recompute: str, args) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        command = [sys.executable, os.path.abspath(__file__), "--child", name, str(size), str(batch), recompute, out.name,
                   "--steps", str(args.steps), "--device", args.device]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.load(out)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="MODEL:SIZE:BATCH, one run each")
    parser.add_argument("--recompute", nargs="+", default=["off", "all"], help="off, all, or stage indices like 0,1,2")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps after one untimed step")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--child", nargs=5, metavar=("MODEL", "SIZE", "BATCH", "RECOMPUTE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, size, batch, recompute, out = args.child
        with open(out, "w", encoding="utf-8") as f:
            json.dump(one_run(name, int(size), int(batch), recompute, args.steps, args.device), f)
        return
    memory = "peak GPU memory allocated, GB" if args.device == "gpu" else "peak RSS, GB"
    header = ["model", "size", "batch", "recompute", "after build, GB", memory, "memory vs off", "step, s", "step vs off"]
    rows: List[list] = []
    for spec in args.runs:
        name, size, batch = spec.split(":")
        baseline = None
        for recompute in args.recompute:
            result = run_child(name, int(size), int(batch), recompute, args)
            baseline = baseline or result
            rows.append([name, size, batch, recompute, f"{result['after_build_gb']:.2f}", f"{result['peak_gb']:.2f}",
                         f"{result['peak_gb'] / baseline['peak_gb']:.2f}", f"{result['step_s']:.1f}",
                         f"{result['step_s'] / baseline['step_s']:.2f}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    notes = [f"one untimed step, then the median of {args.steps} timed steps (forward, cross-entropy, backward, "
             f"Momentum); each configuration in a fresh process; ratios against the first --recompute setting"]
    publish("\n".join([markdown_table(header, rows, "lrrlrrrrr"), ""] + [f"- {n}" for n in notes]), args.markdown)


if __name__ == "__main__":
    main()
