"""gpu_check's Engine rows: a few real epochs of `ppcls_ext.engine.Engine` on the demo digits with AMP O1 or
O2, `update_freq` 2 (the loss scaler across accumulated steps) and EMA, then a second Engine resuming from the
epoch-2 checkpoint (weights, optimizer, EMA, loss scale and counters), as `tools/train.py` would run them.

A row is "ok" when AMP really ran at the asked level, every epoch's loss is finite and the resumed run starts
at epoch 3 with the loss scale the first run ended with; "skipped" when the Engine is not on a GPU (it then
trains float32, as it logs); "FAIL: ..." otherwise.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence


from .engine import Engine

#: images of each split the runs use (the digits are 32 px: an epoch is a handful of steps)
TRAIN_IMAGES, VAL_IMAGES, BATCH = 64, 32, 16


def subset_list(data_dir: str, split: str, count: int, out_dir: str) -> str:
    """Every k-th line of `data_dir/<split>_list.txt`, `count` lines, written to `out_dir`."""
    with open(os.path.join(data_dir, f"{split}_list.txt"), encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    step = max(1, len(lines) // count)
    path = os.path.join(out_dir, f"{split}_{count}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[::step][:count])
    return path


def engine_config(name: str, level: str, data_dir: str, lists: Dict[str, str], output_dir: str, epochs: int,
                  device: str, checkpoints: Optional[str] = None) -> Dict[str, Any]:
    """A PaddleClas-style training config (as a dict) for `name` on the digits with AMP `level`,
    update_freq 2 and EMA."""
    normalize = {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "order": ""}}
    decode = {"DecodeImage": {"to_rgb": True, "channel_first": False}}

    def loader(split: str, crop: Dict[str, Any], shuffle: bool) -> Dict[str, Any]:
        return {"dataset": {"name": "ImageNetDataset", "image_root": data_dir, "cls_label_path": lists[split],
                            "transform_ops": [decode, crop, normalize]},
                "sampler": {"name": "DistributedBatchSampler", "batch_size": BATCH, "drop_last": False, "shuffle": shuffle},
                "loader": {"num_workers": 0, "use_shared_memory": False}}

    return {
        "Global": {"device": device, "output_dir": output_dir, "epochs": epochs, "update_freq": 2, "seed": 0,
                   "save_interval": 1, "eval_during_train": True, "eval_interval": 1, "print_batch_step": 100,
                   "checkpoints": checkpoints, "pretrained_model": None, "image_shape": [3, 32, 32]},
        "Arch": {"name": name, "class_num": 10},
        "Loss": {"Train": [{"CELoss": {"weight": 1.0}}], "Eval": [{"CELoss": {"weight": 1.0}}]},
        "Optimizer": {"name": "Momentum", "momentum": 0.9, "lr": {"name": "Cosine", "learning_rate": 0.05}},
        "EMA": {"decay": 0.9},
        "AMP": {"level": level, "scale_loss": 1024.0, "use_dynamic_loss_scaling": True},
        "DataLoader": {"Train": loader("train", {"RandCropImage": {"size": 32, "scale": [0.7, 1.0]}}, True),
                       "Eval": loader("val", {"ResizeImage": {"size": 32}}, False)},
        "Metric": {"Train": [{"TopkAcc": {"topk": [1, 5]}}], "Eval": [{"TopkAcc": {"topk": [1, 5]}}]},
    }


def loss_scale(engine: Engine) -> Optional[float]:
    """The loss scale of a loss-scaled run, else None."""
    return engine.amp.scaling.current_scale()


def engine_row(name: str, level: str, data_dir: str, workdir: str, device: str = "gpu") -> Dict[str, str]:
    """Train `name` 2 epochs at AMP `level` (update_freq 2, EMA), resume from epoch 2 for a third; the
    row's {"setting", "result", "measured"}."""
    run_dir = os.path.join(workdir, f"{name}_{level}")
    os.makedirs(run_dir, exist_ok=True)
    lists = {"train": subset_list(data_dir, "train", TRAIN_IMAGES, run_dir), "val": subset_list(data_dir, "val", VAL_IMAGES, run_dir)}
    output = os.path.join(run_dir, "output")
    setting = f"AMP {level}, update_freq 2, EMA, 2 epochs + resume"
    first = Engine(engine_config(name, level, data_dir, lists, output, 2, device), "train")
    first.train()
    losses = [record["train"]["loss"] for record in first.history]
    scale = loss_scale(first)
    resumed = Engine(engine_config(name, level, data_dir, lists, output, 3, device,
                                   checkpoints=os.path.join(output, name, "epoch_2")), "train")
    start_epoch, restored = resumed.start_epoch, loss_scale(resumed)
    resumed.train()
    losses += [record["train"]["loss"] for record in resumed.history]
    measured = (f"loss {' -> '.join(f'{v:.3f}' for v in losses)}; resumed at epoch {start_epoch}"
                + (f", loss scale {restored:g}" if restored is not None else ""))
    if first.device != "gpu":
        return {"setting": setting, "measured": measured,
                "result": f"skipped: the Engine runs on {first.device}, where AMP is off (it trains float32)"}
    problems = verdicts(level, first.amp_level, losses, start_epoch, scale, restored)
    return {"setting": setting, "measured": measured, "result": f"FAIL: {'; '.join(problems)}" if problems else "ok"}


def verdicts(level: str, ran: Optional[str], losses: Sequence[float], start_epoch: int, scale: Optional[float],
             restored: Optional[float]) -> List[str]:
    """What is wrong with a GPU run: AMP not at `level`, a non-finite loss, a resume elsewhere than epoch 3
    or with another loss scale than the first run ended with."""
    problems = []
    if ran != level:
        problems.append(f"AMP ran at {ran or 'float32'}, not {level}")
    if not all(math.isfinite(v) for v in losses):
        problems.append("a loss is not finite")
    if start_epoch != 3:
        problems.append(f"resumed at epoch {start_epoch}, not 3")
    if scale != restored:
        problems.append(f"loss scale {restored} after the resume, {scale} before")
    return problems
