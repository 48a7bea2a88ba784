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
from ..config import ConfigError, section
from ..data.device_normalize import batch_normalizer
from ..data.loader import WorkerSeeder, build_dataloader, train_pipeline
from ..data.transforms import build_transforms
from ..models.deploy import deploy_form
from ..weights import load_pretrained, load_weights
from .checkpoint import load_training_checkpoint, portable_optimizer_state, restore_optimizer_state, save_checkpoint
from .ema import ModelEMA
from .export import deploy_transforms, export_inference_model, inference_config
from .log import AverageMeter, ScalarWriter, epoch_line, init_logger, logger, train_line
from .losses import build_loss
from .metrics import build_metric
from .optim import build_lr_schedule, build_optimizer
from .postprocess import Topk
from .predict import classify_files, collect_images, dygraph_runner
from .progressive import KNOBS, apply_stage, build_schedule

MODES = ("train", "eval", "infer", "export")
GLOBAL_KEYS = {"checkpoints", "pretrained_model", "output_dir", "device", "seed", "save_interval", "eval_during_train",
               "eval_interval", "epochs", "print_batch_step", "use_visualdl", "image_shape", "save_inference_dir",
               "update_freq", "infer_add_softmax", "train_mode", "progressive", "export_deploy_form"}
# PaddleClas keys accepted in upstream configs but without effect here (logged)
IGNORED_GLOBAL_KEYS = {"to_static": "dygraph training is used", "use_dali": "DALI is not supported; paddle.io is used",
                       "use_multilabel": "multi-label training is not supported", "profiler_options": "no profiler"}


