"""Latency of each deployment backend for the given models, side by side, as a markdown table. Each CPU
backend is served alone by its own worker process, as deployed (see ppcls_ext.inference.benchmark).

    python deploy/python/benchmark.py -m MicroNet_M0 -m EfficientNetB0 --batch-sizes 1,8
    python deploy/python/benchmark.py -m EfficientNetV2_S --size 384 --backends paddle-cpu-onednn,onnxruntime --markdown v2s.md
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from ..inference.benchmark import BACKENDS, benchmark, markdown
from ..report import publish


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", action="append", required=True, help="model name (repeatable)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, from {', '.join(BACKENDS)}")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--size", type=int, help="image side (default: the model's eval size)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per backend (default 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per backend and batch size, in blocks of 5 (default 20)")
    parser.add_argument("--weights", help="weights to load (default: random; latency does not depend on them)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    rows = []
    for name in args.model:
        rows += benchmark(name, args.backends.split(","), [int(b) for b in args.batch_sizes.split(",")], args.size,
                          args.threads, args.repeats, weights=args.weights)
    publish(markdown(rows), args.markdown)
