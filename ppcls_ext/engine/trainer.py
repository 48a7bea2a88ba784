"""One training epoch: the loop calls the task, hands the loss to the AMP policy, steps the optimizer at
each accumulation boundary, and logs PaddleClas's progress lines; plus the end-of-epoch checks (running
statistics averaged over ranks, weights finite). Everything it uses is built elsewhere and passed in."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import paddle
import paddle.distributed as dist

from ..data.device_normalize import batch_normalizer
from ..data.loader import WorkerSeeder
from ..errors import NonFiniteError
from .amp import AmpPolicy
from .ema import ModelEMA
from .log import AverageMeter, ScalarWriter, epoch_line, logger, train_line
from .metrics import RunningMeans
from .nonfinite import LossWatch, divergence_message, nonfinite_tensors
from .rank_agreement import agreed_batches
from .state import TrainingState
from .task import gradient_sync


def kept_checkpoints(epoch: int) -> str:
    """What a run stopped in `epoch` leaves: checkpoints are written at the end of each epoch."""
    if epoch > 1:
        return f"nothing from epoch {epoch} was saved; the checkpoints up to epoch {epoch - 1} are kept"
    return "no checkpoint was written"


class Trainer:
    """Trains `task` over `loader`, one epoch per `train_one_epoch` call, with `optimizer` and `schedule`
    stepped once per `update_freq` batches; `ema` (or None) follows every applied step."""

    def __init__(self, task: Any, loader: Any, optimizer: paddle.optimizer.Optimizer, schedule: Any, amp: AmpPolicy,
                 ema: Optional[ModelEMA], state: TrainingState, loss_watch: LossWatch, seeder: WorkerSeeder, *,
                 seed: Optional[int], epochs: int, update_freq: int, print_step: int, world_size: int,
                 writer: ScalarWriter):
        self.task, self.loader, self.optimizer, self.schedule, self.amp = task, loader, optimizer, schedule, amp
        self.ema, self.state, self.loss_watch, self.seeder, self.seed = ema, state, loss_watch, seeder, seed
        self.epochs, self.update_freq, self.print_step = epochs, update_freq, print_step
        self.world_size, self.writer = world_size, writer
        self.iters_per_epoch = len(loader)

    def _start_epoch(self, epoch: int) -> None:
        """Train mode, and the epoch's shuffling, worker and dropout seeds."""
        self.task.train()
        self.seeder.epoch = epoch
        self.loader.batch_sampler.set_epoch(epoch)
        if self.loader.num_workers == 0:
            self.seeder()
        if self.seed is not None:
            paddle.seed(self.seeder.derive(stream=1))  # dropout and drop-path: reproducible per epoch

    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        """One pass over the training data. Losses and accuracies are summed on the device and read back
        (averaged over ranks) only for the log lines, where the non-finite loss watch is read too: on a GPU
        the other iterations never wait for the device."""
        self._start_epoch(epoch)
        means = RunningMeans()
        self.loss_watch.reset()
        learning_rates: List[float] = []  # per iteration, to name the one a divergence began at
        times = {"batch_cost": AverageMeter(), "reader_cost": AverageMeter()}
        total = self.iters_per_epoch
        tic = time.time()
        for iteration, (images, labels) in enumerate(agreed_batches(self.loader, self.world_size)):
            images = batch_normalizer(self.loader)(images)  # loader.normalize_on_device: uint8 batches
            if iteration == 5:
                for meter in times.values():
                    meter.reset()
            times["reader_cost"].update(time.time() - tic)
            boundary = (iteration + 1) % self.update_freq == 0 or iteration + 1 == total
            with gradient_sync(self.task.net, boundary):
                with self.amp.autocast():
                    result = self.task(images, labels)
                self.amp.backward(result.loss / self.update_freq)
            learning_rates.append(self.schedule.get_lr())
            if boundary:
                self.optimizer_step()
            self.loss_watch.update(result.loss)
            means.add({**self.task.score(result, labels), **result.losses}, images.shape[0])
            times["batch_cost"].update(time.time() - tic)
            if iteration % self.print_step == 0:
                self._log_progress(means, epoch, iteration, learning_rates, times, images.shape[0])
            tic = time.time()
        values = self.read_train_means(means, epoch, learning_rates)
        logger.info(epoch_line("Train", epoch, self.epochs, values))
        return values

    def _log_progress(self, means: RunningMeans, epoch: int, iteration: int, learning_rates: List[float],
                      times: Dict[str, AverageMeter], batch_size: int) -> None:
        values = self.read_train_means(means, epoch, learning_rates)
        eta = ((self.epochs - epoch + 1) * self.iters_per_epoch - iteration) * times["batch_cost"].avg
        logger.info(train_line(epoch, self.epochs, iteration, self.iters_per_epoch, self.schedule.name,
                               self.schedule.get_lr(), values, times, batch_size, eta))
        self.writer.add({"lr": self.schedule.get_lr(), **{f"train_{k}": v for k, v in values.items()}},
                        self.state.global_step)

    def read_train_means(self, means: RunningMeans, epoch: int, learning_rates: List[float]) -> Dict[str, float]:
        """The epoch's running means over all ranks, after checking the loss watch: a diverged run stops
        here, naming the iteration where the loss first went non-finite."""
        tripped = self.loss_watch.tripped(self.world_size)
        if tripped is not None:
            iteration, value = tripped
            lr_key = "Optimizer.lr." + ("values" if self.schedule.name == "Piecewise" else "learning_rate")
            raise NonFiniteError(divergence_message(epoch, iteration, value, self.loss_watch.patience,
                                                    learning_rates[iteration], lr_key, self.amp.divergence_details(),
                                                    kept_checkpoints(epoch)))
        return means.read(self.world_size)

    def optimizer_step(self) -> bool:
        """Apply the accumulated gradients; returns whether the update was applied. A step that the loss
        scaler skipped (inf/NaN gradients) leaves the LR schedule, the step count and the EMA as they were."""
        applied = self.amp.step(self.optimizer)
        self.optimizer.clear_grad()
        if applied:
            self.schedule.step()
            self.state.global_step += 1
            if self.ema is not None:
                self.ema.update(self.task.model)
        return applied

    def _models(self) -> List[tuple]:
        return [("model", self.task.model)] + ([("EMA", self.ema.module)] if self.ema is not None else [])

    def check_finite_weights(self, epoch: int) -> None:
        """Before anything is evaluated or saved: weights and running statistics must be finite."""
        for name, model in self._models():
            state = model.state_dict(use_hook=False)
            bad = nonfinite_tensors(state)
            if bad:
                raise NonFiniteError(f"training stopped after epoch {epoch}: {len(bad)} of {len(state)} {name} tensors hold "
                                     f"NaN or Inf (e.g. {bad[0]}); the learning rate is likely too high; "
                                     f"{kept_checkpoints(epoch)}")

    def average_running_stats(self) -> None:
        """Average the model's non-trainable state (BN running mean/variance, which Paddle keeps as frozen
        parameters), and the same entries of the EMA, over ranks: each rank tracked only its own shard,
        and the model evaluated and saved must be one model. The tensors themselves are averaged: under
        AMP O2, `state_dict()`'s hooks would hand out float32 copies."""
        if self.world_size == 1:
            return
        state = self.task.model.state_dict(use_hook=False)
        keys = [key for key, tensor in state.items() if paddle.is_floating_point(tensor) and tensor.stop_gradient]
        with paddle.no_grad():
            for _, model in self._models():
                tensors = model.state_dict(use_hook=False)
                for key in keys:
                    dist.all_reduce(tensors[key])
                    tensors[key].set_value(tensors[key] / self.world_size)
