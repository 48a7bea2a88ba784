"""Write the offline demo dataset (scikit-learn's handwritten digits) as an ImageNet-format folder.

    python tools/make_demo_data.py                 # -> dataset/digits/{images,train_list.txt,val_list.txt,label_list.txt}
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from ..data.demo import make_digits_dataset


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="dataset/digits", help="output folder (default: dataset/digits)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default: 32)")
    args = parser.parse_args(argv)
    for name, path in make_digits_dataset(args.out, size=args.size).items():
        print(f"{name}: {path}")
