"""Set-up shared by every mode of the engine: the config's sections and Global keys checked, the device
chosen, seeds set, the model of an `Arch` section built. The loops (trainer, evaluator) never read the
config themselves."""
from __future__ import annotations

import difflib
import os
import random
from typing import Any, Dict, Mapping, Optional

import numpy as np
import paddle

from .. import registry
from ..config import ConfigError, boolean, check_sections, check_values, int_list, integer, number, section
from ..output_paths import check_writable_directory
from ..weights import SourceNumerics, sha256_value
from .log import logger

MODES = ("train", "eval", "infer", "export")
GLOBAL_KEYS = {"checkpoints", "pretrained_model", "output_dir", "device", "seed", "save_interval", "eval_during_train",
               "eval_interval", "epochs", "print_batch_step", "use_visualdl", "image_shape", "save_inference_dir",
               "update_freq", "infer_add_softmax", "train_mode", "progressive", "export_deploy_form",
               "nonfinite_loss_patience", "export_format", "pretrained_model_sha256"}
# PaddleClas keys accepted in upstream configs but without effect here (logged)
IGNORED_GLOBAL_KEYS = {"to_static": "dygraph training is used", "use_dali": "DALI is not supported; paddle.io is used",
                       "use_multilabel": "multi-label training is not supported", "profiler_options": "no profiler"}
# the values of numeric and boolean keys, checked at start-up in every mode (a string such as 'flase' is
# not taken as true, 0 epochs is not a run that silently does nothing)
GLOBAL_VALUES = {"epochs": integer(1), "eval_interval": integer(1), "print_batch_step": integer(1),
                 "update_freq": integer(1), "save_interval": integer(),  # <= 0: no epoch_N checkpoints, as in PaddleClas
                 "seed": integer(0, 2**31 - 1, optional=True), "image_shape": int_list(3),
                 "eval_during_train": boolean, "use_visualdl": boolean, "infer_add_softmax": boolean,
                 "export_deploy_form": boolean, "nonfinite_loss_patience": integer(1, optional=True),
                 "pretrained_model_sha256": sha256_value}
# numeric values of the training sections, by section path (a string would fail mid-run, or inside Paddle)
TRAINING_VALUES = {"Optimizer": {"momentum": number(0), "weight_decay": number(0, optional=True),
                                 "clip_norm": number(0, optional=True)},
                   "Optimizer.lr": {"learning_rate": number(0), "warmup_epoch": number(0), "warmup_start_lr": number(0),
                                    "eta_min": number(0), "gamma": number(0), "step_size": number(0)},
                   "Optimizer.regularizer": {"coeff": number(0)}, "EMA": {"decay": number(0, 1)}}
SECTIONS = ("Global", "Arch", "Loss", "Optimizer", "DataLoader", "Infer", "Metric", "EMA", "AMP")
# PaddleClas sections for features this package does not have (logged)
IGNORED_SECTIONS = {"Slim": "quantization and pruning (PaddleSlim) are not supported",
                    "SSL": "semi-supervised training is not supported", "UnLabelLoss": "semi-supervised training is not supported",
                    "MLDecoder": "the ML-Decoder head is not supported",
                    "Hpi": "high-performance inference settings belong to PaddleClas's deploy tools"}


def build_model(arch: Dict[str, Any], source_numerics: Optional[SourceNumerics] = None) -> paddle.nn.Layer:
    """The model of an `Arch` section (PaddleClas keywords accepted), with config-level errors;
    `source_numerics`: those of the weights it will be loaded with (see `registry.create_model`)."""
    options = dict(arch)
    name = options.pop("name", None)
    options.pop("use_sync_bn", None)
    if name is None:
        raise ConfigError("missing 'Arch.name' (e.g. MicroNet_M3)")
    returned = [key for key in ("return_patterns", "return_stages") if options.get(key)]
    if returned:
        raise ConfigError(f"Arch.{returned[0]}: the model would return a dict of features, which these tools do not "
                          f"train or evaluate; use it from Python (model.update_res) or in PaddleClas's own tools")
    try:
        options = registry.paddleclas_arch_options(name, options)
        return registry.create_model(name, source_numerics=source_numerics, **options)
    except registry.UnknownModelError as error:
        raise ConfigError(f"Arch.name: {error}") from error
    except (TypeError, ValueError) as error:
        raise ConfigError(f"Arch: {error}") from error


def check_config(config: Mapping[str, Any], glob: Mapping[str, Any], mode: str) -> None:
    """Sections, Global keys and values, Infer.batch_size; in export mode, that the export can be written."""
    check_sections(config, SECTIONS, IGNORED_SECTIONS)
    check_global_keys(glob)
    check_values(glob, GLOBAL_VALUES, "Global")
    check_values(config.get("Infer") or {}, {"batch_size": integer(1)}, "Infer")
    for path, checks in TRAINING_VALUES.items():
        check_values(section(config, path, required=False), checks, path)
    if mode == "export":  # the export is built beside its folder and renamed into place
        check_writable_directory(os.path.dirname(os.path.abspath(glob.get("save_inference_dir", "./inference"))),
                                 "Global.save_inference_dir")


def check_global_keys(glob: Mapping[str, Any]) -> None:
    """Ignored PaddleClas keys and unknown keys (with the closest known one) are logged."""
    for key, value in glob.items():
        if key in IGNORED_GLOBAL_KEYS and value not in (None, False):
            logger.warning("Global.%s=%s is ignored: %s", key, value, IGNORED_GLOBAL_KEYS[key])
        elif key not in GLOBAL_KEYS and key not in IGNORED_GLOBAL_KEYS:
            close = difflib.get_close_matches(key, sorted(GLOBAL_KEYS), n=1)
            logger.warning("Global.%s is not a known key%s; it has no effect", key,
                           f" (did you mean {close[0]}?)" if close else "")


def set_device(requested: str) -> str:
    """`Global.device`; a GPU request on a build or machine without CUDA falls back to CPU, logged."""
    requested = str(requested or "cpu").lower()
    if requested not in ("cpu", "gpu"):
        raise ConfigError(f"Global.device must be 'cpu' or 'gpu', got {requested!r}")
    if requested == "gpu" and not (paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0):
        logger.warning("Global.device is gpu, but this Paddle build or machine has no CUDA GPU: running on CPU")
        requested = "cpu"
    paddle.set_device(requested)
    return requested


def seed_everything(seed: Optional[int], rank: int) -> None:
    """`Global.seed` (per rank) for Paddle, numpy and random; nothing when unset."""
    if seed is None:
        return
    paddle.seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


def nonfinite_patience(glob: Mapping[str, Any], amp_level: Optional[str]) -> int:
    """`Global.nonfinite_loss_patience`: how many consecutive iterations with a NaN/Inf loss stop training;
    1 by default, 10 under AMP (whose loss scaler skips the steps of batches that overflow)."""
    value = glob.get("nonfinite_loss_patience")  # checked at start-up (GLOBAL_VALUES)
    return (10 if amp_level else 1) if value is None else value
