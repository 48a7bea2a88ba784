"""Training input pipeline throughput: how many images per second one CPU worker prepares, ours vs
PaddleClas's own operators on the same config, and what a GPU consuming N images/s needs in CPU cores.

ImageNet-like JPEGs (500x375, quality 90, cut from scikit-learn's two bundled photographs; or your own
with --images) go through each train transform list in Paddle's DataLoader (`paddle.io.DataLoader`,
shared memory, batches collated in the workers), with 1 and 2 worker processes; the loop only takes
the batches. Contenders, on identical transform_ops:

- PaddleClas: its operators (`../shared/upstream/PaddleClas`, ppcls.data.preprocess) and its dataset's
  HWC -> CHW transpose;
- ours: ppcls_ext's operators and dataset layout (same float32 output);
- ours, uint8: `loader.normalize_on_device: True`: the workers ship uint8 CHW batches and the loop
  normalises them on the device (on a GPU; not counted here, as it is not the workers' work).

Every round runs one epoch of each contender (order flipped every round); reported per contender: the
median images/s per worker (delivered images/s / workers), the median of the per-round ratios to
PaddleClas, and the cores a GPU consuming --gpu-rate images/s would need at that per-worker rate.
OpenCV runs one thread per worker (cv2.setNumThreads(1) before the workers start, for all contenders),
as loader workers should on a machine whose cores they already fill.

    python bench/input_pipeline.py                          # 200 images, 4 pipelines, 1 and 2 workers; ~1 min
    python bench/input_pipeline.py --pipelines MicroNet --workers 1 --rounds 3 --markdown output/pipeline.md
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import ppcls_ext  # first: applies the CPU settings before Paddle loads MKL
import cv2
import numpy as np
import paddle
from paddle.io import DataLoader, Dataset

from ppcls_ext.data.dataset import to_chw
from ppcls_ext.data.demo import photo_jpegs
from ppcls_ext.data.device_normalize import split_normalization
from ppcls_ext.data.transforms import build_transforms
from ppcls_ext.report import markdown_table, publish
from ppcls_ext.timing import alternate, paired_ratio, time_calls

UPSTREAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "upstream", "PaddleClas")
IMAGENET_NORMALIZE = {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.485, 0.456, 0.406],
                                         "std": [0.229, 0.224, 0.225], "order": ""}}
HALF_NORMALIZE = {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5] * 3, "std": [0.5] * 3, "order": ""}}
DECODE = {"DecodeImage": {"to_rgb": True, "channel_first": False}}
FLIP = {"RandFlipImage": {"flip_code": 1}}
#: the train transform_ops of the shipped configs (configs/ImageNet/...), and V2-S's first progressive stage
PIPELINES = {
    "MicroNet": [DECODE, {"RandCropImage": {"size": 224, "interpolation": "bilinear", "use_log_aspect": True}},
                 FLIP, IMAGENET_NORMALIZE],
    "EfficientNetB0": [DECODE, {"RandCropImage": {"size": 224, "interpolation": "bicubic"}}, FLIP,
                       {"AutoAugment": None}, IMAGENET_NORMALIZE],
    "EfficientNetV2_S": [DECODE, {"RandCropImage": {"size": 300, "scale": [0.05, 1.0], "interpolation": "bicubic"}},
                         FLIP, {"RandAugmentV2": {"num_layers": 2, "magnitude": 15}}, HALF_NORMALIZE],
    "EfficientNetV2_S, stage 1 (128 px)": [DECODE, {"RandCropImage": {"size": 128, "scale": [0.05, 1.0],
                                                                      "interpolation": "bicubic"}},
                                           FLIP, {"RandAugmentV2": {"num_layers": 2, "magnitude": 5}}, HALF_NORMALIZE],
}
THEIRS, OURS, UINT8 = "PaddleClas", "ours", "ours, uint8"


class EncodedImages(Dataset):
    """The JPEG files' bytes in memory through `prepare` (file reading is not what is measured)."""

    def __init__(self, files: Sequence[bytes], prepare: Callable[[bytes], np.ndarray]):
        self.files, self.prepare = files, prepare

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        return self.prepare(self.files[index]), np.int64(index % 1000)


