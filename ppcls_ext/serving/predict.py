"""Classify image files with a dygraph model: gather the files, preprocess, batch, top-k."""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Sequence, Union

import numpy as np
import paddle
import paddle.nn.functional as F

from ..config import ConfigError
from ..data.image_files import walk_images
from ..data.image_io import read_image_file
from .postprocess import Topk


def collect_images(source: Union[str, Sequence[str]]) -> List[str]:
    """Files to classify from one path or a list of paths: a file named explicitly is always taken (the
    decoder reports a non-image); a folder is walked for image files (`walk_images`)."""
    paths = [source] if isinstance(source, str) else list(source)
    images: List[str] = []
    for path in paths:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"Infer.infer_imgs: expected an image or folder path (or a list of them), got {path!r}")
        if os.path.isdir(path):
            images += walk_images(path)
        elif os.path.isfile(path):
            images.append(path)
        else:
            raise ConfigError(f"Infer.infer_imgs: no such file or directory: {path}")
    if not images:
        raise ConfigError(f"Infer.infer_imgs: no image files found in {paths}")
    return images


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def classify_files(run_batch: Callable[[np.ndarray], np.ndarray], files: Sequence[str],
                   transform: Callable[[bytes], np.ndarray], postprocess: Topk, batch_size: int = 10) -> Iterable[dict]:
    """One result per file, in order: PaddleClas's {class_ids, scores, file_name, label_names}, or
    {file_name, error} for a file that cannot be read or decoded (the others still get results).
    `run_batch` maps a preprocessed NCHW batch to class probabilities; images of different sizes (no
    resize in `transform`) are batched by size."""
    for chunk in _batches(files, max(1, batch_size)):
        images, errors = {}, {}
        for path in chunk:
            try:
                images[path] = transform(read_image_file(path))
            except Exception as error:  # any decode/transform failure is reported for that file only
                errors[path] = f"{type(error).__name__}: {error}"
        results = {}
        for paths in _same_shape_groups(images):
            batch = np.stack([images[path] for path in paths])
            results.update((r["file_name"], r) for r in postprocess(run_batch(batch), paths))
        for path in chunk:
            yield results.get(path) or {"file_name": path, "error": errors[path]}


def _same_shape_groups(images: Mapping[str, np.ndarray]) -> List[List[str]]:
    """The keys of `images` grouped by array shape, in order of first appearance."""
    groups: Dict[tuple, List[str]] = {}
    for path, image in images.items():
        groups.setdefault(image.shape, []).append(path)
    return list(groups.values())


def dygraph_runner(model: paddle.nn.Layer) -> Callable[[np.ndarray], np.ndarray]:
    """`run_batch` for a dygraph model: eval mode, no gradients, softmax."""
    model.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return F.softmax(model(paddle.to_tensor(batch)), axis=-1).numpy()

    return run
