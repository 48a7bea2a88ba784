"""`tools/split_dataset.py --dataset_dir DIR [--val_value 0.2] [--test_value 0] [--seed 0] [--save_dir DIR]`:
split a class-per-folder dataset into PaddleClas label files and a class map (see ppcls_ext.data.split)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..data.split import CLASS_MAP_FILE, LIST_FILES, split_image_folder, write_split
from ..errors import REPORTED
from .boundary import report


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Split a dataset kept as one sub-folder per class into train_list.txt / val_list.txt "
                    "(/ test_list.txt) and the class map label_list.txt, per class and reproducibly (seeded).")
    parser.add_argument("--dataset_dir", required=True, help="the dataset folder: one sub-folder of images per class")
    parser.add_argument("--val_value", type=float, default=0.2, help="fraction of each class for validation (default 0.2)")
    parser.add_argument("--test_value", type=float, default=0.0, help="fraction of each class for a test list (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    parser.add_argument("--save_dir", help="where to write the files (default: the dataset folder; the listed paths "
                                           "are relative to the dataset folder, the image_root to train with)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Split, write, print what was written; a bad folder or value is one line on stderr, exit status 2."""
    args = parse_args(argv)
    try:
        split = split_image_folder(args.dataset_dir, args.val_value, args.test_value, args.seed)
        written = write_split(split, args.save_dir or args.dataset_dir)
    except REPORTED as error:
        return report(error)
    for name, part in split.short:
        print(f"warning: class {name!r} has too few images to hold one out for {LIST_FILES[part]}", file=sys.stderr)
    spaced = [image.path for images in split.parts.values() for image in images if any(c.isspace() for c in image.path)]
    if spaced:
        print(f"warning: {len(spaced)} listed paths hold spaces (e.g. {spaced[0]!r}): these tools read them, PaddleClas's "
              "own ImageNetDataset splits lines at every space", file=sys.stderr)
    counts = ", ".join(f"{part} {len(images)}" for part, images in split.parts.items() if images)
    print(f"{len(split.classes)} classes, {sum(len(v) for v in split.parts.values())} images: {counts} (seed {args.seed})")
    print("wrote " + ", ".join(written))
    print(f"class ids: {CLASS_MAP_FILE}; train with image_root: {args.dataset_dir}")
    return 0
