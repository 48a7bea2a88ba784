"""PaddleClas's `DistillationTopkAcc`: top-k accuracy of one model (`model_key`) of a distillation run."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ...config import ConfigError, single_entry
from ..metrics import METRICS, TopkAcc


class DistillationTopkAcc(TopkAcc):
    """TopkAcc of the outputs of `model_key` (and their `feature_key` entry when the model returns a dict).
    Evaluation scores the inference model's logits alone, which this takes as they come."""

    def __init__(self, model_key: str, feature_key: Optional[str] = None, topk: Sequence[int] = (1, 5)):
        super().__init__(topk)
        self.model_key, self.feature_key = str(model_key), feature_key

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
    if len(entries) != 1:
        raise ConfigError(f"{where}: only one metric (DistillationTopkAcc or TopkAcc) is supported, got {len(entries)}")
    name, args = single_entry(entries[0], f"{where}[0]")
    if name == "TopkAcc":
        name, args = "DistillationTopkAcc", {**args, "model_key": infer_model_name}
    if name != "DistillationTopkAcc":
        raise ConfigError(f"{where}[0]: unknown metric {name!r}; valid: DistillationTopkAcc, {', '.join(METRICS)}")
    try:
        metric = DistillationTopkAcc(**args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}[0]: bad arguments for DistillationTopkAcc: {error}") from error
    if metric.model_key not in models:
        raise ConfigError(f"{where}[0]: DistillationTopkAcc.model_key {metric.model_key!r} is not a model; the "
                          f"models are {', '.join(models)} (Arch.models)")
    return metric
