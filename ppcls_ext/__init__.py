"""ppcls_ext: MicroNet, EfficientNet and EfficientNetV2 for PaddlePaddle, as a PaddleClas plugin.

Importing the package registers every model with PaddleClas's `build_model` (see `paddleclas_plugin`)
and, before Paddle is loaded, applies the CPU settings of `cpu_env` (`PPCLS_EXT_CPU_TUNING=0`: off).
Installed, the start-up hook `ppcls_ext_hook` imports it on PaddleClas's first import, so that PaddleClas's
own tools need no code (`PPCLS_EXT_AUTOLOAD=0`: off).
"""
from . import cpu_env

cpu_env.apply()

from . import paddleclas_plugin  # noqa: E402
from .models import FeatureExtractor, FeatureInfo, ImageClassifier  # noqa: E402
from .registry import ModelConfig, UnknownModelError, create_model, get_model_config, list_models  # noqa: E402
from .weights import IncompatibleWeightsError, WeightsDownloadError, load_pretrained, load_weights  # noqa: E402

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
