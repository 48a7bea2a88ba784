"""The engine behind tools/{train,eval,infer,export_model}.py: a PaddleClas-format config in, a
trained / evaluated / exported model out, on one process or many (`paddle.distributed.launch`).

`Engine` is a facade: it wires the rooms that do the work (`wiring` set-up, the `front` that the `Arch`
section builds - one classifier, or PaddleClas's DistillationModel - with the `task` a training step calls,
the `trainer` loop, the `evaluator`, the `amp` policy, the training `state` and its `run_checkpoints`;
inference and export are `ppcls_ext.serving.modes`, shared with deployment) and runs an epoch from them."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

import paddle
import paddle.distributed as dist

from .. import cpu_env, interrupts
from ..config import section
from ..data.loader import WorkerSeeder, build_dataloader, train_pipeline
from ..errors import NonFiniteError
from ..output_paths import ensure_directory
from ..serving.modes import classify_images, export_model, infer_transforms
from . import wiring
from .amp import AmpPolicy
from .ema import ModelEMA
from .class_map import use_folder_class_names
from .evaluator import Evaluator
from .front import build_front
from .log import ScalarWriter, init_logger, logger
from .losses import build_loss
from .nonfinite import LossWatch, describe_nonfinite_weights
from .optim import build_lr_schedule, build_optimizer
from .progressive import KNOBS, apply_stage, build_schedule
from .run_checkpoints import RunCheckpoints
from .run_lock import hold_output_folder
from .state import TrainingState
from .trainer import Trainer
from .wiring import MODES, build_model

__all__ = ["Engine", "build_model", "MODES"]


class Engine:
    """Sets up everything a mode needs from the config; `train()`, `eval()`, `infer()`, `export()`.

    Its parts, for tools and tests: `front` (what `Arch` built), `model` (what is trained and saved; what is
    served outside training), `net` (the same, under DataParallel on several processes), `amp`, and in train
    mode `task`, `trainer`, `state`, `checkpoints`, `optimizer`, `schedule`, `ema`; `evaluator` when there is
    an eval set."""

    def __init__(self, config: Dict[str, Any], mode: str = "train"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.config, self.mode = config, mode
        self.glob: Dict[str, Any] = dict(config.get("Global") or {})
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.model_name = section(config, "Arch.name")
        self.output_dir = os.path.join(self.glob.get("output_dir", "./output"), self.model_name)
        ensure_directory(self.output_dir, "Global.output_dir")
        init_logger(os.path.join(self.output_dir, f"{mode}.log"), self.rank)
        use_folder_class_names(config, mode, self.output_dir)  # ImageFolderDataset: its class names name the outputs
        wiring.check_config(config, self.glob, mode)
        self.device = wiring.set_device(self.glob.get("device", "cpu"))
        if self.device == "cpu":
            for note in cpu_env.APPLIED:
                logger.info("[CPU] %s", note)
        if self.world_size > 1 and mode in ("train", "eval"):
            dist.init_parallel_env()
        wiring.seed_everything(self.glob.get("seed"), self.rank)
        self.front = build_front(config, mode, self.world_size, self.device)
        self.model, self.class_num = self.front.model, self.front.class_num
        self.print_step = max(1, int(self.glob.get("print_batch_step", 10)))
        self.seeder = WorkerSeeder(self.glob.get("seed"), self.rank)
        self.amp = AmpPolicy()
        eval_parts = self._eval_parts() if mode in ("train", "eval") else None
        self.eval_loader = eval_parts[0] if eval_parts else None
        if mode == "train":
            self._setup_train()
        elif mode == "eval":
            self.amp = AmpPolicy.from_config(config.get("AMP"), self.device, mode, self.eval_loader is not None)
            self.model = self.amp.decorate_for_evaluation(self.model)
        self.net = paddle.DataParallel(self.model) if self.world_size > 1 and mode in ("train", "eval") else self.model
        self.evaluator = Evaluator(*eval_parts, self.amp, self.world_size, self.print_step) if eval_parts else None
        if mode == "train":
            self._build_trainer()
        if mode in ("train", "eval"):
            interrupts.stop_between_steps()  # a signal stops the loops at their next step, every rank alike

    # --- set-up -------------------------------------------------------------------------------------

    def _eval_parts(self) -> Optional[tuple]:
        """(loader, per-sample loss, metric) of DataLoader.Eval, or None when nothing is evaluated."""
        if self.mode == "train" and not self.glob.get("eval_during_train", True):
            return None
        if section(self.config, "DataLoader.Eval", required=self.mode == "eval") is None:
            return None
        loader = build_dataloader(self.config, "Eval", self.class_num, indexed=True)
        loss = build_loss(section(self.config, "Loss.Eval", required=False) or [{"CELoss": {"weight": 1.0}}],
                          "Loss.Eval", reduction="none")
        return loader, loss, self.front.metric(section(self.config, "Metric.Eval", required=False), "Metric.Eval")

    def _setup_train(self) -> None:
        self.epochs = int(self.glob.get("epochs", 1))
        self.update_freq = max(1, int(self.glob.get("update_freq", 1)))
        self.train_loader = build_dataloader(self.config, "Train", self.class_num, seeder=self.seeder,
                                             unlabeled=self.front.reads_unlabeled)
        self.train_ops, self.batch_ops = train_pipeline(self.train_loader)
        self.progressive = build_schedule(self.glob, self.front.served_name, self.train_ops, self.epochs,
                                          self.front.served)
        if self.progressive is not None:  # fail at start-up, not in a later stage, if an operator is missing
            apply_stage(self.progressive.at(self.epochs), self.train_ops, self.batch_ops, self.front.served)
        self.iters_per_epoch = len(self.train_loader)
        self.steps_per_epoch = -(-self.iters_per_epoch // self.update_freq)
        self.train_loss = self.front.train_loss()
        self.train_metric = self.front.train_metric(self.train_loader)
        optimizer_cfg = section(self.config, "Optimizer")
        self.schedule = build_lr_schedule(section(optimizer_cfg, "lr"), self.epochs, self.steps_per_epoch)
        self.optimizer = build_optimizer(optimizer_cfg, self.model, self.schedule)
        ema_cfg = self.config.get("EMA")
        self.ema = ModelEMA(self.model, float(ema_cfg.get("decay", 0.9999)), bool(ema_cfg.get("decay_warmup", True))) if ema_cfg else None
        self.amp = AmpPolicy.from_config(self.config.get("AMP"), self.device, self.mode, self.eval_loader is not None)
        self.model, self.optimizer = self.amp.decorate_for_training(self.model, self.optimizer)
        self.state = TrainingState()
        self.checkpoints = RunCheckpoints(self.output_dir, self.rank, self.world_size, self.model, self.optimizer,
                                          self.schedule, self.ema, self.amp, self.state, self.front.checkpoint_record())
        self.run_lock = hold_output_folder(self.output_dir, self.rank)  # before recovery touches the folder
        try:
            self.checkpoints.recover(self.output_dir)
            if self.glob.get("checkpoints"):
                self.checkpoints.resume(str(self.glob["checkpoints"]))
        except BaseException:
            self.run_lock.release()
            raise
        self.writer = ScalarWriter(os.path.join(self.output_dir, "vdl") if self.glob.get("use_visualdl") and self.rank == 0 else None)

    def _build_trainer(self) -> None:
        """The training task and loop over the parts `_setup_train` built (after DataParallel wrapping)."""
        self.task = self.front.task(self.model, self.net, self.train_loss, self.train_metric)
        self.trainer = Trainer(self.task, self.train_loader, self.optimizer, self.schedule, self.amp, self.ema,
                               self.state, LossWatch(wiring.nonfinite_patience(self.glob, self.amp.level)), self.seeder,
                               seed=self.glob.get("seed"), epochs=self.epochs, update_freq=self.update_freq,
                               print_step=self.print_step, world_size=self.world_size, writer=self.writer)

    # --- the training record, read through the facade -------------------------------------------------

    @property
    def amp_level(self) -> Optional[str]:
        """"O1" / "O2" while AMP is on (train and eval modes, GPU only), else None."""
        return self.amp.level

    @property
    def start_epoch(self) -> int:
        return self.state.start_epoch

    @property
    def best(self) -> float:
        return self.state.best

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def history(self) -> List[Dict[str, Any]]:
        return self.state.history

    # --- training -----------------------------------------------------------------------------------

    def train(self) -> Dict[str, float]:
        """Train for Global.epochs, evaluating, checkpointing and logging as PaddleClas does; returns the
        last evaluation."""
        last_eval: Dict[str, float] = {}
        try:
            for epoch in range(self.state.start_epoch, self.epochs + 1):
                last_eval = self.run_epoch(epoch).get("eval", last_eval)
        finally:
            self.writer.close()
            self.run_lock.release()
        return last_eval

    def _apply_progressive_stage(self, epoch: int, record: Dict[str, Any]) -> None:
        values = self.progressive.at(epoch)
        apply_stage(values, self.train_ops, self.batch_ops, self.front.served)
        if values.stage != self.state.stage:
            logger.info("[Progressive] %s", values.describe())
            self.state.stage = values.stage
        record["progressive"] = values
        self.writer.add({f"progressive/{k}": getattr(values, k) for k in KNOBS if getattr(values, k) is not None}, epoch)

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        """One epoch of `train()`: progressive stage, training, evaluation when due, checkpoints. Returns
        (and appends to `history`) {"epoch", "train", "train_seconds", "eval", "progressive"}."""
        record: Dict[str, Any] = {"epoch": epoch}
        if self.progressive is not None:
            self._apply_progressive_stage(epoch, record)
        started = time.time()
        record["train"] = self.trainer.train_one_epoch(epoch)
        record["train_seconds"] = time.time() - started
        self.trainer.average_running_stats()
        self.trainer.check_finite_weights(epoch)
        eval_interval = max(1, int(self.glob.get("eval_interval", 1)))
        if self.evaluator is not None and (epoch % eval_interval == 0 or epoch == self.epochs):
            record["eval"] = self._evaluate_and_keep_best(epoch)
        save_interval = int(self.glob.get("save_interval", 1))
        if save_interval > 0 and epoch % save_interval == 0:
            self.checkpoints.save(f"epoch_{epoch}", epoch)
        self.checkpoints.save("latest", epoch)
        self.state.history.append(record)
        return record

    def _evaluate_and_keep_best(self, epoch: int) -> Dict[str, float]:
        """Evaluate the model (and the EMA), saving `best_model` (`best_model_ema`) when top1 improves."""
        result = self.evaluate(self.front.evaluated(self.net), epoch)
        if result["top1"] > self.state.best:
            self.state.best = result["top1"]
            self.checkpoints.save("best_model", epoch, with_training_state=False)
        logger.info("[Eval][Epoch %d][best metric: %.5f]", epoch, self.state.best)
        self.writer.add({"eval_top1": result["top1"]}, epoch)
        if self.ema is not None:
            ema_eval = self.evaluate(self.front.evaluated(self.ema.module), epoch, label="Eval(EMA)")
            if ema_eval["top1"] > self.state.best_ema:
                self.state.best_ema = ema_eval["top1"]
                self.checkpoints.save("best_model_ema", epoch, with_training_state=False, weights=self.ema.state_dict())
            logger.info("[Eval(EMA)][Epoch %d][best metric: %.5f]", epoch, self.state.best_ema)
        return result

    # --- evaluation, inference and export -----------------------------------------------------------

    def evaluate(self, net: paddle.nn.Layer, epoch: int = 0, label: str = "Eval") -> Dict[str, float]:
        """Loss and top-k of `net` over DataLoader.Eval (see `Evaluator.evaluate`)."""
        return self.evaluator.evaluate(net, epoch, label)

    def _check_loaded_weights(self) -> None:
        """tools/eval.py and infer.py refuse weights holding NaN/Inf (a diverged run's), rather than
        printing NaN scores."""
        message = describe_nonfinite_weights(self.model.state_dict(use_hook=False),
                                             f"Global.pretrained_model={self.glob.get('pretrained_model')}")
        if message:
            raise NonFiniteError(message)

    def eval(self) -> Dict[str, float]:
        """tools/eval.py: evaluate `Global.pretrained_model` (or the initial weights) on DataLoader.Eval."""
        self._check_loaded_weights()
        return self.evaluate(self.net, epoch=0)

    def infer_transforms(self) -> List[Any]:
        """The preprocessing of inference and of the export's inference.yml (see `serving.modes.infer_transforms`)."""
        return infer_transforms(self.config)

    def infer(self, json_path: Optional[str] = None) -> List[dict]:
        """tools/infer.py: classify `Infer.infer_imgs` (a file, a folder or a list); prints PaddleClas's
        result lines and, with `json_path`, writes the results as JSON ("-" for stdout)."""
        section(self.config, "Infer")
        self._check_loaded_weights()
        return classify_images(self.model, self.config, self.class_num, json_path)

    def export(self) -> str:
        """tools/export_model.py: Paddle Inference model + inference.yml into Global.save_inference_dir;
        weights holding NaN/Inf are refused, as by eval and infer."""
        self._check_loaded_weights()
        return export_model(self.model, self.front.served_name, self.config, self.class_num)
