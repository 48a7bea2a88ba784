"""PaddleClas's `DistillationTopkAcc`: top-k accuracy of one model (`model_key`) of a distillation run."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ...config import ConfigError, string
from ...config_registry import ConfigRegistry
from ..metrics import TopkAcc

#: the metrics of a DistillationModel run; PaddleClas's TopkAcc there scores the served model
DISTILLATION_METRICS = ConfigRegistry("metric")
DISTILLATION_METRICS.register(TopkAcc)


@DISTILLATION_METRICS.register
class DistillationTopkAcc(TopkAcc):
    """TopkAcc of the outputs of `model_key` (and their `feature_key` entry when the model returns a dict).
    Evaluation scores the inference model's logits alone, which this takes as they come."""

    def __init__(self, model_key: str, feature_key: Optional[str] = None, topk: Sequence[int] = (1, 5)):
        super().__init__(topk)
        self.model_key = string()(model_key, "DistillationTopkAcc: model_key")
        self.feature_key = string(optional=True)(feature_key, "DistillationTopkAcc: feature_key")

    def select(self, outputs: Any) -> Any:
        """The scored model's output from a distillation run's outputs dict (a tensor is taken as it is)."""
        if isinstance(outputs, dict):
            outputs = outputs[self.model_key]
        return outputs[self.feature_key] if self.feature_key is not None else outputs


def build_distillation_metric(entries: Any, where: str, models: Sequence[str], infer_model_name: str) -> TopkAcc:
    """`Metric.Train` / `Metric.Eval` of a DistillationModel run: DistillationTopkAcc (its model_key one of
    `models`), or TopkAcc, which scores `infer_model_name`."""
    if not entries:
        return DistillationTopkAcc(infer_model_name)
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected a list of metrics, e.g. [{{DistillationTopkAcc: {{model_key: Student}}}}], "
                          f"got {entries!r}")
    if len(entries) != 1:
        raise ConfigError(f"{where}: only one metric (DistillationTopkAcc or TopkAcc) is supported, got {len(entries)}")
    metric = DISTILLATION_METRICS.build(entries[0], f"{where}[0]")
    if not isinstance(metric, DistillationTopkAcc):
        return DistillationTopkAcc(infer_model_name, topk=metric.topk)
    if metric.model_key not in models:
        raise ConfigError(f"{where}[0]: DistillationTopkAcc.model_key {metric.model_key!r} is not a model; the "
                          f"models are {', '.join(models)} (Arch.models)")
    return metric
