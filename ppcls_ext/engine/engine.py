"""The engine behind tools/{train,eval,infer,export_model}.py: a PaddleClas-format config in, a
trained / evaluated / exported model out, on one process or many (`paddle.distributed.launch`)."""
from __future__ import annotations

import contextlib
import difflib
import json
import os
import random
import time
from typing import Any, Dict, List, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from .. import cpu_env, registry
from ..config import ConfigError, boolean, check_sections, check_values, int_list, integer, number, section
from ..data.dataset import DataError
from ..data.device_normalize import batch_normalizer
from ..data.loader import WorkerSeeder, build_dataloader, train_pipeline
from ..data.transforms import build_transforms
from ..models.deploy import deploy_form
from ..output_paths import ensure_directory
from ..weights import (SourceNumerics, load_weights, load_weights_file, numerics_record, read_starting_weights,
                       sha256_value)
from .amp_support import supported_level
from .checkpoint import (cast_to_model_dtypes, load_checkpoint, portable_optimizer_state, recover_checkpoints,
                         restore_optimizer_state, save_checkpoint)
from .class_map import use_folder_class_names
from .ema import ModelEMA
from .export import EXPORT_FORMATS, deploy_transforms, export_inference_model, inference_config
from .log import AverageMeter, ScalarWriter, epoch_line, init_logger, logger, train_line
from .losses import build_loss
from .metrics import RunningMeans, build_metric
from .nonfinite import LossWatch, NonFiniteError, describe_nonfinite_weights, divergence_message, nonfinite_tensors
from .optim import build_lr_schedule, build_optimizer, update_skipped
from .postprocess import Topk
from .predict import classify_files, collect_images, dygraph_runner
from .progressive import KNOBS, apply_stage, build_schedule

MODES = ("train", "eval", "infer", "export")
GLOBAL_KEYS = {"checkpoints", "pretrained_model", "output_dir", "device", "seed", "save_interval", "eval_during_train",
               "eval_interval", "epochs", "print_batch_step", "use_visualdl", "image_shape", "save_inference_dir",
               "update_freq", "infer_add_softmax", "train_mode", "progressive", "export_deploy_form",
               "nonfinite_loss_patience", "export_format", "pretrained_model_sha256"}
# PaddleClas keys accepted in upstream configs but without effect here (logged)
IGNORED_GLOBAL_KEYS = {"to_static": "dygraph training is used", "use_dali": "DALI is not supported; paddle.io is used",
                       "use_multilabel": "multi-label training is not supported", "profiler_options": "no profiler"}
# the values of numeric and boolean keys, checked at start-up in every mode (a string such as 'flase' is
# not taken as true, 0 epochs is not a run that silently does nothing)
GLOBAL_VALUES = {"epochs": integer(1), "eval_interval": integer(1), "print_batch_step": integer(1),
                 "update_freq": integer(1), "save_interval": integer(),  # <= 0: no epoch_N checkpoints, as in PaddleClas
                 "seed": integer(0, 2**31 - 1, optional=True), "image_shape": int_list(3),
                 "eval_during_train": boolean, "use_visualdl": boolean, "infer_add_softmax": boolean,
                 "export_deploy_form": boolean, "nonfinite_loss_patience": integer(1, optional=True),
                 "pretrained_model_sha256": sha256_value}
# numeric values of the training sections, by section path (a string would fail mid-run, or inside Paddle)
TRAINING_VALUES = {"Optimizer": {"momentum": number(0), "weight_decay": number(0, optional=True),
                                 "clip_norm": number(0, optional=True)},
                   "Optimizer.lr": {"learning_rate": number(0), "warmup_epoch": number(0), "warmup_start_lr": number(0),
                                    "eta_min": number(0), "gamma": number(0), "step_size": number(0)},
                   "Optimizer.regularizer": {"coeff": number(0)}, "EMA": {"decay": number(0, 1)}}
SECTIONS = ("Global", "Arch", "Loss", "Optimizer", "DataLoader", "Infer", "Metric", "EMA", "AMP")
# PaddleClas sections for features this package does not have (logged)
IGNORED_SECTIONS = {"Slim": "quantization and pruning (PaddleSlim) are not supported",
                    "SSL": "semi-supervised training is not supported", "UnLabelLoss": "semi-supervised training is not supported",
                    "MLDecoder": "the ML-Decoder head is not supported",
                    "Hpi": "high-performance inference settings belong to PaddleClas's deploy tools"}
_RANDOM_WEIGHTS_VERB = {"eval": "evaluating", "infer": "classifying with", "export": "exporting"}


