"""PaddleClas's post-training quantization command, on Paddle 3: `deploy/slim/quant_post_static.py -c CONFIG
-o Global.save_inference_dir=EXPORT_DIR` writes `EXPORT_DIR/quant_post_static_model/`, the export with an int8
model beside it that passed the accuracy gate, ready for `deploy/python/predict_cls.py`.

As upstream, EXPORT_DIR holds the export of tools/export_model.py; when it holds none and the config names
`Global.pretrained_model`, the export is made first, the same way. Calibration images are the first
`batch_size x batch_nums` images of `DataLoader.Eval` read with its transforms; the accuracy gate compares int8
with float on the images after them (held out). Settings: `Slim.quant_post_static` (see SETTINGS and
docs/int8.md). The output folder is written whole or not at all.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..config import ConfigError, boolean, check_values, closest, dump_yaml, integer, number, section
from ..data.calibration import fingerprint, image_set, load_images
from ..errors import UserError
from ..inference.classifier import read_description
from ..inference.int8_model import INT8_FILE, SECTION
from ..inference.onnx_backend import ONNX_FILE, export_onnx
from ..inference.paddle_backend import PARAMS_FILE, PROGRAM_FILES
from ..output_paths import ensure_directory, replace_directory
from .gate import Agreement, Budget, compare, probabilities
from .onnx_int8 import DEFAULT_OP_TYPES, OnnxRunner, QuantSettings, Quantizer
from .report import write_reports
from .sensitivity import float_limit, keep_worst_in_float, rank_layers, ranking_table
from .speed import cpu_flags, cpu_name, has_vnni, time_alone

logger = logging.getLogger("ppcls_ext")

OUTPUT_FOLDER = "quant_post_static_model"
SETTINGS_SECTION = "Slim.quant_post_static"


def _strings(value: Any, where: str) -> Any:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a non-empty list of ONNX operator names such as [Conv, Gemm, MatMul], got {value!r}")
    return value


def _method(value: Any, where: str) -> Any:
    if value not in ("MinMax", "Entropy", "Percentile"):
        raise ConfigError(f"{where} must be MinMax, Entropy or Percentile, got {value!r}")
    return value


#: Slim.quant_post_static keys: (default, check)
SETTINGS = {
    "batch_size": (8, integer(1)),            # calibration images per batch (PaddleSlim's name)
    "batch_nums": (4, integer(1)),            # calibration batches (PaddleSlim's name)
    "holdout_images": (500, integer(1)),      # at most this many images after the calibration ones judge int8
    "min_holdout_images": (None, integer(1, optional=True)),  # fewer held out: refuse (default: what the budget needs)
    "min_agreement": (0.99, number(0.0, 1.0)),               # top-1 agreement of int8 with float
    "max_top1_drop": (None, number(0.0, 1.0, optional=True)),  # top-1 drop against the labels (0.01 = one point)
    "max_kl": (None, number(0.0, optional=True)),            # mean KL(float || int8), nats
    "max_float_layers": (None, integer(0, optional=True)),   # layers that may stay float (default: a quarter)
    "sensitivity_images": (16, integer(1)),   # calibration images the per-layer sensitivity is measured on
    "op_types": (list(DEFAULT_OP_TYPES), _strings),
    "per_channel": (True, boolean),
    "reduce_range": (False, boolean),         # 7-bit weights: for CPUs without VNNI, whose int8 products saturate
    "calibrate_method": ("MinMax", _method),
    "timing": (True, boolean),                # time float and int8, each alone in its process
    "timing_batch_size": (1, integer(1)),
    "cpu_num_threads": (None, integer(1, optional=True)),
}


class BudgetNotMet(UserError):
    """The int8 model cannot be brought within the budget (exit status 2); `ranking` holds the table of
    layers by damage, which the command line prints on stdout."""

    def __init__(self, message: str, ranking: str):
        super().__init__(message)
        self.ranking = ranking


def read_settings(config: Mapping[str, Any]) -> Dict[str, Any]:
    """`Slim.quant_post_static` with defaults filled in; unknown keys and bad values are ConfigErrors."""
    given = section(config, SETTINGS_SECTION, required=False, default={})
    if not isinstance(given, Mapping):
        raise ConfigError(f"{SETTINGS_SECTION} must be a mapping of settings, got {given!r}")
    for key in given:
        if key not in SETTINGS:
            near = closest(key, SETTINGS)
            raise ConfigError(f"{SETTINGS_SECTION}.{key} is not a setting{f' (did you mean {near}?)' if near else ''}; "
                              f"known: {', '.join(SETTINGS)}")
    check_values(given, {key: check for key, (_, check) in SETTINGS.items()}, SETTINGS_SECTION)
    return {key: given.get(key, default) for key, (default, _) in SETTINGS.items()}


def has_export(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, PARAMS_FILE)) and any(
        os.path.isfile(os.path.join(folder, name)) for name in PROGRAM_FILES.values())


def float_export(config: Mapping[str, Any]) -> str:
    """Global.save_inference_dir holding an export of tools/export_model.py; made from Global.pretrained_model
    when absent."""
    export_dir = section(config, "Global.save_inference_dir")
    if has_export(export_dir):
        logger.info("quant_post_static: quantizing the export in %s", export_dir)
        return export_dir
    if not section(config, "Global.pretrained_model", required=False):
        raise ConfigError(f"Global.save_inference_dir={export_dir} holds no export (inference.json or inference.pdmodel "
                          f"with inference.pdiparams): run tools/export_model.py first, or give -o Global.pretrained_model=...")
    from ..engine import Engine  # the project's own export path; imported only when needed

    logger.info("quant_post_static: %s holds no export; exporting Global.pretrained_model first", export_dir)
    exporting = copy.deepcopy(dict(config))
    exporting.pop("Slim", None)
    return Engine(exporting, "export").export()


@dataclass
class HeldOut:
    """Calibration and held-out images of DataLoader.Eval, and what the images tell about them."""

    calibration: List[np.ndarray]
    images: np.ndarray
    labels: Optional[np.ndarray]
    source: str
    needed: int


def read_images(config: Mapping[str, Any], settings: Mapping[str, Any], budget: Budget, image_shape: Sequence[int]) -> HeldOut:
    images = image_set(config)
    calibrating = settings["batch_size"] * settings["batch_nums"]
    needed = settings["min_holdout_images"] or budget.images_to_decide()
    available = len(images) - calibrating
    count = min(settings["holdout_images"], max(available, 0))
    if count < needed:
        raise ConfigError(
            f"{images.where} has {len(images)} images: {calibrating} calibrate (batch_size x batch_nums), leaving {max(available, 0)} "
            f"to judge int8; the budget ({budget.describe()}) needs at least {needed} held-out images to be decided: add images, "
            f"calibrate on fewer, or accept fewer with -o {SETTINGS_SECTION}.min_holdout_images=N (the report then says so)")
    calibration = load_images(images, 0, calibrating, image_shape)
    held = load_images(images, calibrating, count, image_shape)
    labels = np.asarray(images.labels[calibrating:calibrating + count]) if images.labels is not None else None
    if images.labels is not None and len(set(images.labels[:calibrating])) == 1 and len(set(labels.tolist())) > 1:
        logger.warning("quant_post_static: the %d calibration images (the first of %s) all have label %d: the list "
                       "looks sorted by class, so calibration sees one class only; shuffle the list", calibrating,
                       images.where, images.labels[0])
    size = settings["batch_size"]
    return HeldOut([calibration[i:i + size] for i in range(0, calibrating, size)], held, labels, images.where, needed)


def quantize(config: Mapping[str, Any]) -> str:
    """Run the whole command on a loaded config; returns the output folder."""
    settings = read_settings(config)
    budget = Budget(settings["min_agreement"], settings["max_top1_drop"], settings["max_kl"])
    export_dir = float_export(config)
    description = read_description(export_dir) or {}
    glob = description.get("Global") or {}
    image_shape = glob.get("image_shape") or section(config, "Global.image_shape", required=False) or [3, 224, 224]
    softmax = bool(glob.get("softmax", True))
    data = read_images(config, settings, budget, image_shape)
    onnx_path = export_onnx(export_dir)
    quant_settings = QuantSettings(tuple(settings["op_types"]), settings["per_channel"], settings["reduce_range"],
                                   settings["calibrate_method"])
    logger.info("quant_post_static: calibrating on %d images of %s (%d x %d)", sum(len(b) for b in data.calibration),
                data.source, settings["batch_nums"], settings["batch_size"])
    quantizer = Quantizer(onnx_path, data.calibration, quant_settings)
    threads = settings["cpu_num_threads"] or 0
    float_probs = probabilities(OnnxRunner(quantizer.float_model, threads).run(data.images), softmax)

    def evaluate(excluded: List[str]) -> Agreement:
        outputs = OnnxRunner(quantizer.build(exclude=excluded), threads).run(data.images)
        return compare(float_probs, probabilities(outputs, softmax), data.labels)

    everything = evaluate([])
    logger.info("quant_post_static: every layer int8 (%d): top-1 agreement %.2f%%, mean KL %.3g on %d held-out images",
                len(quantizer.layers), everything.top1_agreement * 100, everything.mean_kl, everything.images)
    ranking, search, limit = None, None, float_limit(settings["max_float_layers"], len(quantizer.layers))
    kept: List = []
    result = everything
    if budget.misses(everything):
        sensitivity = np.concatenate(data.calibration)[:settings["sensitivity_images"]]
        logger.info("quant_post_static: budget missed (%s); ranking %d layers by damage on %d calibration images",
                    "; ".join(budget.misses(everything)), len(quantizer.layers), len(sensitivity))
        ranking = rank_layers(quantizer, sensitivity, softmax, threads)
        search = keep_worst_in_float(ranking, budget, limit, evaluate)
        if not search.held:
            reached = search.result or everything
            table = ranking_table(ranking, search.kept)
            raise BudgetNotMet(
                f"int8 refused: the budget ({budget.describe()}) is not met on {reached.images} held-out images: "
                f"{'; '.join(budget.misses(reached))} with {len(search.kept)} of {len(quantizer.layers)} layers kept in "
                f"float (max_float_layers {limit}); see the layer ranking above",
                _ranking_text(table))
        kept, result = search.kept, search.result
    return write_folder(export_dir, quantizer, kept, {
        "config": settings, "budget": budget, "everything": everything, "result": result, "ranking": ranking,
        "search": search, "limit": limit, "data": data, "description": description, "image_shape": image_shape,
        "threads": threads})


def _ranking_text(table: List[List[str]]) -> str:
    from ..report import markdown_table

    return markdown_table(["rank", "layer", "damage (mean KL, only this layer int8)", "kept in float"], table, "llrl")


def write_folder(export_dir: str, quantizer: Quantizer, kept: List, facts: Dict[str, Any]) -> str:
    """The output folder: the float export's files, the int8 model, inference.yml with the Int8 section, and the
    reports; built beside its place and moved there when complete."""
    target = os.path.join(export_dir, OUTPUT_FOLDER)
    ensure_directory(export_dir, "Global.save_inference_dir")
    staging = f"{target}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        for name in list(PROGRAM_FILES.values()) + [PARAMS_FILE, ONNX_FILE]:
            if os.path.isfile(os.path.join(export_dir, name)):
                shutil.copy2(os.path.join(export_dir, name), os.path.join(staging, name))
        with open(os.path.join(staging, INT8_FILE), "wb") as f:
            f.write(quantizer.build(exclude=[layer.name for layer in kept]))
        result: Agreement = facts["result"]
        settings = facts["config"]
        int8 = {"model_file": INT8_FILE, "accepted": True, "route": "onnxruntime QDQ (static, per-channel int8 weights, "
                "uint8 activations)" if settings["per_channel"] else "onnxruntime QDQ (static)",
                "budget": facts["budget"].describe(), "holdout_images": result.images,
                "top1_agreement": round(result.top1_agreement, 6), "mean_kl": float(f"{result.mean_kl:.4g}"),
                "kept_in_float": [layer.name for layer in kept]}
        description = dict(facts["description"])
        description[SECTION] = int8
        _write_yaml(os.path.join(staging, "inference.yml"), description)
        flags = cpu_flags()
        latency = None
        if settings["timing"]:
            shape = [settings["timing_batch_size"], *facts["image_shape"]]
            logger.info("quant_post_static: timing float and int8, each alone in its own process (batch %s)", shape)
            latency = time_alone(staging, shape, settings["cpu_num_threads"] or os.cpu_count() or 1)
            int8.update({"float_ms": round(latency.float_ms, 3), "int8_ms": round(latency.int8_ms, 3),
                         "timed_on": {"cpu": cpu_name(), "vnni": has_vnni(flags)}})
            _write_yaml(os.path.join(staging, "inference.yml"), description)
        write_reports(staging, {**facts, "kept": kept, "layers": quantizer.layers, "latency": latency, "flags": flags,
                                "cpu": cpu_name(), "calibration_fingerprint": fingerprint(facts["data"].calibration),
                                "export_dir": os.path.abspath(export_dir)})
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("quant_post_static: wrote %s (%d of %d layers int8; report.md beside it)", target,
                len(quantizer.layers) - len(kept), len(quantizer.layers))
    return target


def _write_yaml(path: str, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump_yaml(json.loads(json.dumps(data))))

