"""PaddleClas's `Arch.name: DistillationModel` config as the engine's front end. Training builds every
model; the trained ones (not frozen) form the model the optimizer, EMA, checkpoints and DataParallel see,
the frozen teachers stay inside the task. Evaluation, inference and export build and serve the
`infer_model_name` model alone."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import paddle
import paddle.distributed as dist
import paddle.nn as nn

from ...config import ConfigError, section
from ...weights import read_weights_file
from ..front import RANDOM_WEIGHTS_VERB, sync_batch_norm
from ..log import logger
from .losses import build_distillation_loss
from .metrics import build_distillation_metric
from .models import DistillationModel, build_member, load_run_weights, parse_members
from .task import DistillationTask

#: the key of a distillation checkpoint's record in its `.pdstates`
RECORD_KEY = "distillation"


class DistillationFront:
    """The models of `Arch.models`, by name; `model` is a DistillationModel of the trained ones (training)
    or the `infer_model_name` model itself (evaluation, inference, export)."""

    def __init__(self, config: Mapping[str, Any], mode: str, world_size: int, device: str):
        self.config, self.mode = config, mode
        glob = config.get("Global") or {}
        arch = section(config, "Arch")
        self.members, self.infer_name = parse_members(arch)
        self.order = [member.name for member in self.members]
        served = next(member for member in self.members if member.name == self.infer_name)
        self.served_name, self.class_num = served.model_name, served.class_num
        other = next((m for m in self.members if m.class_num != self.class_num), None)
        if other is not None:
            logger.warning("%s outputs %d classes, %s %d: logit distillation losses compare outputs class by class",
                           other.where, other.class_num, served.where, self.class_num)
        built = self.members if mode == "train" else [served]
        pretrained = glob.get("pretrained_model")
        self.models = {member.name: build_member(member) for member in built}
        if pretrained:
            load_run_weights(self.models, read_weights_file(pretrained), self.order, mode == "train")
        elif mode != "train" and not served.options.get("pretrained"):
            logger.warning("Global.pretrained_model is not set: %s a randomly initialised %s (its outputs mean nothing); "
                           "give -o Global.pretrained_model=PATH", RANDOM_WEIGHTS_VERB[mode], self.infer_name)
        if mode != "train":
            self.model, self.frozen = self.models[self.infer_name], {}
        else:
            self._split_trained_and_frozen(arch, world_size, device)

    def _split_trained_and_frozen(self, arch: Mapping[str, Any], world_size: int, device: str) -> None:
        """`frozen`: the teachers, the same on every rank; `model`: a DistillationModel of the trained ones."""
        self.frozen = {m.name: self.models[m.name] for m in self.members if m.frozen}
        if world_size > 1:
            same_teachers_on_every_rank(self.frozen.values())
        trained = {m.name: self.models[m.name] for m in self.members if not m.frozen}
        if self.infer_name not in trained:
            raise ConfigError(f"Arch.infer_model_name: {self.infer_name} is frozen (Arch.freeze_params_list); the model "
                              f"evaluated, saved and exported is one that is trained")
        self.model = sync_batch_norm(DistillationModel(trained), arch, world_size, device)
        logger.info("[Distillation] trained: %s; frozen: %s; evaluated and exported: %s", ", ".join(trained),
                    ", ".join(self.frozen) or "none", self.infer_name)

    @property
    def served(self) -> nn.Layer:
        """The `infer_model_name` model: evaluated, exported, and whose dropout progressive learning ramps."""
        return self.models[self.infer_name]

    @property
    def reads_unlabeled(self) -> bool:
        """SSLD-style unlabelled training images are accepted when no training loss reads labels."""
        return not self.train_loss().reads_labels

    def evaluated(self, net: nn.Layer) -> nn.Layer:
        """Evaluation runs the `infer_model_name` model alone (of the trained models, or of their EMA copy)."""
        return net.member(self.infer_name) if isinstance(net, DistillationModel) else self.served

    def checkpoint_record(self) -> Dict[str, Any]:
        """Which model is which: every model's name and zoo name, the frozen and saved ones, the served one."""
        return {RECORD_KEY: {"models": {m.name: m.model_name for m in self.members},
                             "frozen": [m.name for m in self.members if m.frozen],
                             "saved": [m.name for m in self.members if not m.frozen],
                             "infer_model_name": self.infer_name}}

    def train_loss(self) -> Any:
        return build_distillation_loss(section(self.config, "Loss.Train"), "Loss.Train", self.order)

    def metric(self, entries: Any, where: str) -> Any:
        metric = build_distillation_metric(entries, where, self.order, self.infer_name)
        if where == "Metric.Eval" and metric.model_key != self.infer_name:
            logger.warning("%s: DistillationTopkAcc.model_key is %s, but evaluation scores the inference model %s "
                           "(Arch.infer_model_name)", where, metric.model_key, self.infer_name)
        return metric

    def train_metric(self, loader: Any) -> Optional[Any]:
        """Metric.Train; none when the training set holds unlabelled images (top-k needs labels)."""
        dataset = loader.dataset
        unlabeled = dataset.unlabeled_count() if hasattr(dataset, "unlabeled_count") else 0
        if unlabeled:
            logger.info("[Distillation] %d of %d training images are unlabelled (SSLD): the training top-k is not "
                        "computed; evaluation reports it", unlabeled, len(dataset))
            return None
        return self.metric(section(self.config, "Metric.Train", required=False), "Metric.Train")

    def task(self, model: nn.Layer, net: nn.Layer, loss: Any, metric: Optional[Any]) -> DistillationTask:
        return DistillationTask(model, net, self.frozen, self.order, loss, metric)



def same_teachers_on_every_rank(teachers) -> None:
    """Frozen teachers stay outside DataParallel (which makes the trained models equal across ranks): their
    tensors are broadcast from rank 0 here, so that ranks never learn from different (e.g. random) teachers."""
    with paddle.no_grad():
        for teacher in teachers:
            for tensor in teacher.state_dict(use_hook=False).values():
                dist.broadcast(tensor, src=0)
