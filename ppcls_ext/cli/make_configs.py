"""python tools/make_configs.py [--check] [--root DIR]: write (or check) configs/ImageNet from the model declarations."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ..output_paths import WriteError, write_file_atomically
from ..zoo_configs import COMMAND, rendered, stale


def main(argv: Optional[List[str]] = None) -> int:
    """0: the configs are (now) what the declarations give; 1: --check found stale ones, or a config no model
    declares is left for the user to delete; 2: a write failed."""
    parser = argparse.ArgumentParser(prog="tools/make_configs.py", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; list the configs that are out of date")
    parser.add_argument("--root", default=".", help="the repository root (default: the current directory)")
    args = parser.parse_args(argv)
    wanted = rendered()
    out_of_date = stale(args.root)
    orphans = [path for path in out_of_date if path not in wanted]
    if args.check:
        for path in out_of_date:
            print(f"{path}: {'no model declares it' if path in orphans else 'out of date'}", file=sys.stderr)
        if out_of_date:
            print(f"{len(out_of_date)} config(s) differ from the model declarations: run {COMMAND}", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in out_of_date:
        if path in orphans:
            continue
        try:
            os.makedirs(os.path.dirname(os.path.join(args.root, path)), exist_ok=True)
            write_file_atomically(os.path.join(args.root, path), wanted[path], path)
        except (OSError, WriteError) as error:
            print(f"{path}: {error}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
    for path in orphans:
        print(f"{path}: no model declares it; delete it or declare its model", file=sys.stderr)
    return 1 if orphans else 0