def build_model(arch: Dict[str, Any]) -> paddle.nn.Layer:
    """The model of an `Arch` section (PaddleClas keywords accepted), with config-level errors."""
    options = dict(arch)
    name = options.pop("name", None)
    options.pop("use_sync_bn", None)
    if name is None:
        raise ConfigError("missing 'Arch.name' (e.g. MicroNet_M3)")
    try:
        return registry.create_model(name, **registry.paddleclas_arch_options(name, options))
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

    def __init__(self, config: Dict[str, Any], mode: str = "train"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.config, self.mode = config, mode
        self.glob: Dict[str, Any] = dict(config.get("Global") or {})
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        arch = section(config, "Arch")
        self.model_name = section(arch, "name")
        self.class_num = int(arch.get("class_num", 1000))
        self.output_dir = os.path.join(self.glob.get("output_dir", "./output"), self.model_name)
        init_logger(os.path.join(self.output_dir, f"{mode}.log"), self.rank)
        self._check_global_keys()
        self.device = _set_device(self.glob.get("device", "cpu"))
        if self.device == "cpu":
            for note in cpu_env.APPLIED:
                logger.info("[CPU] %s", note)
        if self.world_size > 1 and mode in ("train", "eval"):
            dist.init_parallel_env()
        _seed_everything(self.glob.get("seed"), self.rank)
        self.model = build_model(arch)
        if arch.get("use_sync_bn") and self.world_size > 1:
            if self.device == "gpu":
                self.model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                logger.warning("Arch.use_sync_bn needs GPUs; ignored on CPU")
        if self.glob.get("pretrained_model"):
            load_pretrained(self.model, self.glob["pretrained_model"])
        self.print_step = max(1, int(self.glob.get("print_batch_step", 10)))
        self.seeder = WorkerSeeder(self.glob.get("seed"), self.rank)
        self.eval_loader = None
        if mode == "train" or mode == "eval":
            self._setup_eval()
        if mode == "train":
            self._setup_train()
        self.net = paddle.DataParallel(self.model) if self.world_size > 1 and mode in ("train", "eval") else self.model

    # --- set-up -------------------------------------------------------------------------------------

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
        self.progressive = build_schedule(self.glob, self.model_name, self.train_ops, self.epochs)
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
        self.start_epoch, self.best, self.best_ema, self.global_step = 1, 0.0, 0.0, 0
        # per epoch: {"epoch", "train": {...}, "train_seconds", "eval": {...}, "progressive": StageValues}
        self.history: List[Dict[str, Any]] = []
        self._stage: Optional[int] = None  # the progressive stage last applied (a change is logged)
        if self.glob.get("checkpoints"):
            self._resume(str(self.glob["checkpoints"]))
        self.writer = ScalarWriter(os.path.join(self.output_dir, "vdl") if self.glob.get("use_visualdl") and self.rank == 0 else None)

    def _setup_amp(self) -> None:
        amp = self.config.get("AMP") or {}
        self.amp_level = str(amp.get("level", "O1")).upper() if amp and amp.get("use_amp", True) else None
        if self.amp_level and self.device != "gpu":
            logger.warning("AMP (mixed precision) needs a GPU; training in float32 on CPU")
            self.amp_level = None
        if self.amp_level not in (None, "O1", "O2"):
            raise ConfigError(f"AMP.level must be O1 or O2, got {amp.get('level')!r}")
        self.scaler = None
        if self.amp_level:
            self.scaler = paddle.amp.GradScaler(init_loss_scaling=float(amp.get("scale_loss", 65536.0)),
                                                use_dynamic_loss_scaling=bool(amp.get("use_dynamic_loss_scaling", True)))
            if self.amp_level == "O2":
                self.model, self.optimizer = paddle.amp.decorate(self.model, self.optimizer, level="O2", save_dtype="float32")

    def _autocast(self, enabled: bool):
        return paddle.amp.auto_cast(level=self.amp_level) if enabled and self.amp_level else contextlib.nullcontext()

    def _resume(self, prefix: str) -> None:
        files = load_training_checkpoint(prefix, with_ema=self.ema is not None)
        load_weights(self.model, files["pdparams"], source=prefix + ".pdparams")
        self.optimizer.set_state_dict(restore_optimizer_state(files["pdopt"], self.model))
        states = files["pdstates"]
        self.schedule.last_epoch = int(states.get("step", self.schedule.last_epoch))
        self.schedule.last_lr = self.schedule.get_lr()
        if self.ema is not None:
            self.ema.set_state_dict(files["pdema"], states.get("ema_updates", 0))
        self.start_epoch = int(states["epoch"]) + 1
        self.best, self.best_ema = float(states.get("best_metric", 0.0)), float(states.get("best_metric_ema", 0.0))
        self.global_step = int(states.get("global_step", 0))
        logger.info("resumed from %s: continuing at epoch %d (best top1 %.5f)", prefix, self.start_epoch, self.best)

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
        if epoch % max(1, int(self.glob.get("save_interval", 1))) == 0:
            self._save(f"epoch_{epoch}", epoch)
        self._save("latest", epoch)
        self.history.append(record)
        return record

    def _train_epoch(self, epoch: int) -> Dict[str, float]:
        self.net.train()
        self.seeder.epoch = epoch
        self.train_loader.batch_sampler.set_epoch(epoch)
        if self.train_loader.num_workers == 0:
            self.seeder()
        if self.glob.get("seed") is not None:
            paddle.seed(self.seeder.derive(stream=1))  # dropout and drop-path: reproducible per epoch
        meters: Dict[str, AverageMeter] = {}
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
            if boundary:
                self._optimizer_step()
            for key, value in {**self.train_metric(logits, labels), **{k: float(v) for k, v in losses.items()}}.items():
                meters.setdefault(key, AverageMeter()).update(value, batch_size)
            times["batch_cost"].update(time.time() - tic)
            if iteration % self.print_step == 0:
                eta = ((self.epochs - epoch + 1) * total - iteration) * times["batch_cost"].avg
                logger.info(train_line(epoch, self.epochs, iteration, total, self.schedule.name, self.schedule.get_lr(),
                                       meters, times, batch_size, eta))
                self.writer.add({"lr": self.schedule.get_lr(), **{f"train_{k}": m.avg for k, m in meters.items()}}, self.global_step)
            tic = time.time()
        logger.info(epoch_line("Train", epoch, self.epochs, meters))
        return {key: meter.avg for key, meter in meters.items()}

    def _average_running_stats(self) -> None:
        """Average the non-trainable state (BN running mean/variance, which Paddle keeps as frozen
        parameters) over ranks: each rank tracked only its own shard, and the model evaluated and saved
        must be one model."""
        if self.world_size == 1:
            return
        models = [self.model] + ([self.ema.module] if self.ema is not None else [])
        with paddle.no_grad():
            for model in models:
                for tensor in model.state_dict().values():
                    if paddle.is_floating_point(tensor) and tensor.stop_gradient:
                        dist.all_reduce(tensor)
                        tensor.set_value(tensor / self.world_size)

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.schedule.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model)

    def _save(self, prefix: str, epoch: int, with_training_state: bool = True, weights=None) -> None:
        if self.rank != 0:
            return
        path = os.path.join(self.output_dir, prefix)
        states = {"epoch": epoch, "metric": self.best, "best_metric": self.best, "best_metric_ema": self.best_ema,
                  "global_step": self.global_step, "step": self.schedule.last_epoch,
                  "ema_updates": self.ema.updates if self.ema else 0}
        save_checkpoint(
            path,
            weights if weights is not None else self.model.state_dict(),
            optimizer_state=portable_optimizer_state(self.optimizer.state_dict(), self.model) if with_training_state else None,
            states=states,
            ema_state=self.ema.state_dict() if (with_training_state and self.ema is not None) else None,
        )
        logger.info("saved %s to %s", prefix, path)

    # --- evaluation ---------------------------------------------------------------------------------

    @paddle.no_grad()
    def evaluate(self, net: paddle.nn.Layer, epoch: int = 0, label: str = "Eval") -> Dict[str, float]:
        """Loss and top-k over the whole eval set, each image counted once across ranks (the sampler's
        padding is dropped by sample index)."""
        net.eval()
        indices, losses, hits = [], [], []
        times = {"batch_cost": AverageMeter(), "reader_cost": AverageMeter()}
        tic = time.time()
        for iteration, (images, labels, index) in enumerate(self.eval_loader):
            images = batch_normalizer(self.eval_loader)(images)
            times["reader_cost"].update(time.time() - tic)
            with self._autocast(bool((self.config.get("AMP") or {}).get("use_fp16_test", False))):
                logits = net(images).astype("float32")
            per_sample = self.eval_loss(logits, labels)
            indices.append(index.numpy().reshape(-1))
            losses.append(np.stack([per_sample[k].numpy().reshape(-1) for k in per_sample], axis=-1))
            hits.append(self.eval_metric.hits(logits, labels).numpy())
            times["batch_cost"].update(time.time() - tic)
            if iteration % self.print_step == 0:
                logger.info("[%s][Epoch %d][Iter: %d/%d]batch_cost: %.5fs, reader_cost: %.5f, ips: %.5f images/sec",
                            label, epoch, iteration, len(self.eval_loader), times["batch_cost"].avg,
                            times["reader_cost"].avg, images.shape[0] / max(times["batch_cost"].avg, 1e-12))
            tic = time.time()
        index, values = self._gather(np.concatenate(indices), np.concatenate([np.concatenate(losses), np.concatenate(hits)], axis=1))
        _, first = np.unique(index, return_index=True)
        means = values[first].mean(axis=0)
        names = list(per_sample) + list(self.eval_metric.names())
        result = {name: float(v) for name, v in zip(names, means)}
        meters = {}
        for name, value in result.items():
            meters[name] = AverageMeter()
            meters[name].update(value, len(first))
        logger.info(epoch_line(label, epoch, None, meters) + f", images: {len(first)}")
        return result

    def _gather(self, index: np.ndarray, values: np.ndarray):
        """Concatenate every rank's (index, values); ranks hold equally many samples (padded sampler)."""
        if self.world_size == 1:
            return index, values
        gathered_index, gathered_values = [], []
        dist.all_gather(gathered_index, paddle.to_tensor(index))
        dist.all_gather(gathered_values, paddle.to_tensor(values.astype("float32")))
        return (np.concatenate([t.numpy() for t in gathered_index]), np.concatenate([t.numpy() for t in gathered_values]))

    def eval(self) -> Dict[str, float]:
        """tools/eval.py: evaluate `Global.pretrained_model` (or the initial weights) on DataLoader.Eval."""
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
        return Topk(int(post.get("topk", 5)), post.get("class_id_map_file", "ppcls/utils/imagenet1k_label_list.txt"))

    def infer(self, json_path: Optional[str] = None) -> List[dict]:
        """tools/infer.py: classify `Infer.infer_imgs` (a file, a folder or a list); prints PaddleClas's
        result lines and, with `json_path`, writes the results as JSON ("-" for stdout)."""
        infer = self._infer_section()
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
        path = export_inference_model(model, save_dir, description, softmax=softmax)
        logger.info("exported %s to %s%s", self.model_name, path, " (deploy form: batch norms folded)" if folded else "")
        return path
