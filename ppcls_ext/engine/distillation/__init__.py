"""Knowledge distillation with PaddleClas's configs: `Arch.name: DistillationModel`, its `Distillation*Loss`
family and `DistillationTopkAcc`, as a front end that builds the engine's distillation task."""
from .front import DistillationFront

__all__ = ["DistillationFront"]
