"""Export to Paddle Inference: the model (dynamic batch and image size, softmax appended unless
disabled) plus `inference.yml`, which records the preprocessing and post-processing to deploy it with.
The export is built in a temporary directory and moved into place only when complete, so an existing
export is never replaced by a partial one.

Two program formats: "pir" (Paddle 3's `inference.json`, the default) and "legacy" (`inference.pdmodel`,
Paddle 2's), which PaddleClas's own `deploy/python/predict_cls.py` can serve under Paddle 3 (it calls
`Config.enable_memory_optim`, which Paddle 3 rejects for PIR programs). Paddle switches to the legacy
format in-process with `paddle.pir_utils.DygraphOldIrGuard` (`paddle.set_flags` alone does not)."""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence

import paddle
import paddle.nn as nn
from paddle.static import InputSpec

from ..config import dump_yaml, single_entry
from ..output_paths import replace_directory

MODEL_FILES = ("inference.pdiparams",)
GRAPH_FILES = ("inference.json", "inference.pdmodel")  # PIR (Paddle 3) or legacy program
#: Global.export_format -> the program file it writes
EXPORT_FORMATS = {"pir": "inference.json", "legacy": "inference.pdmodel"}


class _Exported(nn.Layer):
    """What gets converted to a static graph: the model (left a dygraph layer itself, as `to_static` would
    otherwise replace its `forward` for good), with softmax appended on request."""

    def __init__(self, model: nn.Layer, softmax: bool):
        super().__init__()
        self.model, self.softmax = model, softmax

    def forward(self, x):
        logits = self.model(x)
        return nn.functional.softmax(logits, axis=-1) if self.softmax else logits


def _scale_number(value: Any) -> Any:
    """NormalizeImage's scale as a number (PaddleClas's deploy predictor expects one)."""
    if isinstance(value, str) and "/" in value:
        numerator, denominator = value.split("/", 1)
        return float(numerator) / float(denominator)
    return float(value) if isinstance(value, str) else value


def deploy_transforms(ops: Sequence[Any]) -> List[Dict[str, Any]]:
    """The preprocessing ops as PaddleClas's deploy config lists them: without DecodeImage (the
    predictor decodes), with a numeric NormalizeImage scale, ending in CHW layout."""
    result = []
    for position, item in enumerate(copy.deepcopy(list(ops))):
        name, args = single_entry(item, f"transforms[{position}]")
        if name == "DecodeImage":
            continue
        if name == "NormalizeImage":
            args["scale"] = _scale_number(args.get("scale", 1.0 / 255.0))
            args.setdefault("channel_num", 3)
        result.append({name: args or None})
    layouts = [name for entry in result for name in entry]
    normalize = next((entry["NormalizeImage"] for entry in result if "NormalizeImage" in entry), None) or {}
    if "ToCHWImage" not in layouts and normalize.get("order", "") != "chw":
        result.append({"ToCHWImage": None})
    return result


def inference_config(model_name: str, transforms: List[Dict[str, Any]], topk: int, label_names: Optional[List[str]],
                     image_shape: Sequence[int], softmax: bool) -> Dict[str, Any]:
    postprocess: Dict[str, Any] = {"topk": topk}
    if label_names is not None:
        postprocess["label_list"] = label_names
    return {
        "Global": {"model_name": model_name, "image_shape": list(image_shape), "dynamic_shape": True, "softmax": softmax},
        "PreProcess": {"transform_ops": transforms},
        "PostProcess": {"Topk": postprocess},
    }


def _program_format(export_format: str):
    """The context to convert and save in: Paddle's default (PIR), or its legacy program format."""
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}")
    return paddle.pir_utils.DygraphOldIrGuard() if export_format == "legacy" else contextlib.nullcontext()


def export_inference_model(model: nn.Layer, save_dir: str, description: Dict[str, Any], softmax: bool = True,
                           export_format: str = "pir") -> str:
    """Write `save_dir/inference.{json|pdmodel,pdiparams,yml}` atomically; returns `save_dir`.
    `export_format`: "pir" (inference.json) or "legacy" (inference.pdmodel, for PaddleClas's predictor)."""
    program_format = _program_format(export_format)
    save_dir = os.path.abspath(save_dir)
    parent = os.path.dirname(save_dir)
    os.makedirs(parent, exist_ok=True)
    staging = f"{save_dir}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.eval()
        with program_format:
            static = paddle.jit.to_static(_Exported(model, softmax), full_graph=True,
                                          input_spec=[InputSpec([None, 3, None, None], "float32", name="x")])
            paddle.jit.save(static, os.path.join(staging, "inference"))
        description = {**description, "Global": {**description.get("Global", {}), "export_format": export_format,
                                                  "data_format": getattr(model, "data_format", "NCHW")}}
        with open(os.path.join(staging, "inference.yml"), "w", encoding="utf-8") as f:
            f.write(dump_yaml(description))
        if not os.path.isfile(os.path.join(staging, EXPORT_FORMATS[export_format])) or not os.path.isfile(
                os.path.join(staging, MODEL_FILES[0])):
            raise RuntimeError(f"paddle.jit.save wrote no {export_format} inference model into {staging}")
        replace_directory(staging, save_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return save_dir

