"""ppcls_ext: MicroNet, EfficientNet and EfficientNetV2 for PaddlePaddle, as a PaddleClas plugin.

Importing the package registers every model with PaddleClas's `build_model` (see `paddleclas_plugin`).
"""
from . import paddleclas_plugin
from .models import FeatureExtractor, FeatureInfo, ImageClassifier
from .registry import ModelConfig, UnknownModelError, create_model, get_model_config, list_models
from .weights import IncompatibleWeightsError, WeightsDownloadError, load_pretrained, load_weights

__version__ = "0.1.0"

__all__ = [
    "FeatureExtractor",
    "FeatureInfo",
    "ImageClassifier",
    "IncompatibleWeightsError",
    "ModelConfig",
    "UnknownModelError",
    "WeightsDownloadError",
    "create_model",
    "get_model_config",
    "list_models",
    "load_pretrained",
    "load_weights",
]

paddleclas_plugin.install()
