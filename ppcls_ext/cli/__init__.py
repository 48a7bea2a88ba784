"""The command lines, and the layer they live in: every argument parser and every error boundary of
ppcls_ext is here, and nothing below imports this package (tests/test_layering.py). The scripts in tools/
and deploy/ only call a `main` of it.

This module is tools/train.py, eval.py, infer.py and export_model.py, PaddleClas-style: `-c CONFIG -o
KEY.PATH=VALUE ...`. The others: `predict_cls` (deploy/python/predict_cls.py), `quant_post_static`
(deploy/slim/quant_post_static.py), `benchmark` (deploy/python/benchmark.py), `convert_weights`,
`split_dataset`, `gpu_check`, `model_zoo`, `make_demo_data` (tools/<name>.py). Errors are reported by
`boundary.report` (one line; exit statuses in `ppcls_ext.errors`)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..config import load_config
from ..errors import REPORTED
from ..interrupts import Interrupted, raise_pending, signal_name, stop_on_signals
from ..output_paths import check_writable_file
from .boundary import report, report_failures

DESCRIPTIONS = {
    "train": "Train a model (use `python -m paddle.distributed.launch` for several processes/devices).",
    "eval": "Evaluate Global.pretrained_model on DataLoader.Eval.",
    "infer": "Classify Infer.infer_imgs (an image, a folder or a list) and print the top-k per image.",
    "export": "Export a Paddle Inference model and its preprocessing to Global.save_inference_dir.",
    "quant_post_static": "Quantize the export in Global.save_inference_dir to int8 (calibrated on DataLoader.Eval, "
                         "checked against the float model on held-out images) into its quant_post_static_model/.",
}


def parse_args(mode: str, argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTIONS[mode])
    parser.add_argument("-c", "--config", required=True, help="YAML config file")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value, e.g. -o Global.epochs=10 (repeatable)")
    if mode == "infer":
        parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-' prints JSON only)")
    return parser.parse_args(argv)


def interrupted_line(stop: Interrupted, engine) -> str:
    """The line that ends an interrupted run: for training, the checkpoint to resume from."""
    checkpoints = getattr(engine, "checkpoints", None)
    return f"interrupted by {signal_name(stop.signum)}" + (f"; {checkpoints.resume_hint()}" if checkpoints else "")


def main(mode: str, argv: Optional[List[str]] = None) -> int:
    """Run one tool; errors in the user's input are reported in one line (exit status 2; 3 for NaN/Inf),
    not a traceback; Ctrl-C and SIGTERM stop it in one line too (exit status 130, 143)."""
    args = parse_args(mode, argv)
    engine = None
    with stop_on_signals():
        try:
            from ..engine import Engine  # imported here so that --help stays fast

            if getattr(args, "json", None) not in (None, "-"):
                check_writable_file(args.json, "--json")
            engine = Engine(load_config(args.config, args.override), mode)
            if mode == "train":
                engine.train()
            elif mode == "eval":
                engine.eval()
            elif mode == "infer":
                return report_failures(engine.infer(args.json))
            else:
                engine.export()
            raise_pending()  # a signal after the last step: the run is complete, still say so
        except Interrupted as stop:
            print(interrupted_line(stop, engine), file=sys.stderr)
            return stop.exit_status
        except REPORTED as error:
            return report(error)
    return 0