def build_model(arch: Dict[str, Any], source_numerics: Optional[SourceNumerics] = None) -> paddle.nn.Layer:
    """The model of an `Arch` section (PaddleClas keywords accepted), with config-level errors;
    `source_numerics`: those of the weights it will be loaded with (see `registry.create_model`)."""
    options = dict(arch)
    name = options.pop("name", None)
    options.pop("use_sync_bn", None)
    if name is None:
        raise ConfigError("missing 'Arch.name' (e.g. MicroNet_M3)")
    returned = [key for key in ("return_patterns", "return_stages") if options.get(key)]
    if returned:
        raise ConfigError(f"Arch.{returned[0]}: the model would return a dict of features, which these tools do not "
                          f"train or evaluate; use it from Python (model.update_res) or in PaddleClas's own tools")
    try:
        options = registry.paddleclas_arch_options(name, options)
        return registry.create_model(name, source_numerics=source_numerics, **options)
    except registry.UnknownModelError as error:
        raise ConfigError(f"Arch.name: {error}") from error
    except (TypeError, ValueError) as error:
        raise ConfigError(f"Arch: {error}") from error


def _set_device(requested: str) -> str:
    """`Global.device`; a GPU request on a build or machine without CUDA falls back to CPU, logged."""
    requested = str(requested or "cpu").lower()
    if requested not in ("cpu", "gpu"):
        raise ConfigError(f"Global.device must be 'cpu' or 'gpu', got {requested!r}")
    if requested == "gpu" and not (paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0):
        logger.warning("Global.device is gpu, but this Paddle build or machine has no CUDA GPU: running on CPU")
        requested = "cpu"
    paddle.set_device(requested)
    return requested


def _seed_everything(seed: Optional[int], rank: int) -> None:
    if seed is None:
        return
    paddle.seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


