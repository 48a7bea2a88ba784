"""Command lines of tools/*.py, PaddleClas-style: `-c CONFIG -o KEY.PATH=VALUE ...`."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from .config import ConfigError, load_config
from .data.dataset import DataError
from .interrupts import Interrupted, raise_pending, signal_name, stop_on_signals
from .output_paths import WriteError, check_writable_file
from .weights import IncompatibleWeightsError, WeightsDownloadError

#: errors caused by the user's input (config, paths, data, weights) or its outputs (a full disk, a file-size
#: limit, a read-only folder): one line on stderr, exit status 2
USER_ERRORS = (ConfigError, FileNotFoundError, IncompatibleWeightsError, WeightsDownloadError, DataError, WriteError)
#: training diverged, or weights / model outputs hold NaN or Inf: one line on stderr
NONFINITE_EXIT_STATUS = 3

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


def error_line(error: BaseException) -> str:
    """The message of a user error as one line. An error re-raised from a DataLoader worker carries the
    worker's traceback in its message; its last line is the error itself."""
    text = str(error).strip()
    if "Traceback (most recent call last)" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def report_failures(results: Sequence[dict]) -> int:
    """Print 'N of M images failed' on stderr when any image failed (its result is an 'error' entry);
    the exit status: 2 when every image failed, else 0."""
    failed = sum("error" in result for result in results)
    if not failed:
        return 0
    every = failed == len(results)
    print(f"{'error' if every else 'warning'}: {failed} of {len(results)} images failed (see their 'error' entries)",
          file=sys.stderr)
    return 2 if every else 0


def interrupted_line(stop: Interrupted, engine) -> str:
    """The line that ends an interrupted run: for training, the checkpoint to resume from."""
    checkpoints = getattr(engine, "checkpoints", None)
    return f"interrupted by {signal_name(stop.signum)}" + (f"; {checkpoints.resume_hint()}" if checkpoints else "")


def main(mode: str, argv: Optional[List[str]] = None) -> int:
    """Run one tool; errors in the user's input are reported in one line (exit status 2), not a traceback;
    Ctrl-C and SIGTERM stop it in one line too (exit status 130, 143)."""
    args = parse_args(mode, argv)
    engine = None
    with stop_on_signals():
        try:
            from .engine import Engine  # imported here so that --help stays fast

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
        except USER_ERRORS as error:
            print(f"error: {error_line(error)}", file=sys.stderr)
            return 2
        except Exception as error:
            from .engine.nonfinite import NonFiniteError

            if not isinstance(error, NonFiniteError):
                raise
            print(f"error: {error_line(error)}", file=sys.stderr)
            return NONFINITE_EXIT_STATUS
    return 0
