"""tools/train.py with per-rank records, for test_distributed.py to run under `paddle.distributed.launch`.

Each rank writes to $PROBE_DIR: `rank<r>_batches.json` (batch size and the loss and accuracy values of every
iteration) and `rank<r>_stats.npz` (BN running statistics of the model and the EMA just before and after the
cross-process average). The test compares the rank-0 log lines and the saved checkpoint with these."""
import json
import os
import sys

import numpy as np
import paddle.distributed as dist

from ppcls_ext.cli import main
from ppcls_ext.engine.trainer import Trainer

PROBE_DIR = os.environ["PROBE_DIR"]
batches = []


def running_statistics(trainer):
    models = [("model", trainer.task.model)] + ([("ema", trainer.ema.module)] if trainer.ema is not None else [])
    return {f"{name}/{key}": value.numpy() for name, model in models
            for key, value in model.state_dict().items() if key.endswith(("_mean", "_variance"))}


def recorded_init(trainer, *args, **kwargs):
    init(trainer, *args, **kwargs)
    task = trainer.task
    loss, metric = task.loss, task.metric

    def recording_loss(logits, labels):
        values = loss(logits, labels)
        batches.append({"n": int(logits.shape[0]), **{k: float(v) for k, v in values.items()}})
        return values

    def recording_metric(logits, labels):
        values = metric(logits, labels)
        batches[-1].update({k: float(v) for k, v in values.items()})
        return values

    task.loss, task.metric = recording_loss, recording_metric


def recorded_average(trainer):
    before = running_statistics(trainer)
    average(trainer)
    after = running_statistics(trainer)
    np.savez(os.path.join(PROBE_DIR, f"rank{dist.get_rank()}_stats.npz"),
             **{f"before:{k}": v for k, v in before.items()}, **{f"after:{k}": v for k, v in after.items()})


init, average = Trainer.__init__, Trainer.average_running_stats
Trainer.__init__, Trainer.average_running_stats = recorded_init, recorded_average

if __name__ == "__main__":
    status = main("train")
    with open(os.path.join(PROBE_DIR, f"rank{dist.get_rank()}_batches.json"), "w") as f:
        json.dump(batches, f)
    sys.exit(status)
