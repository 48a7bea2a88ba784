"""Command lines of tools/*.py, PaddleClas-style: `-c CONFIG -o KEY.PATH=VALUE ...`."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .config import ConfigError, load_config
from .weights import IncompatibleWeightsError, WeightsDownloadError

#: errors caused by the user's input (config, paths, weights): one line on stderr, exit status 2
USER_ERRORS = (ConfigError, FileNotFoundError, IncompatibleWeightsError, WeightsDownloadError)
#: training diverged, or weights / model outputs hold NaN or Inf: one line on stderr
NONFINITE_EXIT_STATUS = 3

DESCRIPTIONS = {
    "train": "Train a model (use `python -m paddle.distributed.launch` for several processes/devices).",
    "eval": "Evaluate Global.pretrained_model on DataLoader.Eval.",
    "infer": "Classify Infer.infer_imgs (an image, a folder or a list) and print the top-k per image.",
    "export": "Export a Paddle Inference model and its preprocessing to Global.save_inference_dir.",
}


def parse_args(mode: str, argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTIONS[mode])
    parser.add_argument("-c", "--config", required=True, help="YAML config file")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value, e.g. -o Global.epochs=10 (repeatable)")
    if mode == "infer":
        parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-' prints JSON only)")
    return parser.parse_args(argv)


def main(mode: str, argv: Optional[List[str]] = None) -> int:
    """Run one tool; errors in the user's input are reported in one line (exit status 2), not a traceback."""
    args = parse_args(mode, argv)
    from .engine import Engine  # imported here so that --help stays fast
    from .engine.nonfinite import NonFiniteError

    try:
        engine = Engine(load_config(args.config, args.override), mode)
        if mode == "train":
            engine.train()
        elif mode == "eval":
            engine.eval()
        elif mode == "infer":
            engine.infer(args.json)
        else:
            engine.export()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        return NONFINITE_EXIT_STATUS
    return 0
