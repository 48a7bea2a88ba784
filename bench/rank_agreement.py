"""What the per-step agreement of the ranks costs (ppcls_ext/engine/rank_agreement.py): before every training
step, the ranks of a multi-process run all-reduce two ints on the CPU (gloo) so that a rank whose data
failed, or that was signalled, stops every rank at the same step.

Two processes under `paddle.distributed.launch` (gloo on CPU) train MicroNet_M0 with DataParallel on a fixed
batch; contenders, in alternating blocks (order flipped every round) in the same two processes:
- step: forward, backward (with the gradient all-reduce) and optimizer step;
- step + agreement: the same, preceded by the agreement;
- agreement alone.
Reported per batch shape: median ms of each; the agreement alone as a share of a step; and the paired
ratio of the steps with and without it (which also holds the ranks' skew that the extra synchronisation
point before the forward pass exposes).

    python bench/rank_agreement.py                       # ~1 min on 2 cores
    python bench/rank_agreement.py --rounds 10 --markdown output/rank_agreement.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List

SHAPES = [(32, 32), (8, 224)]  # (batch, image size): the quick-start digits and an ImageNet-size batch


def worker(args: argparse.Namespace) -> None:
    """One rank: time the contenders; rank 0 writes the samples to args.out."""
    import ppcls_ext  # first: applies the CPU settings before Paddle loads MKL
    import numpy as np
    import paddle
    import paddle.distributed as dist

    from ppcls_ext.engine.rank_agreement import _cpu_group, agree
    from ppcls_ext.timing import alternate, time_calls

    dist.init_parallel_env()
    paddle.seed(0)
    model = ppcls_ext.create_model("MicroNet_M0", class_num=10)
    net = paddle.DataParallel(model)
    optimizer = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.9, parameters=model.parameters())
    group, world = _cpu_group(), dist.get_world_size()
    results: Dict[str, Dict[str, List[float]]] = {}
    for batch, size in SHAPES:
        rng = np.random.default_rng(dist.get_rank())
        images = paddle.to_tensor(rng.standard_normal((batch, 3, size, size)).astype("float32"))
        labels = paddle.to_tensor(rng.integers(0, 10, (batch,)).astype("int64"))

        def step():
            loss = paddle.nn.functional.cross_entropy(net(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()

        def agreed_step():
            agree(None, group, world)
            step()

        blocks = {"step": lambda: time_calls(step, args.calls, warmup=1),
                  "step + agreement": lambda: time_calls(agreed_step, args.calls, warmup=1),
                  "agreement": lambda: time_calls(lambda: agree(None, group, world), args.calls * 10, warmup=2)}
        results[f"{batch}x3x{size}x{size}"] = alternate(blocks, args.rounds)
    if dist.get_rank() == 0:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=10, help="training steps per block (agreement alone: 10x)")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from ppcls_ext.report import markdown_table, publish
    from ppcls_ext.timing import median_ms, paired_ratio

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "samples.json")
        launched = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                                   "--log_dir", os.path.join(tmp, "log"), os.path.abspath(__file__), "--worker", "--out",
                                   out, "--rounds", str(args.rounds), "--calls", str(args.calls)],
                                  capture_output=True, text=True)
        if launched.returncode != 0:
            sys.exit(f"the two benchmark processes failed:\n{launched.stdout[-3000:]}{launched.stderr[-3000:]}")
        with open(out, encoding="utf-8") as f:
            results = json.load(f)
    rows = []
    for shape, samples in results.items():
        step, agreed, alone = (median_ms(samples[name]) for name in ("step", "step + agreement", "agreement"))
        ratio = paired_ratio(samples["step + agreement"], samples["step"])
        rows.append([f"MicroNet_M0, {shape}", f"{step:.2f}", f"{agreed:.2f}", f"{alone:.3f}", f"{100 * alone / step:.1f}%",
                     f"{ratio:.3f}"])
    publish("Two processes (paddle.distributed.launch, gloo on CPU), median ms per call:\n\n" + markdown_table(
        ["model, batch", "step", "step + agreement", "agreement alone", "agreement / step",
         "(step + agreement) / step, paired"], rows, "lrrrrr"), args.markdown)


if __name__ == "__main__":
    main()
