"""Progressive learning vs fixed-size training on the offline demo data, side by side.

Both runs use the same model, data, seed, epochs and learning-rate schedule, and evaluate every epoch
at the final size; the fixed run trains every epoch at the final size with the final regularisation
(the paper's baseline), the progressive run ramps size, RandAugment magnitude and dropout over the
stages. Epochs of the two runs alternate, so machine noise hits both alike. Prints a markdown table of
cumulative training time and val top-1 per epoch, and the training time each run needs to reach each
`--target` level. Trains on every `--train-every`-th training image (default: a third, 479 images).

    python bench/progressive.py                                   # EfficientNetV2_B0, 12 epochs, 32 -> 64 px
    python bench/progressive.py --epochs 16 --size 96 --start-size 48 --markdown docs/progressive.md
"""
import argparse
import os

from ppcls_ext.config import load_config
from ppcls_ext.data.demo import make_digits_dataset
from ppcls_ext.engine import Engine
from ppcls_ext.report import markdown_table, publish

QUICK_START = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "quick_start", "micronet_m0_digits.yaml")


def config(args, output: str, progressive: bool, train_list: str):
    normalize = "{NormalizeImage: {scale: 1.0/255.0, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], order: ''}}"
    options = [
        f"Arch.name={args.model}", f"Arch.dropout={args.dropout[1]}", f"Global.epochs={args.epochs}",
        f"Global.output_dir={output}", "Global.seed=0", "Global.eval_interval=1", "Global.save_interval=1000",
        "Global.print_batch_step=1000", f"Arch.drop_path_rate={args.drop_path}",
        f"Optimizer={{name: AdamW, lr: {{name: Cosine, learning_rate: {args.lr}, warmup_epoch: 1}}, "
        f"weight_decay: {args.weight_decay}, one_dim_param_no_weight_decay: True}}",
        f"DataLoader.Train.sampler.batch_size={args.batch_size}",
        f"DataLoader.Train.dataset.image_root={args.data}", f"DataLoader.Train.dataset.cls_label_path={train_list}",
        f"DataLoader.Eval.dataset.image_root={args.data}", f"DataLoader.Eval.dataset.cls_label_path={args.data}/val_list.txt",
        f"DataLoader.Train.dataset.transform_ops=[{{DecodeImage: {{to_rgb: True}}}}, "
        f"{{RandCropImage: {{size: {args.size}, scale: [0.8, 1.0]}}}}, "
        f"{{RandAugmentV2: {{num_layers: 1, magnitude: {args.magnitude[1]}}}}}, {normalize}]",
        f"DataLoader.Eval.dataset.transform_ops=[{{DecodeImage: {{to_rgb: True}}}}, {{ResizeImage: {{size: {args.size}}}}}, {normalize}]",
    ]
    if progressive:
        options += ["Global.train_mode=progressive", f"Global.progressive.stages={args.stages}",
                    f"Global.progressive.image_size=[{args.start_size}, {args.size}]",
                    f"Global.progressive.magnitude=[{args.magnitude[0]}, {args.magnitude[1]}]",
                    f"Global.progressive.dropout=[{args.dropout[0]}, {args.dropout[1]}]"]
    return load_config(QUICK_START, options)


def subset_list(label_file: str, every: int, out_dir: str) -> str:
    """Write every `every`-th line of `label_file` to a new label file under `out_dir`; return its path."""
    with open(label_file, encoding="utf-8") as f:
        lines = f.readlines()[::every]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"train_every_{every}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return path


def time_to(history, target):
    elapsed = 0.0
    for record in history:
        elapsed += record["train_seconds"]
        if record["eval"]["top1"] >= target:
            return elapsed, record["epoch"]
    return None, None


def _reached(seconds, epoch) -> str:
    return f"{seconds:.1f} ({epoch})" if seconds is not None else "not reached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="EfficientNetV2_B0")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="final training size and the evaluation size")
    parser.add_argument("--start-size", type=int, default=32, help="first stage's training size")
    parser.add_argument("--magnitude", type=float, nargs=2, default=(1.0, 3.0), help="RandAugment magnitude start end")
    parser.add_argument("--dropout", type=float, nargs=2, default=(0.0, 0.1), help="dropout start end")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (cosine, 1 warm-up epoch)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--drop-path", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-every", type=int, default=3, help="train on every N-th image of the training list")
    parser.add_argument("--target", type=float, nargs="+", default=(0.5, 0.8, 0.9, 0.95), help="val top-1 levels to time")
    parser.add_argument("--data", default="dataset/digits")
    parser.add_argument("--out", default="output/bench_progressive")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.data, "train_list.txt")):
        make_digits_dataset(args.data)
    train_list = subset_list(os.path.join(args.data, "train_list.txt"), args.train_every, args.out)
    runs = {name: Engine(config(args, os.path.join(args.out, name), name == "progressive", train_list), "train")
            for name in ("fixed", "progressive")}
    for epoch in range(1, args.epochs + 1):
        for engine in runs.values():
            engine.run_epoch(epoch)
    fixed, progressive = runs["fixed"].history, runs["progressive"].history
    lines = [f"{args.model} on the digits demo data, {args.epochs} epochs, eval at {args.size} px; progressive: "
             f"{args.stages} stages, size {args.start_size} -> {args.size}, RandAugment {args.magnitude[0]:g} -> "
             f"{args.magnitude[1]:g}, dropout {args.dropout[0]:g} -> {args.dropout[1]:g}; fixed: the final values throughout.", ""]
    per_epoch, totals = [], [0.0, 0.0]
    for a, b in zip(fixed, progressive):
        totals = [totals[0] + a["train_seconds"], totals[1] + b["train_seconds"]]
        per_epoch.append([a["epoch"], f"{totals[0]:.1f}", f"{a['eval']['top1']:.3f}", b["progressive"].image_size,
                          f"{totals[1]:.1f}", f"{b['eval']['top1']:.3f}"])
    lines += [markdown_table(["epoch", "fixed: train s (cumulative)", "fixed: val top-1", "progressive: size",
                              "progressive: train s (cumulative)", "progressive: val top-1"], per_epoch, "rrrrrr"), ""]
    reached = []
    for target in args.target:
        (fixed_time, fixed_epoch), (progressive_time, progressive_epoch) = time_to(fixed, target), time_to(progressive, target)
        ratio = f"{fixed_time / progressive_time:.2f}x" if fixed_time and progressive_time else "-"
        reached.append([f"{target:g}", _reached(fixed_time, fixed_epoch), _reached(progressive_time, progressive_epoch), ratio])
    lines += [markdown_table(["val top-1 reached", "fixed: train s (epoch)", "progressive: train s (epoch)",
                              "fixed / progressive"], reached, "rrrr"), ""]
    for name, history in (("fixed", fixed), ("progressive", progressive)):
        lines.append(f"- {name}: final top-1 {history[-1]['eval']['top1']:.3f}, best {max(r['eval']['top1'] for r in history):.3f}, "
                     f"total training {sum(r['train_seconds'] for r in history):.1f} s")
    publish("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
