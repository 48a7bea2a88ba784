"""Top-k post-processing with class names, in PaddleClas's result format."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..config import ConfigError
from ..data.dataset import parse_label, text_lines

IMAGENET_LABELS = "ppcls/utils/imagenet1k_label_list.txt"


def resolve_label_file(path: Optional[str]) -> Optional[str]:
    """A class-id map file; PaddleClas's repository-relative `ppcls/utils/...` paths (as in upstream
    configs) are also looked up in the installed paddleclas package, which ships them."""
    if path is None or os.path.isfile(path):
        return path
    marker = path.replace("\\", "/").find("ppcls/")
    if marker >= 0:
        import paddleclas

        candidate = os.path.join(os.path.dirname(paddleclas.__file__), path[marker:])
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"class_id_map_file not found: {path}")


def read_label_names(path: str) -> Dict[int, str]:
    """`<id> <name...>` lines -> {id: name}; errors name the line (an id not in ASCII digits, an id given
    twice, text that is not UTF-8)."""
    names: Dict[int, str] = {}
    for number, line in text_lines(path):
        line = line.strip()
        if not line:
            continue
        parts = line.split(None, 1)
        class_id = parse_label(parts[0])
        if class_id is None:
            raise ConfigError(f"{path}, line {number}: expected '<class id> <name>' with the id in ASCII digits, got {line!r}")
        if class_id in names:
            raise ConfigError(f"{path}, line {number}: class id {class_id} is named twice ({names[class_id]!r}, {parts[-1]!r})")
        names[class_id] = parts[1] if len(parts) > 1 else parts[0]
    return names


class Topk:
    """Per image: the `topk` class ids and scores, best first, with label names when a map is given."""

    def __init__(self, topk: int = 5, class_id_map_file: Optional[str] = IMAGENET_LABELS,
                 label_names: Optional[Sequence[str]] = None):
        if not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"PostProcess.Topk.topk must be a positive integer, got {topk!r}")
        self.topk = topk
        if label_names is not None:
            self.label_names: Optional[Dict[int, str]] = dict(enumerate(label_names))
        else:
            path = resolve_label_file(class_id_map_file)
            self.label_names = read_label_names(path) if path else None

    def __call__(self, probabilities: np.ndarray, file_names: Sequence[str]) -> List[dict]:
        results = []
        k = min(self.topk, probabilities.shape[-1])
        for row, file_name in zip(probabilities, file_names):
            if not np.isfinite(row).all():  # NaN scores would rank arbitrary classes
                results.append({"file_name": file_name, "error": "the model's output holds NaN or Inf; no scores"})
                continue
            ids = np.argsort(-row, kind="stable")[:k]
            result = {"class_ids": [int(i) for i in ids], "scores": [round(float(row[i]), 5) for i in ids],
                      "file_name": file_name}
            if self.label_names is not None:
                result["label_names"] = [self.label_names.get(int(i), str(int(i))) for i in ids]
            results.append(result)
        return results
