"""deploy/slim/quant_post_static.py -c CONFIG -o Global.save_inference_dir=EXPORT_DIR [-o ...]: PaddleClas's
post-training quantization command (`ppcls_ext.quant.post_static`; docs/int8.md)."""
from __future__ import annotations

from typing import List, Optional

from ..config import load_config
from ..engine.log import init_logger
from ..errors import REPORTED
from ..quant.post_static import BudgetNotMet, quantize
from . import parse_args
from .boundary import report


def main(argv: Optional[List[str]] = None) -> int:
    """Exit status 0 when the int8 folder is written; 2 with one line on stderr for a bad config, too few
    images or a budget that cannot be met (the layer ranking on stdout)."""
    args = parse_args("quant_post_static", argv)
    init_logger()
    try:
        quantize(load_config(args.config, args.override))
    except REPORTED as error:
        if isinstance(error, BudgetNotMet):
            print(error.ranking, flush=True)
        return report(error)
    return 0
