"""tools/gpu_check.py: the GPU installation check (`ppcls_ext.gpu_check`; its docstring is the --help text).
Also the entry of its SyncBatchNorm worker, which `paddle.distributed.launch` runs with --sync-bn-worker."""
from __future__ import annotations

import argparse
import sys
import tempfile
from typing import List, Optional

from .. import gpu_check
from ..gpu_check import (CHECKS, MODELS, exit_status, results_table, run_checks, selected_checks,
                         sync_batchnorm_worker, what_is_missing)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=gpu_check.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=8, help="AMP training steps (and timed throughput steps)")
    parser.add_argument("--only", help=f"comma-separated checks to run (of {', '.join(CHECKS)})")
    parser.add_argument("--skip", help="comma-separated checks to leave out")
    parser.add_argument("--workdir", help="where exports and engines go (default: a temporary folder)")
    parser.add_argument("--sync-bn-worker", metavar="OUTPUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sync_bn_worker:
        sync_batchnorm_worker(args.sync_bn_worker)
        return 0
    try:
        checks = selected_checks(args.only, args.skip)
    except ValueError as error:
        parser.error(str(error))
    if not checks:
        parser.error("--only/--skip leave no check to run")
    missing = what_is_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ppcls_ext_gpu_check_") as scratch:
        rows = run_checks(args.models.split(","), args.batch, args.size, args.steps, args.workdir or scratch, checks)
    print(results_table(rows))
    return exit_status(rows)