def paddleclas_prepare(ops_config: List[Dict[str, Any]]) -> Optional[Callable[[bytes], np.ndarray]]:
    """PaddleClas's operators for `ops_config` plus its dataset's CHW transpose, or None without the snapshot."""
    if not os.path.isdir(UPSTREAM):
        return None
    if UPSTREAM not in sys.path:
        sys.path.insert(0, UPSTREAM)
    from ppcls.data.dataloader.common_dataset import create_operators

    ops = create_operators([{name: dict(args) if args else None for name, args in item.items()} for item in ops_config])

    def prepare(data: bytes) -> np.ndarray:
        for op in ops:
            data = op(data)
        return data.transpose((2, 0, 1))  # as PaddleClas's CommonDataset does

    return prepare


def ours_prepare(ops_config: List[Dict[str, Any]], uint8: bool) -> Callable[[bytes], np.ndarray]:
    transform = build_transforms(ops_config, "bench")
    if uint8:
        transform, _ = split_normalization(transform, "bench")
    return lambda data: to_chw(transform(data))


def seed_worker(worker_id: int) -> None:
    random.seed(worker_id)
    np.random.seed(worker_id)


def epoch_block(files: Sequence[bytes], prepare, workers: int, batch_size: int) -> Callable[[], List[float]]:
    """One epoch through Paddle's DataLoader; returns [seconds per image after the first batch]
    (the first batch includes starting the workers)."""
    loader = DataLoader(EncodedImages(files, prepare), batch_size=batch_size, num_workers=workers, shuffle=False,
                        drop_last=True, use_shared_memory=True, worker_init_fn=seed_worker)

    def block() -> List[float]:
        iterator = iter(loader)
        next(iterator)
        remaining = len(files) // batch_size - 1
        seconds = sum(time_calls(lambda: next(iterator), remaining))
        for _ in iterator:
            pass
        return [seconds / (remaining * batch_size)]

    return block


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--count", type=int, default=200, help="generated JPEGs (default 200)")
    parser.add_argument("--images", help="a folder of your own JPEG files instead")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3, help="epochs per contender (alternating)")
    parser.add_argument("--gpu-rate", type=float, nargs="+", default=[1000.0, 3000.0],
                        help="images/s a GPU consumes, for the cores-needed columns")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    cv2.setNumThreads(1)  # before the workers fork: calling it in a forked worker can deadlock OpenCV's pool
    if args.images:
        names = sorted(n for n in os.listdir(args.images) if n.lower().endswith((".jpg", ".jpeg")))
        files = [open(os.path.join(args.images, n), "rb").read() for n in names]
    else:
        files = photo_jpegs(args.count)
    header = (["pipeline", "workers"] + [f"{c}, img/s per worker" for c in (THEIRS, OURS, UINT8)]
              + [f"{c} / PaddleClas" for c in (OURS, UINT8)]
              + [f"cores for {rate:g} img/s: {c}" for rate in args.gpu_rate for c in (THEIRS, UINT8)])
    rows = []
    for name in args.pipelines:
        ops_config = PIPELINES[name]
        prepares = {THEIRS: paddleclas_prepare(ops_config), OURS: ours_prepare(ops_config, False),
                    UINT8: ours_prepare(ops_config, True)}
        if prepares[THEIRS] is None:
            print(f"PaddleClas's operators skipped: {UPSTREAM} is absent", file=sys.stderr)
            del prepares[THEIRS]
        for workers in args.workers:
            blocks = {who: epoch_block(files, prepare, workers, args.batch_size) for who, prepare in prepares.items()}
            seconds = alternate(blocks, args.rounds)
            per_worker = {who: 1.0 / (workers * float(np.median(s))) for who, s in seconds.items()}
            row: List[Any] = [name, workers] + [f"{per_worker[c]:.0f}" if c in per_worker else "-" for c in (THEIRS, OURS, UINT8)]
            row += [f"{paired_ratio(seconds[THEIRS], seconds[c]):.2f}" if THEIRS in seconds else "-" for c in (OURS, UINT8)]
            row += [f"{rate / per_worker[c]:.1f}" if c in per_worker else "-" for rate in args.gpu_rate for c in (THEIRS, UINT8)]
            rows.append(row)
            print(" | ".join(map(str, row)), flush=True)
    notes = [f"{len(files)} JPEGs of {'your folder' if args.images else '500x375, quality 90'}; batch {args.batch_size}; "
             f"medians of {args.rounds} epochs per contender, alternating; ratios: medians of the per-epoch ratios "
             f"(higher is faster); cores needed = images/s / images/s per worker",
             f"{os.cpu_count()} CPU cores; paddle {paddle.__version__}, OpenCV {cv2.__version__}"]
    publish("\n".join([markdown_table(header, rows, "lr" + "r" * (len(header) - 2)), ""] + [f"- {n}" for n in notes]),
            args.markdown)


if __name__ == "__main__":
    main()
