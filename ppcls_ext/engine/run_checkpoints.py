"""A training run's checkpoints in its output folder: saved as one unit (weights, states, optimizer, EMA,
loss scale), resumed all together, and saves that a killed run left half-done finished or removed. The
file format itself is `checkpoint.py`'s."""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple

import paddle
import paddle.distributed as dist

from ..config import ConfigError
from ..interrupts import deferred
from ..output_paths import writing
from ..weights import IncompatibleWeightsError, load_weights, numerics_record
from . import checkpoint
from .amp import AmpPolicy
from .ema import ModelEMA
from .log import logger
from .state import TrainingState


class RunCheckpoints:
    """Saves and resumes `model` (the trained layer), `optimizer`, `schedule`, `ema` (or None), the AMP loss
    scale and the training `state`; `record`: what the task says about its models (saved in the states)."""

    def __init__(self, output_dir: str, rank: int, world_size: int, model: paddle.nn.Layer,
                 optimizer: paddle.optimizer.Optimizer, schedule: Any, ema: Optional[ModelEMA], amp: AmpPolicy,
                 state: TrainingState, record: Optional[Mapping[str, Any]] = None):
        self.output_dir, self.rank, self.world_size = output_dir, rank, world_size
        self.model, self.optimizer, self.schedule, self.ema, self.amp, self.state = model, optimizer, schedule, ema, amp, state
        self.record = dict(record or {})
        self.last_complete: Optional[Tuple[str, int]] = None  # (prefix, epoch) of the newest resumable checkpoint

    def recover(self, directory: str) -> None:
        """Finish or delete the checkpoint saves a killed run left in `directory` (rank 0; the others wait)."""
        if self.rank == 0:
            for done in checkpoint.recover_checkpoints(directory):
                logger.info("[Checkpoint] %s", done)
        if self.world_size > 1:
            dist.barrier()

    def save(self, prefix: str, epoch: int, with_training_state: bool = True,
             weights: Optional[Mapping[str, Any]] = None) -> None:
        """Checkpoint `prefix` as one unit (rank 0): weights (`weights` or the model's), states and, with
        the training state, optimizer, EMA and loss scaler to resume from."""
        path = os.path.join(self.output_dir, prefix)
        with deferred():  # a signal waits for the save to end: no checkpoint is left half-done by a Ctrl-C
            if self.rank == 0:
                with writing(path, "checkpoint", kept="the checkpoints already saved are kept"):
                    self._write(path, prefix, epoch, with_training_state, weights)
            if with_training_state:
                self.last_complete = (path, epoch)

    def _write(self, path: str, prefix: str, epoch: int, with_training_state: bool,
               weights: Optional[Mapping[str, Any]]) -> None:
        record = numerics_record(self.model)  # in every file that a later run builds its model from
        states: Dict[str, Any] = {**self.state.states(epoch), "step": self.schedule.last_epoch,
                                  "ema_updates": self.ema.updates if self.ema else 0, **record, **self.record}
        if with_training_state:
            states.update(self.amp.scaling.state_dict())
        checkpoint.save_checkpoint(
            path,
            {**(weights if weights is not None else self.model.state_dict()), **record},
            states,
            optimizer_state=(checkpoint.portable_optimizer_state(self.optimizer.state_dict(), self.model)
                             if with_training_state else None),
            ema_state={**self.ema.state_dict(), **record} if (with_training_state and self.ema is not None) else None,
        )
        logger.info("saved %s to %s", prefix, path)

    def _check_record(self, prefix: str, states: Mapping[str, Any]) -> None:
        """A checkpoint resumes only into the same arrangement of models (see the task's record)."""
        for key, wanted in self.record.items():
            if states.get(key) != wanted:
                saved = states.get(key)
                raise IncompatibleWeightsError(f"{prefix}.pdstates: saved by a run with {key} "
                                               f"{saved if saved is not None else 'absent'}, this config has {wanted}")

    def resume(self, prefix: str) -> None:
        """Continue from checkpoint `prefix`: weights (cast to the model's dtypes, float16 under AMP O2),
        optimizer, schedule, EMA, loss scaler and counters, all from one save or a one-line error."""
        self.recover(os.path.dirname(os.path.abspath(prefix)))
        saved = checkpoint.load_checkpoint(prefix, with_ema=self.ema is not None)
        self._check_record(prefix, saved["states"])
        check_class_count(saved["model"], self.model, prefix)
        load_weights(self.model, checkpoint.cast_to_model_dtypes(saved["model"], self.model), source=prefix + ".pdparams")
        self.optimizer.set_state_dict(checkpoint.restore_optimizer_state(saved["optimizer"], self.model))
        states = saved["states"]
        self.schedule.last_epoch = int(states.get("step", self.schedule.last_epoch))
        self.schedule.last_lr = self.schedule.get_lr()
        if self.ema is not None:
            self.ema.set_state_dict(saved["ema"], states.get("ema_updates", 0))
        self.amp.scaling.restore(states.get("amp_scaler"))
        self.state.restore(states)
        self.last_complete = (prefix, self.state.start_epoch - 1)
        logger.info("resumed from %s: continuing at epoch %d (best top1 %.5f)", prefix, self.state.start_epoch,
                    self.state.best)

    def resume_hint(self) -> str:
        """Where an interrupted run can continue from: the last complete checkpoint, saved or resumed from."""
        if self.last_complete is None:
            return "no checkpoint was written yet, so there is nothing to resume from"
        prefix, epoch = self.last_complete
        return f"the last complete checkpoint is {prefix} (epoch {epoch}); resume with -o Global.checkpoints={prefix}"


def check_class_count(saved: Mapping[str, Any], model: paddle.nn.Layer, prefix: str) -> None:
    """A resume continues a run exactly (PaddleClas's `Global.checkpoints`): a checkpoint whose classifier
    has another class count than `Arch.class_num` is refused before anything is loaded; fine-tuning to
    another class count starts from `Global.pretrained_model`."""
    prefixes = tuple(getattr(model, "classifier_prefixes", ()))
    if not prefixes:
        return
    saved = model.convert_state_dict(saved)  # PaddleClas's layout too
    for key, tensor in model.state_dict().items():
        if not key.startswith(prefixes) or key not in saved or len(tensor.shape) == 0:
            continue
        have, want = int(saved[key].shape[-1]), int(tensor.shape[-1])
        if have != want:
            raise ConfigError(f"Global.checkpoints: {prefix} was trained for {have} classes, Arch.class_num is {want}: "
                              f"a resume continues that run unchanged; to fine-tune for {want} classes start from its "
                              f"weights with -o Global.pretrained_model={prefix} (and without Global.checkpoints)")
