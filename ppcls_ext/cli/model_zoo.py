"""Print the model zoo as a markdown table: parameters, FLOPs at the eval size, sizes, paper top-1.

    python tools/model_zoo.py                      # every model (FLOPs of the big ones take minutes)
    python tools/model_zoo.py -n 'MicroNet*' -n EfficientNetB0 --no-flops
"""
from __future__ import annotations

import argparse
import fnmatch
from typing import List, Optional

from ..registry import list_models
from ..summary import zoo_table


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--names", action="append", help="glob of model names (repeatable); default: all")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOPs column (no forward pass)")
    args = parser.parse_args(argv)
    names = [n for n in list_models() if not args.names or any(fnmatch.fnmatchcase(n, p) for p in args.names)]
    if not names:
        parser.error(f"no model matches {args.names}; available: {', '.join(list_models())}")
    print(zoo_table(names, flops=not args.no_flops))
