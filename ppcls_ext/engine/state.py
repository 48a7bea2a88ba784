"""The record of how far a training run has come: the epoch it starts at, the best scores, the optimizer
step count and the per-epoch history. Checkpoints save it and a resumed run reads it back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional


@dataclass
class TrainingState:
    """`history` holds one record per epoch run by this process: {"epoch", "train", "train_seconds",
    "eval", "progressive"}; `stage` is the progressive stage last applied (a change is logged)."""

    start_epoch: int = 1
    best: float = 0.0
    best_ema: float = 0.0
    global_step: int = 0
    stage: Optional[int] = None
    history: List[Dict[str, Any]] = field(default_factory=list)

    def states(self, epoch: int) -> Dict[str, Any]:
        """The counters of a checkpoint's `.pdstates` (PaddleClas's `epoch`, `metric`, `best_metric`)."""
        return {"epoch": epoch, "metric": self.best, "best_metric": self.best, "best_metric_ema": self.best_ema,
                "global_step": self.global_step}

    def restore(self, states: Mapping[str, Any]) -> None:
        """Continue after the epoch a checkpoint's `states` were saved at."""
        self.start_epoch = int(states["epoch"]) + 1
        self.best, self.best_ema = float(states.get("best_metric", 0.0)), float(states.get("best_metric_ema", 0.0))
        self.global_step = int(states.get("global_step", 0))
