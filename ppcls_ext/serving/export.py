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
from ..interrupts import deferred
from ..output_paths import IncompleteWrite, replace_directory, writing

try:
    import resource
except ImportError:  # Windows: no file-size limits
    resource = None

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
        with writing(save_dir, "Global.save_inference_dir", kept="the export already there is kept"):
            with deferred():  # Paddle's conversion cut by Ctrl-C fails oddly (even crashes): it stops after it
                model.eval()
                with program_format:
                    static = paddle.jit.to_static(_Exported(model, softmax), full_graph=True,
                                                  input_spec=[InputSpec([None, 3, None, None], "float32", name="x")])
                    paddle.jit.save(static, os.path.join(staging, "inference"))
                description = {**description, "Global": {**description.get("Global", {}), "export_format": export_format,
                                                          "data_format": getattr(model, "data_format", "NCHW")}}
                text = dump_yaml(description)
                with open(os.path.join(staging, "inference.yml"), "w", encoding="utf-8") as f:
                    f.write(text)
                if not os.path.isfile(os.path.join(staging, EXPORT_FORMATS[export_format])) or not os.path.isfile(
                        os.path.join(staging, MODEL_FILES[0])):
                    raise RuntimeError(f"paddle.jit.save wrote no {export_format} inference model into {staging}")
                check_export(staging, export_format, text)
            replace_directory(staging, save_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return save_dir


def check_export(directory: str, export_format: str, description_text: str) -> None:
    """The export in `directory` is complete, or IncompleteWrite: `paddle.jit.save` does not report a failed
    write (at a file-size limit it returned normally with inference.pdiparams cut short), so the program
    and weights are loaded back with Paddle Inference and inference.yml is read back before the export
    replaces anything."""
    with open(os.path.join(directory, "inference.yml"), "r", encoding="utf-8") as f:
        if f.read() != description_text:
            raise IncompleteWrite("inference.yml does not read back as written")
    files = [os.path.join(directory, name) for name in (EXPORT_FORMATS[export_format], MODEL_FILES[0])]
    config = paddle.inference.Config(*files)
    config.disable_gpu()
    config.switch_ir_optim(False)  # loading is the check; no graph passes needed
    config.disable_glog_info()
    try:
        paddle.inference.create_predictor(config)
    except Exception as error:  # Paddle raises RuntimeError/ValueError/its own types for a damaged file
        raise IncompleteWrite(f"{_cut_short(files)}the export does not load back ({type(error).__name__}: "
                              f"{_first_line(error)})") from error


def _cut_short(files: Sequence[str]) -> str:
    """Why an export's file may be cut short: the file-size limit that one file's size equals, or a full disk."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else None
    for path in files:
        if limit is not None and limit != resource.RLIM_INFINITY and os.path.getsize(path) == limit:
            return f"{os.path.basename(path)} stops at the file-size limit (ulimit -f, {limit} bytes): "
    if shutil.disk_usage(os.path.dirname(files[0])).free < 1 << 20:
        return "the disk is full: "
    return ""


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
