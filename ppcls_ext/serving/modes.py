"""tools/infer.py and tools/export_model.py on a dygraph model, as a training config asks: the `Infer`
section's transforms and post-processing, classification of image files, and the Paddle Inference export
with the `Global` export keys. The engine calls them with the model it built."""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Mapping, Optional

import paddle

from .. import registry
from ..config import ConfigError, section
from ..data.transforms import build_transforms
from ..models.deploy import deploy_form
from ..output_paths import write_file_atomically
from .export import EXPORT_FORMATS, deploy_transforms, export_inference_model, inference_config
from .postprocess import Topk
from .predict import classify_files, collect_images, dygraph_runner

logger = logging.getLogger("ppcls_ext")


def infer_transforms(config: Mapping[str, Any], model_name: Optional[str] = None) -> List[Any]:
    """Infer.transforms (PaddleClas's choice), else the evaluation transforms in CHW layout, else (neither
    given) the evaluation preprocessing declared for zoo model `model_name` (`registry.eval_transform_ops`).
    A difference between the first two is logged: the deployed model would not see what was evaluated."""
    infer = (config.get("Infer") or {}).get("transforms")
    eval_path = "DataLoader.Eval.dataset.transform_ops"
    if not infer and not section(config, eval_path, required=False) and model_name in registry.list_models():
        logger.info("no Infer.transforms or %s: using %s's declared evaluation preprocessing", eval_path, model_name)
        return registry.eval_transform_ops(model_name) + [{"ToCHWImage": None}]
    evaluated = section(config, eval_path, required=not infer)
    if infer and evaluated and deploy_transforms(infer) != deploy_transforms(evaluated):
        logger.warning("Infer.transforms differ from DataLoader.Eval.dataset.transform_ops; "
                       "inference uses Infer.transforms")
    return list(infer) if infer else list(evaluated) + [{"ToCHWImage": None}]


def postprocess(config: Mapping[str, Any], class_num: int) -> Topk:
    """`Infer.PostProcess` (Topk, with the label list a model of `class_num` classes is expected to have)."""
    post = dict((config.get("Infer") or {}).get("PostProcess") or {})
    name = post.pop("name", "Topk")
    if name != "Topk":
        raise ConfigError(f"Infer.PostProcess.name: unknown post-process {name!r}; valid: Topk")
    topk = Topk(post.get("topk", 5), post.get("class_id_map_file", "ppcls/utils/imagenet1k_label_list.txt"))
    named = set(topk.label_names or ())
    if named and named != set(range(class_num)):
        logger.warning("Infer.PostProcess.class_id_map_file names %d classes (ids %d-%d), the model has %d "
                       "(Arch.class_num): is it this model's label list?", len(named), min(named), max(named), class_num)
    return topk


def classify_images(model: paddle.nn.Layer, config: Mapping[str, Any], class_num: int,
                    json_path: Optional[str] = None) -> List[Dict[str, Any]]:
    """Classify `Infer.infer_imgs` (a file, a folder or a list); prints PaddleClas's result lines and,
    with `json_path`, writes the results as JSON ("-" for stdout)."""
    infer = section(config, "Infer")
    files = collect_images(section(infer, "infer_imgs"))
    transform = build_transforms(infer_transforms(config), "Infer.transforms")
    results = []
    for result in classify_files(dygraph_runner(model), files, transform, postprocess(config, class_num),
                                 int(infer.get("batch_size", 10))):
        results.append(result)
        if json_path != "-":
            print(result, flush=True)
    if json_path == "-":
        print(json.dumps(results, ensure_ascii=False, indent=2))
    elif json_path:
        write_file_atomically(json_path, json.dumps(results, ensure_ascii=False, indent=2), "--json")
    return results


def default_image_shape(model_name: str) -> List[int]:
    """[3, S, S] at the zoo model's evaluation size; other models need Global.image_shape."""
    try:
        size = registry.get_model_config(model_name).eval_size
    except registry.UnknownModelError as error:
        raise ConfigError(f"Global.image_shape: needed to export {model_name}, which is not in ppcls_ext's zoo "
                          f"(e.g. [3, 224, 224])") from error
    return [3, size, size]


def export_model(model: paddle.nn.Layer, model_name: str, config: Mapping[str, Any], class_num: int) -> str:
    """Paddle Inference model + inference.yml of `model` (registered as `model_name`) into
    Global.save_inference_dir; returns the folder."""
    glob = config.get("Global") or {}
    export_format = str(glob.get("export_format", "pir"))
    if export_format not in EXPORT_FORMATS:
        raise ConfigError(f"Global.export_format: must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}")
    save_dir = glob.get("save_inference_dir", "./inference")
    post = postprocess(config, class_num)
    names = [post.label_names.get(i, str(i)) for i in range(class_num)] if post.label_names else None
    image_shape = glob.get("image_shape") or default_image_shape(model_name)
    softmax = bool(glob.get("infer_add_softmax", True))
    description = inference_config(model_name, deploy_transforms(infer_transforms(config, model_name)), post.topk, names,
                                   image_shape, softmax)
    folded = bool(glob.get("export_deploy_form", True))
    path = export_inference_model(deploy_form(model) if folded else model, save_dir, description, softmax=softmax,
                                  export_format=export_format)
    logger.info("exported %s to %s (%s format)%s", model_name, path, export_format,
                " (deploy form: batch norms folded)" if folded else "")
    return path
