"""Distillation gain on the offline demo digits: MicroNet_M0 distilled from an EfficientNetB0 teacher vs
MicroNet_M0 trained with cross-entropy alone, at equal epochs, over several seeds.

The teacher is trained first on the same training list (tools/train.py on the quick-start config with
`Arch.name=EfficientNetB0` and TEACHER_RECIPE below). Each student run is `tools/train.py` in a process of its own: the baseline on
configs/quick_start/micronet_m0_digits.yaml (CELoss, label smoothing 0.1), the distilled run on
configs/quick_start/distill_efficientnetb0_micronet_m0_digits.yaml (PaddleClas's DistillationModel:
DistillationGTCELoss with the same smoothing + DistillationKLDivLoss at temperature 4, the teacher frozen).
Both use the same optimizer, schedule, augmentation, batch size and seeds. Prints a markdown table of the
final-epoch and best val top-1 per seed, their means and spreads (sample standard deviation).

    python bench/distillation.py                                  # 3 seeds, students 4 epochs, teacher 24
    python bench/distillation.py --seeds 0 1 2 3 4 --epochs 8 --reuse-teacher --markdown table.md
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

from ppcls_ext.data.demo import make_digits_dataset
from ppcls_ext.report import markdown_table, publish

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN = os.path.join(REPO, "configs", "quick_start", "micronet_m0_digits.yaml")
DISTILL = os.path.join(REPO, "configs", "quick_start", "distill_efficientnetb0_micronet_m0_digits.yaml")
# EfficientNetB0's recipe for the teacher: its BatchNorm keeps TensorFlow's momentum 0.99, so evaluation-mode
# statistics need many optimizer steps to settle (batch 16: 90 steps an epoch); AdamW, no drop-path, no label
# smoothing (the quick-start Momentum recipe of MicroNet leaves B0 at chance level on these 32 px images); an
# EMA of the weights (its val top-1 swings by 10 points between late epochs without one). With EMA, the
# checkpoint's .pdparams holds the EMA weights (PaddleClas's layout): the teacher is the EMA.
TEACHER_RECIPE = ["Arch.name=EfficientNetB0", "Arch.drop_path_rate=0.0", "Arch.dropout=0.1", "Global.seed=0",
                  "DataLoader.Train.sampler.batch_size=16", "Loss.Train.0.CELoss.epsilon=0.0", "EMA.decay=0.998",
                  "Optimizer={name: AdamW, lr: {name: Cosine, learning_rate: 0.006, warmup_epoch: 1}, weight_decay: 0.01, "
                  "one_dim_param_no_weight_decay: True}"]
EVAL_LINE = re.compile(r"\[Eval\]\[Epoch (\d+)\]\[Avg\].*?top1: ([\d.]+)")
EMA_LINE = re.compile(r"\[Eval\(EMA\)\]\[Epoch (\d+)\]\[Avg\].*?top1: ([\d.]+)")


def data_options(args) -> List[str]:
    return [f"DataLoader.Train.dataset.image_root={args.data}", f"DataLoader.Train.dataset.cls_label_path={args.train_list}",
            f"DataLoader.Eval.dataset.image_root={args.data}", f"DataLoader.Eval.dataset.cls_label_path={args.data}/val_list.txt",
            f"Infer.PostProcess.class_id_map_file={args.data}/label_list.txt", "Global.eval_interval=1",
            "Global.save_interval=1000", "Global.print_batch_step=1000"]


def train(config: str, output: str, options: Sequence[str], scores: re.Pattern = EVAL_LINE) -> Dict[int, float]:
    """Run tools/train.py alone in its own process, in a fresh `output`; {epoch: val top-1} from its train.log."""
    shutil.rmtree(output, ignore_errors=True)  # the log is appended to: an earlier run's lines would be read
    command = [sys.executable, os.path.join(REPO, "tools", "train.py"), "-c", config, "-o", f"Global.output_dir={output}"]
    for option in options:
        command += ["-o", option]
    started = time.time()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(command)}):\n{proc.stderr[-3000:]}")
    result = logged_scores(output, scores)
    print(f"  {os.path.basename(output)}: {len(result)} evaluations, last top-1 {result[max(result)]:.4f}, "
          f"{time.time() - started:.0f} s", flush=True)
    return result


def logged_scores(output: str, scores: re.Pattern = EVAL_LINE) -> Dict[int, float]:
    """{epoch: val top-1} (of the model, or with EMA_LINE of its EMA) of the run that wrote its train.log under `output`."""
    logs = [os.path.join(root, name) for root, _, names in os.walk(output) for name in names if name == "train.log"]
    return {int(m.group(1)): float(m.group(2)) for m in scores.finditer(open(logs[0], encoding="utf-8").read())}


def spread(values: Sequence[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=(0, 1, 2))
    parser.add_argument("--epochs", type=int, default=4, help="student epochs (both methods)")
    parser.add_argument("--teacher-epochs", type=int, default=24)
    parser.add_argument("--data", default="dataset/digits")
    parser.add_argument("--out", default="output/bench_distillation")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--reuse-teacher", action="store_true", help="take the teacher an earlier run left in --out")
    parser.add_argument("--teacher-checkpoint", choices=("latest", "best_model_ema"), default="latest",
                        help="the teacher's EMA at its last epoch (default), or at its epoch of best val top-1 (chosen "
                             "on the data the students are scored on)")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.data, "train_list.txt")):
        make_digits_dataset(args.data)
    args.train_list = os.path.join(args.data, "train_list.txt")
    teacher_dir = os.path.join(args.out, "teacher")
    teacher_weights = os.path.join(teacher_dir, "EfficientNetB0", args.teacher_checkpoint)
    if args.reuse_teacher and os.path.isfile(teacher_weights + ".pdparams"):
        teacher = logged_scores(teacher_dir, EMA_LINE)
        print(f"teacher: {teacher_weights}", flush=True)
    else:
        print(f"teacher: EfficientNetB0, {args.teacher_epochs} epochs", flush=True)
        teacher = train(PLAIN, teacher_dir, data_options(args) + TEACHER_RECIPE + [f"Global.epochs={args.teacher_epochs}"],
                        EMA_LINE)
    rows, finals, bests = [], {"ce": [], "kd": []}, {"ce": [], "kd": []}
    for seed in args.seeds:
        print(f"seed {seed}: MicroNet_M0, {args.epochs} epochs", flush=True)
        common = data_options(args) + [f"Global.seed={seed}", f"Global.epochs={args.epochs}"]
        plain = train(PLAIN, os.path.join(args.out, args.teacher_checkpoint, f"ce_seed{seed}"), common)
        distilled = train(DISTILL, os.path.join(args.out, args.teacher_checkpoint, f"kd_seed{seed}"),
                          common + [f"Arch.models.0.Teacher.pretrained={teacher_weights}"])
        for key, scores in (("ce", plain), ("kd", distilled)):
            finals[key].append(scores[max(scores)])
            bests[key].append(max(scores.values()))
        rows.append([seed, f"{finals['ce'][-1]:.4f}", f"{finals['kd'][-1]:.4f}",
                     f"{finals['kd'][-1] - finals['ce'][-1]:+.4f}", f"{bests['ce'][-1]:.4f}", f"{bests['kd'][-1]:.4f}"])
    gains = [kd - ce for kd, ce in zip(finals["kd"], finals["ce"])]
    rows.append(["mean ± sd", spread(finals["ce"]), spread(finals["kd"]), spread(gains), spread(bests["ce"]),
                 spread(bests["kd"])])
    chosen = teacher[max(teacher)] if args.teacher_checkpoint == "latest" else max(teacher.values())
    which = "its last epoch" if args.teacher_checkpoint == "latest" else "its epoch of best val top-1"
    lines = [f"MicroNet_M0 on the demo digits ({args.train_list}, val_list.txt), {args.epochs} epochs, seeds "
             f"{', '.join(map(str, args.seeds))}; teacher EfficientNetB0 trained {max(teacher)} epochs on the same list "
             f"(TEACHER_RECIPE), {which}: val top-1 {chosen:.4f}; KD = DistillationGTCELoss + DistillationKLDivLoss (T=4).",
             "",
             markdown_table(["seed", "CE: final top-1", "KD: final top-1", "KD - CE", "CE: best top-1", "KD: best top-1"],
                            rows, "rrrrrr"), ""]
    publish("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
