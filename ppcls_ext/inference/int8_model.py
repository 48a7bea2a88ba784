"""The int8 model that `deploy/slim/quant_post_static.py` adds to an export folder: an ONNX QDQ model beside the
float export, accepted by the tool's accuracy gate, served by ONNX Runtime on CPU.

The folder's inference.yml says so in its `Int8` section (model file, the gate's numbers, the latencies the tool
measured); a file without an accepted gate there is never served."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import yaml

logger = logging.getLogger("ppcls_ext")

INT8_FILE = "inference_int8.onnx"
#: the CPU backend name of the int8 model (ONNX Runtime running the QDQ model)
INT8_BACKEND = "onnxruntime-int8"
#: the inference.yml section that describes the int8 model
SECTION = "Int8"


def int8_description(model_dir: str) -> Optional[Dict[str, Any]]:
    """The `Int8` section of the folder's inference.yml when it holds an accepted int8 model, else None."""
    path = os.path.join(model_dir, "inference.yml")
    if not os.path.isfile(os.path.join(model_dir, INT8_FILE)) or not os.path.isfile(path):
        return None
    with open(path, "r", encoding="utf-8") as f:
        section = (yaml.safe_load(f) or {}).get(SECTION)
    if not isinstance(section, dict) or section.get("model_file") != INT8_FILE:
        return None
    if section.get("accepted") is not True:
        logger.warning("%s: %s is not marked as accepted by the accuracy gate in inference.yml; serving the float model",
                       model_dir, INT8_FILE)
        return None
    return section


def int8_model_file(model_dir: str) -> Optional[str]:
    """The path of the folder's accepted int8 model, or None."""
    return os.path.join(model_dir, INT8_FILE) if int8_description(model_dir) is not None else None