class Engine:
    """Sets up everything a mode needs from the config; `train()`, `eval()`, `infer()`, `export()`."""

    amp_level: Optional[str] = None  # "O1" / "O2" while AMP is on (train and eval modes, GPU only)
    amp_eval = False  # evaluation runs under auto_cast
    scaler: Optional[paddle.amp.GradScaler] = None

    def __init__(self, config: Dict[str, Any], mode: str = "train"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.config, self.mode = config, mode
        self.glob: Dict[str, Any] = dict(config.get("Global") or {})
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        arch = section(config, "Arch")
        self.model_name = section(arch, "name")
        check_values(arch, {"class_num": integer(1)}, "Arch")
        self.class_num = int(arch.get("class_num", 1000))
        self.output_dir = os.path.join(self.glob.get("output_dir", "./output"), self.model_name)
        ensure_directory(self.output_dir, "Global.output_dir")
        init_logger(os.path.join(self.output_dir, f"{mode}.log"), self.rank)
        use_folder_class_names(config, mode, self.output_dir)  # ImageFolderDataset: its class names name the outputs
        self._check_config()
        self.device = _set_device(self.glob.get("device", "cpu"))
        if self.device == "cpu":
            for note in cpu_env.APPLIED:
                logger.info("[CPU] %s", note)
        if self.world_size > 1 and mode in ("train", "eval"):
            dist.init_parallel_env()
        _seed_everything(self.glob.get("seed"), self.rank)
        # weights are read before the model is built: their numerics (padding, BN epsilon) are build options
        start = read_starting_weights(self.glob.get("pretrained_model"),
                                      self.glob.get("checkpoints") if mode == "train" else None,
                                      self.glob.get("pretrained_model_sha256"))
        self.model = build_model(arch, start.numerics)
        if arch.get("use_sync_bn") and self.world_size > 1:
            if self.device == "gpu":
                self.model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                logger.warning("Arch.use_sync_bn needs GPUs; ignored on CPU")
        if start.pretrained is not None:  # only training may replace a classifier of another class count
            load_weights_file(self.model, start.pretrained, allow_classifier_mismatch=mode == "train")
        elif mode != "train" and not arch.get("pretrained"):
            logger.warning("Global.pretrained_model is not set: %s a randomly initialised model (its outputs mean "
                           "nothing); give -o Global.pretrained_model=PATH", _RANDOM_WEIGHTS_VERB[mode])
        self.print_step = max(1, int(self.glob.get("print_batch_step", 10)))
        self.seeder = WorkerSeeder(self.glob.get("seed"), self.rank)
        self.eval_loader = None
        if mode == "train" or mode == "eval":
            self._setup_eval()
        if mode == "train":
            self._setup_train()
        elif mode == "eval":
            self._setup_amp()
        self.net = paddle.DataParallel(self.model) if self.world_size > 1 and mode in ("train", "eval") else self.model

    # --- set-up -------------------------------------------------------------------------------------

    def _check_config(self) -> None:
        """Sections, Global keys and values, Infer.batch_size; in export mode, that the export can be written."""
        check_sections(self.config, SECTIONS, IGNORED_SECTIONS)
        self._check_global_keys()
        check_values(self.glob, GLOBAL_VALUES, "Global")
        check_values(self.config.get("Infer") or {}, {"batch_size": integer(1)}, "Infer")
        for path, checks in TRAINING_VALUES.items():
            check_values(section(self.config, path, required=False), checks, path)
        if self.mode == "export":
            ensure_directory(os.path.dirname(os.path.abspath(self.glob.get("save_inference_dir", "./inference"))),
                             "Global.save_inference_dir")

    def _check_global_keys(self) -> None:
        for key, value in self.glob.items():
            if key in IGNORED_GLOBAL_KEYS and value not in (None, False):
                logger.warning("Global.%s=%s is ignored: %s", key, value, IGNORED_GLOBAL_KEYS[key])
            elif key not in GLOBAL_KEYS and key not in IGNORED_GLOBAL_KEYS:
                close = difflib.get_close_matches(key, sorted(GLOBAL_KEYS), n=1)
                logger.warning("Global.%s is not a known key%s; it has no effect", key,
                               f" (did you mean {close[0]}?)" if close else "")

    def _setup_eval(self) -> None:
        if self.mode == "train" and not self.glob.get("eval_during_train", True):
            return
        if section(self.config, "DataLoader.Eval", required=self.mode == "eval") is None:
            return
        self.eval_loader = build_dataloader(self.config, "Eval", self.class_num, indexed=True)
        self.eval_loss = build_loss(section(self.config, "Loss.Eval", required=False) or [{"CELoss": {"weight": 1.0}}],
                                    "Loss.Eval", reduction="none")
        self.eval_metric = build_metric(section(self.config, "Metric.Eval", required=False), "Metric.Eval")

    def _setup_train(self) -> None:
        self.epochs = int(self.glob.get("epochs", 1))
        self.update_freq = max(1, int(self.glob.get("update_freq", 1)))
        self.train_loader = build_dataloader(self.config, "Train", self.class_num, seeder=self.seeder)
        self.train_ops, self.batch_ops = train_pipeline(self.train_loader)
        self.progressive = build_schedule(self.glob, self.model_name, self.train_ops, self.epochs, self.model)
        if self.progressive is not None:  # fail at start-up, not in a later stage, if an operator is missing
            apply_stage(self.progressive.at(self.epochs), self.train_ops, self.batch_ops, self.model)
        self.iters_per_epoch = len(self.train_loader)
        self.steps_per_epoch = -(-self.iters_per_epoch // self.update_freq)
        self.train_loss = build_loss(section(self.config, "Loss.Train"), "Loss.Train")
        self.train_metric = build_metric(section(self.config, "Metric.Train", required=False), "Metric.Train")
        optimizer_cfg = section(self.config, "Optimizer")
        self.schedule = build_lr_schedule(section(optimizer_cfg, "lr"), self.epochs, self.steps_per_epoch)
        self.optimizer = build_optimizer(optimizer_cfg, self.model, self.schedule)
        ema_cfg = self.config.get("EMA")
        self.ema = ModelEMA(self.model, float(ema_cfg.get("decay", 0.9999)), bool(ema_cfg.get("decay_warmup", True))) if ema_cfg else None
        self._setup_amp()
        self.loss_watch = LossWatch(self._nonfinite_patience())
        self.start_epoch, self.best, self.best_ema, self.global_step = 1, 0.0, 0.0, 0
        # per epoch: {"epoch", "train": {...}, "train_seconds", "eval": {...}, "progressive": StageValues}
        self.history: List[Dict[str, Any]] = []
        self._stage: Optional[int] = None  # the progressive stage last applied (a change is logged)
        self._recover_checkpoints(self.output_dir)
        if self.glob.get("checkpoints"):
            self._resume(str(self.glob["checkpoints"]))
        self.writer = ScalarWriter(os.path.join(self.output_dir, "vdl") if self.glob.get("use_visualdl") and self.rank == 0 else None)

    def _setup_amp(self) -> None:
        """The `AMP` section as PaddleClas reads it, for training and tools/eval.py: `level` O1/O2, loss
        scaling, and `use_fp16_test` (evaluation under auto_cast). O2 keeps float16 weights, which run only
        under auto_cast: training at O2 therefore evaluates under auto_cast whatever `use_fp16_test` says,
        and tools/eval.py with `use_fp16_test` at O2 decorates the model as training did (both as
        PaddleClas)."""
        amp = self.config.get("AMP") or {}
        level = str(amp.get("level", "O1")).upper() if amp and amp.get("use_amp", True) else None
        if level not in (None, "O1", "O2"):
            raise ConfigError(f"AMP.level must be O1 or O2, got {amp.get('level')!r}")
        if level and self.device != "gpu":
            logger.warning("AMP (mixed precision) needs a GPU; %s in float32 on CPU",
                           "training" if self.mode == "train" else "evaluating")
            level = None
        self.amp_level = level = supported_level(level, self.device)
        fp16_test = bool(amp.get("use_fp16_test", False))
        self.amp_eval = bool(level) and (fp16_test or (self.mode == "train" and level == "O2"))
        if self.amp_eval and not fp16_test and self.eval_loader is not None:
            logger.info("AMP.level O2 trains float16 weights: evaluation runs under auto_cast (AMP.use_fp16_test "
                        "is forced on, as in PaddleClas)")
        if level and self.mode == "train":
            self.scaler = paddle.amp.GradScaler(init_loss_scaling=float(amp.get("scale_loss", 65536.0)),
                                                use_dynamic_loss_scaling=bool(amp.get("use_dynamic_loss_scaling", True)))
            if level == "O2":
                self.model, self.optimizer = paddle.amp.decorate(self.model, self.optimizer, level="O2", save_dtype="float32")
        elif level == "O2" and self.amp_eval:
            self.model = paddle.amp.decorate(self.model, level="O2", save_dtype="float32")

    def _autocast(self, enabled: bool):
        """auto_cast at the configured AMP level when `enabled` and AMP is on, else nothing."""
        return paddle.amp.auto_cast(enable=True, level=self.amp_level) if enabled and self.amp_level else contextlib.nullcontext()

    def _nonfinite_patience(self) -> int:
        """`Global.nonfinite_loss_patience`: how many consecutive iterations with a NaN/Inf loss stop training;
        1 by default, 10 under AMP (whose loss scaler skips the steps of batches that overflow)."""
        value = self.glob.get("nonfinite_loss_patience")  # checked at start-up (GLOBAL_VALUES)
        return (10 if self.amp_level else 1) if value is None else value

    def _recover_checkpoints(self, directory: str) -> None:
        """Finish or delete the checkpoint saves a killed run left in `directory` (rank 0; the others wait)."""
        if self.rank == 0:
            for done in recover_checkpoints(directory):
                logger.info("[Checkpoint] %s", done)
        if self.world_size > 1:
            dist.barrier()

    def _resume(self, prefix: str) -> None:
        """Continue from checkpoint `prefix`: weights (cast to the model's dtypes, float16 under AMP O2),
        optimizer, schedule, EMA, loss scaler and counters, all from one save or a one-line error."""
        self._recover_checkpoints(os.path.dirname(os.path.abspath(prefix)))
        checkpoint = load_checkpoint(prefix, with_ema=self.ema is not None)
        load_weights(self.model, cast_to_model_dtypes(checkpoint["model"], self.model), source=prefix + ".pdparams")
        self.optimizer.set_state_dict(restore_optimizer_state(checkpoint["optimizer"], self.model))
        states = checkpoint["states"]
        self.schedule.last_epoch = int(states.get("step", self.schedule.last_epoch))
        self.schedule.last_lr = self.schedule.get_lr()
        if self.ema is not None:
            self.ema.set_state_dict(checkpoint["ema"], states.get("ema_updates", 0))
        if self.scaler is not None:
            self._restore_scaler(states.get("amp_scaler"))
        self.start_epoch = int(states["epoch"]) + 1
        self.best, self.best_ema = float(states.get("best_metric", 0.0)), float(states.get("best_metric_ema", 0.0))
        self.global_step = int(states.get("global_step", 0))
        logger.info("resumed from %s: continuing at epoch %d (best top1 %.5f)", prefix, self.start_epoch, self.best)

    def _restore_scaler(self, saved: Optional[Dict[str, Any]]) -> None:
        """The loss scale and its counters from the checkpoint; the ratios and intervals stay as configured."""
        if not self.scaler.is_enable():
            return
        if not saved:
            logger.info("[AMP] the checkpoint has no loss-scaler state: starting at the configured scale")
            return
        configured = self.scaler.state_dict()
        if not configured["use_dynamic_loss_scaling"]:
            return  # a fixed scale is the configured one
        keep = ("incr_ratio", "decr_ratio", "incr_every_n_steps", "decr_every_n_nan_or_inf", "use_dynamic_loss_scaling")
        self.scaler.load_state_dict({**saved, **{key: configured[key] for key in keep}})
        logger.info("[AMP] loss scale %g restored from the checkpoint", float(np.asarray(saved["scale"]).reshape(-1)[0]))

    # --- training -----------------------------------------------------------------------------------

    def train(self) -> Dict[str, float]:
        """Train for Global.epochs, evaluating, checkpointing and logging as PaddleClas does; returns the
        last evaluation."""
        last_eval: Dict[str, float] = {}
        for epoch in range(self.start_epoch, self.epochs + 1):
            last_eval = self.run_epoch(epoch).get("eval", last_eval)
        self.writer.close()
        return last_eval

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        """One epoch of `train()`: progressive stage, training, evaluation when due, checkpoints. Returns
        (and appends to `history`) {"epoch", "train", "train_seconds", "eval", "progressive"}."""
        record: Dict[str, Any] = {"epoch": epoch}
        if self.progressive is not None:
            values = self.progressive.at(epoch)
            apply_stage(values, self.train_ops, self.batch_ops, self.model)
            if values.stage != self._stage:
                logger.info("[Progressive] %s", values.describe())
                self._stage = values.stage
            record["progressive"] = values
            self.writer.add({f"progressive/{k}": getattr(values, k) for k in KNOBS if getattr(values, k) is not None}, epoch)
        started = time.time()
        record["train"] = self._train_epoch(epoch)
        record["train_seconds"] = time.time() - started
        self._average_running_stats()
        self._check_finite_weights(epoch)
        eval_interval = max(1, int(self.glob.get("eval_interval", 1)))
        if self.eval_loader is not None and (epoch % eval_interval == 0 or epoch == self.epochs):
            record["eval"] = self.evaluate(self.net, epoch)
            if record["eval"]["top1"] > self.best:
                self.best = record["eval"]["top1"]
                self._save("best_model", epoch, with_training_state=False)
            logger.info("[Eval][Epoch %d][best metric: %.5f]", epoch, self.best)
            self.writer.add({"eval_top1": record["eval"]["top1"]}, epoch)
            if self.ema is not None:
                ema_eval = self.evaluate(self.ema.module, epoch, label="Eval(EMA)")
                if ema_eval["top1"] > self.best_ema:
                    self.best_ema = ema_eval["top1"]
                    self._save("best_model_ema", epoch, with_training_state=False, weights=self.ema.state_dict())
                logger.info("[Eval(EMA)][Epoch %d][best metric: %.5f]", epoch, self.best_ema)
        save_interval = int(self.glob.get("save_interval", 1))
        if save_interval > 0 and epoch % save_interval == 0:
            self._save(f"epoch_{epoch}", epoch)
        self._save("latest", epoch)
        self.history.append(record)
        return record

    def _train_epoch(self, epoch: int) -> Dict[str, float]:
        """One pass over the training data. Losses and accuracies are summed on the device and read back
        (averaged over ranks) only for the log lines, where the non-finite loss watch is read too: on a GPU
        the other iterations never wait for the device."""
        self.net.train()
        self.seeder.epoch = epoch
        self.train_loader.batch_sampler.set_epoch(epoch)
        if self.train_loader.num_workers == 0:
            self.seeder()
        if self.glob.get("seed") is not None:
            paddle.seed(self.seeder.derive(stream=1))  # dropout and drop-path: reproducible per epoch
        means = RunningMeans()
        self.loss_watch.reset()
        learning_rates: List[float] = []  # per iteration, to name the one a divergence began at
        times = {"batch_cost": AverageMeter(), "reader_cost": AverageMeter()}
        total = self.iters_per_epoch
        tic = time.time()
        for iteration, (images, labels) in enumerate(self.train_loader):
            images = batch_normalizer(self.train_loader)(images)  # loader.normalize_on_device: uint8 batches
            if iteration == 5:
                for meter in times.values():
                    meter.reset()
            times["reader_cost"].update(time.time() - tic)
            batch_size = images.shape[0]
            boundary = (iteration + 1) % self.update_freq == 0 or iteration + 1 == total
            sync = contextlib.nullcontext() if boundary or self.world_size == 1 else self.net.no_sync()
            with sync:
                with self._autocast(True):
                    logits = self.net(images)
                    losses = self.train_loss(logits, labels)
                loss = losses["loss"] / self.update_freq
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            learning_rates.append(self.schedule.get_lr())
            if boundary:
                self._optimizer_step()
            self.loss_watch.update(losses["loss"])
            means.add({**self.train_metric(logits, labels), **losses}, batch_size)
            times["batch_cost"].update(time.time() - tic)
            if iteration % self.print_step == 0:
                values = self._read_train_means(means, epoch, learning_rates)
                eta = ((self.epochs - epoch + 1) * total - iteration) * times["batch_cost"].avg
                logger.info(train_line(epoch, self.epochs, iteration, total, self.schedule.name, self.schedule.get_lr(),
                                       values, times, batch_size, eta))
                self.writer.add({"lr": self.schedule.get_lr(), **{f"train_{k}": v for k, v in values.items()}}, self.global_step)
            tic = time.time()
        values = self._read_train_means(means, epoch, learning_rates)
        logger.info(epoch_line("Train", epoch, self.epochs, values))
        return values

    def _read_train_means(self, means: RunningMeans, epoch: int, learning_rates: List[float]) -> Dict[str, float]:
        """The epoch's running means over all ranks, after checking the loss watch: a diverged run stops
        here, naming the iteration where the loss first went non-finite."""
        tripped = self.loss_watch.tripped(self.world_size)
        if tripped is not None:
            iteration, value = tripped
            amp = None
            if self.scaler is not None:
                scale = self.scaler.state_dict().get("scale")
                amp = {"level": self.amp_level, "scale": float(np.ravel(scale)[0]) if scale is not None else float("nan")}
            lr_key = "Optimizer.lr." + ("values" if self.schedule.name == "Piecewise" else "learning_rate")
            raise NonFiniteError(divergence_message(epoch, iteration, value, self.loss_watch.patience,
                                                    learning_rates[iteration], lr_key, amp, self._kept_checkpoints(epoch)))
        return means.read(self.world_size)

    def _check_finite_weights(self, epoch: int) -> None:
        """Before anything is evaluated or saved: weights and running statistics must be finite."""
        models = [("model", self.model)] + ([("EMA", self.ema.module)] if self.ema is not None else [])
        for name, model in models:
            state = model.state_dict(use_hook=False)
            bad = nonfinite_tensors(state)
            if bad:
                raise NonFiniteError(f"training stopped after epoch {epoch}: {len(bad)} of {len(state)} {name} tensors hold "
                                     f"NaN or Inf (e.g. {bad[0]}); the learning rate is likely too high; "
                                     f"{self._kept_checkpoints(epoch)}")

    def _kept_checkpoints(self, epoch: int) -> str:
        """What a run stopped in `epoch` leaves: checkpoints are written at the end of each epoch."""
        if epoch > 1:
            return f"nothing from epoch {epoch} was saved; the checkpoints up to epoch {epoch - 1} are kept"
        return "no checkpoint was written"

    def _average_running_stats(self) -> None:
        """Average the model's non-trainable state (BN running mean/variance, which Paddle keeps as frozen
        parameters), and the same entries of the EMA, over ranks: each rank tracked only its own shard,
        and the model evaluated and saved must be one model. The tensors themselves are averaged: under
        AMP O2, `state_dict()`'s hooks would hand out float32 copies."""
        if self.world_size == 1:
            return
        state = self.model.state_dict(use_hook=False)
        keys = [key for key, tensor in state.items() if paddle.is_floating_point(tensor) and tensor.stop_gradient]
        models = [self.model] + ([self.ema.module] if self.ema is not None else [])
        with paddle.no_grad():
            for model in models:
                tensors = model.state_dict(use_hook=False)
                for key in keys:
                    dist.all_reduce(tensors[key])
                    tensors[key].set_value(tensors[key] / self.world_size)

    def _optimizer_step(self) -> bool:
        """Apply the accumulated gradients; returns whether the update was applied. A step that the loss
        scaler skipped (inf/NaN gradients) leaves the LR schedule, the step count and the EMA as they were."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            applied = not update_skipped(self.scaler)
            self.scaler.update()
        else:
            self.optimizer.step()
            applied = True
        self.optimizer.clear_grad()
        if applied:
            self.schedule.step()
            self.global_step += 1
            if self.ema is not None:
                self.ema.update(self.model)
        return applied

    def _save(self, prefix: str, epoch: int, with_training_state: bool = True, weights=None) -> None:
        """Checkpoint `prefix` as one unit (rank 0): weights (`weights` or the model's), states and, with
        the training state, optimizer, EMA and loss scaler to resume from."""
        if self.rank != 0:
            return
        path = os.path.join(self.output_dir, prefix)
        record = numerics_record(self.model)  # in every file that a later run builds its model from
        states = {"epoch": epoch, "metric": self.best, "best_metric": self.best, "best_metric_ema": self.best_ema,
                  "global_step": self.global_step, "step": self.schedule.last_epoch,
                  "ema_updates": self.ema.updates if self.ema else 0, **record}
        if with_training_state and self.scaler is not None and self.scaler.is_enable():
            states["amp_scaler"] = self.scaler.state_dict()
        save_checkpoint(
            path,
            {**(weights if weights is not None else self.model.state_dict()), **record},
            states,
            optimizer_state=portable_optimizer_state(self.optimizer.state_dict(), self.model) if with_training_state else None,
            ema_state={**self.ema.state_dict(), **record} if (with_training_state and self.ema is not None) else None,
        )
        logger.info("saved %s to %s", prefix, path)

    # --- evaluation ---------------------------------------------------------------------------------

    @paddle.no_grad()
    def evaluate(self, net: paddle.nn.Layer, epoch: int = 0, label: str = "Eval") -> Dict[str, float]:
        """Loss and top-k over the whole eval set, each image counted once across ranks (the sampler's
        padding is dropped by sample index). Per-sample results stay on the device until the end. Model
        outputs holding NaN/Inf stop with an error instead of scoring them."""
        net.eval()
        rows = []  # per batch: [N, 1 + losses + top-k + 1] = sample index, losses, hits, output is finite
        times = {"batch_cost": AverageMeter(), "reader_cost": AverageMeter()}
        tic = time.time()
        try:
            for iteration, (images, labels, index) in enumerate(self.eval_loader):
                images = batch_normalizer(self.eval_loader)(images)  # loader.normalize_on_device: uint8 batches
                times["reader_cost"].update(time.time() - tic)
                loss_names = self._evaluate_batch(net, images, labels, index, rows)
                times["batch_cost"].update(time.time() - tic)
                if iteration % self.print_step == 0:
                    logger.info("[%s][Epoch %d][Iter: %d/%d]batch_cost: %.5fs, reader_cost: %.5f, ips: %.5f images/sec",
                                label, epoch, iteration, len(self.eval_loader), times["batch_cost"].avg,
                                times["reader_cost"].avg, images.shape[0] / max(times["batch_cost"].avg, 1e-12))
                tic = time.time()
        except DataError as error:
            self._stop_on_any_rank_failure(str(error))
            raise
        self._stop_on_any_rank_failure(None)
        table = self._gather(paddle.concat(rows))
        _, first = np.unique(table[:, 0].astype("int64"), return_index=True)
        table = table[first, 1:]
        broken = int((table[:, -1] == 0).sum())
        if broken:
            raise NonFiniteError(f"[{label}] epoch {epoch}: the model's outputs hold NaN or Inf for {broken} of {len(first)} "
                                 f"images, so no scores are reported" + ("; float16 evaluation may overflow: try "
                                 "AMP.use_fp16_test: False" if self.amp_eval and self.amp_level == "O1" else ""))
        names = loss_names + list(self.eval_metric.names())
        result = {name: float(v) for name, v in zip(names, table[:, :-1].astype("float32").mean(axis=0))}
        logger.info(epoch_line(label, epoch, None, result) + f", images: {len(first)}")
        return result

    def _evaluate_batch(self, net: paddle.nn.Layer, images, labels, index, rows: List[paddle.Tensor]) -> List[str]:
        """Append one batch's rows (sample index, per-sample losses, top-k hits, whether the output is
        finite) to `rows`; returns the loss names."""
        with self._autocast(self.amp_eval):
            logits = net(images).astype("float32")
        per_sample = self.eval_loss(logits, labels)
        rows.append(paddle.concat([index.reshape([-1, 1]).astype("float64")]
                                  + [per_sample[k].reshape([-1, 1]).astype("float64") for k in per_sample]
                                  + [self.eval_metric.hits(logits, labels).astype("float64"),
                                     paddle.isfinite(logits).all(axis=-1, keepdim=True).astype("float64")], axis=1))
        return list(per_sample)

    def _stop_on_any_rank_failure(self, message: Optional[str]) -> None:
        """Distributed evaluation: every rank says whether it could read its share of the data (one
        collective per evaluation, not per batch), so that a rank's unreadable image stops every process
        with the same one-line error instead of leaving the others waiting in the gather until gloo/NCCL
        times out."""
        if self.world_size == 1:
            return
        messages: List[Optional[str]] = []
        dist.all_gather_object(messages, message)
        failed = [(rank, text) for rank, text in enumerate(messages) if text]
        if failed and message is None:
            raise DataError(f"{failed[0][1]} (read by process {failed[0][0]})")

    def _gather(self, rows: paddle.Tensor) -> np.ndarray:
        """Every rank's rows, concatenated, on the host; ranks hold equally many samples (padded sampler)."""
        if self.world_size > 1:
            gathered: List[paddle.Tensor] = []
            dist.all_gather(gathered, rows)
            rows = paddle.concat(gathered)
        return rows.numpy()

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

    # --- inference and export -----------------------------------------------------------------------

    def _infer_section(self) -> Dict[str, Any]:
        return section(self.config, "Infer")

    def _infer_transforms(self) -> List[Any]:
        """Infer.transforms (PaddleClas's choice), else the evaluation transforms in CHW layout. A
        difference between the two is logged: the deployed model would not see what was evaluated."""
        infer = (self.config.get("Infer") or {}).get("transforms")
        evaluated = section(self.config, "DataLoader.Eval.dataset.transform_ops", required=not infer)
        if infer and evaluated and deploy_transforms(infer) != deploy_transforms(evaluated):
            logger.warning("Infer.transforms differ from DataLoader.Eval.dataset.transform_ops; "
                           "inference uses Infer.transforms")
        return list(infer) if infer else list(evaluated) + [{"ToCHWImage": None}]

    def _postprocess(self) -> Topk:
        post = dict((self.config.get("Infer") or {}).get("PostProcess") or {})
        name = post.pop("name", "Topk")
        if name != "Topk":
            raise ConfigError(f"Infer.PostProcess.name: unknown post-process {name!r}; valid: Topk")
        topk = Topk(post.get("topk", 5), post.get("class_id_map_file", "ppcls/utils/imagenet1k_label_list.txt"))
        named = set(topk.label_names or ())
        if named and named != set(range(self.class_num)):
            logger.warning("Infer.PostProcess.class_id_map_file names %d classes (ids %d-%d), the model has %d "
                           "(Arch.class_num): is it this model's label list?", len(named), min(named), max(named),
                           self.class_num)
        return topk

    def infer(self, json_path: Optional[str] = None) -> List[dict]:
        """tools/infer.py: classify `Infer.infer_imgs` (a file, a folder or a list); prints PaddleClas's
        result lines and, with `json_path`, writes the results as JSON ("-" for stdout)."""
        infer = self._infer_section()
        self._check_loaded_weights()
        files = collect_images(section(infer, "infer_imgs"))
        transform = build_transforms(self._infer_transforms(), "Infer.transforms")
        results = []
        for result in classify_files(dygraph_runner(self.model), files, transform, self._postprocess(),
                                     int(infer.get("batch_size", 10))):
            results.append(result)
            if json_path != "-":
                print(result, flush=True)
        if json_path == "-":
            print(json.dumps(results, ensure_ascii=False, indent=2))
        elif json_path:
            with open(json_path, "w", encoding="utf-8") as f:
                json.dump(results, f, ensure_ascii=False, indent=2)
        return results

    def export(self) -> str:
        """tools/export_model.py: Paddle Inference model + inference.yml into Global.save_inference_dir."""
        export_format = str(self.glob.get("export_format", "pir"))
        if export_format not in EXPORT_FORMATS:
            raise ConfigError(f"Global.export_format: must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}")
        save_dir = self.glob.get("save_inference_dir", "./inference")
        post = self._postprocess()
        names = [post.label_names.get(i, str(i)) for i in range(self.class_num)] if post.label_names else None
        config = registry.get_model_config(self.model_name)
        image_shape = self.glob.get("image_shape") or [3, config.eval_size, config.eval_size]
        softmax = bool(self.glob.get("infer_add_softmax", True))
        description = inference_config(self.model_name, deploy_transforms(self._infer_transforms()), post.topk, names,
                                       image_shape, softmax)
        folded = bool(self.glob.get("export_deploy_form", True))
        model = deploy_form(self.model) if folded else self.model
        path = export_inference_model(model, save_dir, description, softmax=softmax, export_format=export_format)
        logger.info("exported %s to %s (%s format)%s", self.model_name, path, export_format,
                    " (deploy form: batch norms folded)" if folded else "")
        return path
