"""What a config's `Arch` section builds for the engine: the model a run trains, saves and serves, with its
starting weights, its training losses and metrics, and the task the training loop calls. One classifier
here; `Arch.name: DistillationModel` (PaddleClas's config) gets the distillation front end instead."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import paddle
import paddle.nn as nn

from ..config import check_values, integer, section
from ..weights import load_weights_file, read_starting_weights
from .log import logger
from .losses import build_loss
from .metrics import build_metric
from .task import ClassificationTask
from .wiring import build_model

RANDOM_WEIGHTS_VERB = {"eval": "evaluating", "infer": "classifying with", "export": "exporting"}


def sync_batch_norm(model: nn.Layer, arch: Mapping[str, Any], world_size: int, device: str) -> nn.Layer:
    """`Arch.use_sync_bn`: BN statistics synchronised across GPUs (logged and ignored on CPU)."""
    if not (arch.get("use_sync_bn") and world_size > 1):
        return model
    if device == "gpu":
        return paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    logger.warning("Arch.use_sync_bn needs GPUs; ignored on CPU")
    return model


class ClassifierFront:
    """One classifier (`Arch.name` of our zoo): trained, evaluated and served as itself."""

    reads_unlabeled = False  # the training losses read every image's label

    def __init__(self, config: Mapping[str, Any], mode: str, world_size: int, device: str):
        self.config, self.mode = config, mode
        glob = config.get("Global") or {}
        arch = section(config, "Arch")
        check_values(arch, {"class_num": integer(1)}, "Arch")
        self.class_num = int(arch.get("class_num", 1000))
        self.served_name = str(arch["name"])
        # weights are read before the model is built: their numerics (padding, BN epsilon) are build options
        start = read_starting_weights(glob.get("pretrained_model"), glob.get("checkpoints") if mode == "train" else None,
                                      glob.get("pretrained_model_sha256"))
        model = sync_batch_norm(build_model(arch, start.numerics), arch, world_size, device)
        if start.pretrained is not None:  # only training may replace a classifier of another class count
            load_weights_file(model, start.pretrained, allow_classifier_mismatch=mode == "train")
        elif mode != "train" and not arch.get("pretrained"):
            logger.warning("Global.pretrained_model is not set: %s a randomly initialised model (its outputs mean "
                           "nothing); give -o Global.pretrained_model=PATH", RANDOM_WEIGHTS_VERB[mode])
        self.model = model

    @property
    def served(self) -> nn.Layer:
        """The model that is evaluated, exported and whose dropout progressive learning ramps."""
        return self.model

    def evaluated(self, net: nn.Layer) -> nn.Layer:
        """What evaluation runs of `net` (the model, its DataParallel wrapper or its EMA copy)."""
        return net

    def checkpoint_record(self) -> Dict[str, Any]:
        """What checkpoints record about the models beyond their weights: nothing for one classifier."""
        return {}

    def train_loss(self) -> Any:
        return build_loss(section(self.config, "Loss.Train"), "Loss.Train")

    def metric(self, entries: Any, where: str) -> Any:
        return build_metric(entries, where)

    def train_metric(self, loader: Any) -> Any:
        return build_metric(section(self.config, "Metric.Train", required=False), "Metric.Train")

    def task(self, model: nn.Layer, net: nn.Layer, loss: Any, metric: Optional[Any]) -> ClassificationTask:
        return ClassificationTask(model, net, loss, metric)


def build_front(config: Mapping[str, Any], mode: str, world_size: int, device: str) -> Any:
    """The front end of the config's `Arch`: PaddleClas's DistillationModel, or one classifier."""
    if section(config, "Arch.name") == "DistillationModel":
        from .distillation import DistillationFront

        return DistillationFront(config, mode, world_size, device)
    return ClassifierFront(config, mode, world_size, device)
