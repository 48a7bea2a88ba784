"""Training, evaluation, inference and export from PaddleClas-format configs."""
from .engine import Engine, build_model

__all__ = ["Engine", "build_model"]
