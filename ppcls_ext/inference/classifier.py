"""A deployed classifier: an export, the preprocessing it was evaluated with (its inference.yml), a
backend, and top-k post-processing; plus backend selection by measurement."""
from __future__ import annotations

import importlib.util
import logging
import os
import statistics
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from ..config import ConfigError, read_yaml_file
from ..data.transforms import build_transforms
from ..errors import UserError
from ..serving.export import deploy_transforms
from ..serving.postprocess import Topk
from ..serving.predict import classify_files
from ..timing import SETTLE_SECONDS, alternate, median_ms
from .int8_model import INT8_BACKEND, INT8_FILE, int8_model_file
from .onnx_backend import OnnxPredictor
from .options import DeploymentError, InferenceOptions
from .paddle_backend import PaddlePredictor, computes_channels_last, warmup_shapes
from .worker import BackendProcess, build_cpu_predictor

logger = logging.getLogger("ppcls_ext")
DESCRIPTION_FILE = "inference.yml"


class ExportError(UserError, ValueError):
    """An export that cannot be loaded (a file cut short, overwritten or not an export); the message
    names the folder and quotes the backend's error."""


def read_description(model_dir: str) -> Optional[Dict[str, Any]]:
    """The export's inference.yml (preprocessing, top-k, labels), or None for exports without one."""
    if not os.path.isdir(model_dir):
        raise ConfigError(f"{model_dir} holds no Paddle inference model: "
                          f"{'not a directory' if os.path.exists(model_dir) else 'no such directory'}")
    path = os.path.join(model_dir, DESCRIPTION_FILE)
    if not os.path.isfile(path):
        return None
    try:
        description = read_yaml_file(path)
    except yaml.YAMLError as error:
        raise ExportError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(description, dict) or "PreProcess" not in description:
        raise ConfigError(f"{path} is not an export description (no PreProcess section)")
    return description


def load_predictor(model_dir: str, options: InferenceOptions, image_shape: Sequence[int], batch_size: int):
    """`create_predictor`, with a file that the backend cannot read reported as an ExportError naming the
    folder (Paddle Inference and ONNX Runtime raise RuntimeError, ValueError or their own types). TensorRT's
    failures (library, engine build, cached engine) arrive as DeploymentError (TensorRTError) naming them."""
    try:
        return create_predictor(model_dir, options, image_shape, batch_size)
    except (DeploymentError, ConfigError):
        raise
    except Exception as error:  # the backends' own types; the first line says what they found
        first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ExportError(f"{model_dir}: the exported model cannot be loaded; a file is damaged, cut short or not "
                          f"from tools/export_model.py ({type(error).__name__}: {first_line})") from error


#: how `backend: auto` times each candidate: rounds of (warm-up, timed calls), alternating candidates
AUTO_ROUNDS, AUTO_CALLS, AUTO_WARMUP = 3, 3, 1


def cpu_candidates(model_dir: str, options: InferenceOptions) -> List[Tuple[str, Callable[[], Any]]]:
    """The CPU backends worth measuring, as (name, builder): Paddle Inference with and without oneDNN,
    and ONNX Runtime when installed, on the float model and on the folder's accepted int8 model if it has
    one (channels-last exports: Paddle Inference without oneDNN only)."""
    names = []
    channels_last = computes_channels_last(model_dir)
    names += ["paddle-cpu"] if channels_last else ["paddle-cpu", "paddle-cpu-onednn"]
    if channels_last:
        logger.info("backend selection: %s computes channels-last (NHWC): Paddle Inference without oneDNN only", model_dir)
    elif importlib.util.find_spec("onnxruntime") is not None:
        names.append("onnxruntime")
        if int8_model_file(model_dir) is not None:
            names.append(INT8_BACKEND)
    else:
        logger.info("backend selection: onnxruntime is not installed; measuring Paddle Inference only")
    return [(name, lambda name=name: build_cpu_predictor(model_dir, name, options)) for name in names]


def time_candidates(model_dir: str, options: InferenceOptions, names: Sequence[str],
                    shape: Sequence[int]) -> Dict[str, List[float]]:
    """Seconds per call of each backend in `names`, each served alone by its own worker process (as it
    would be deployed), the candidates' blocks alternating with a pause between them."""
    workers: Dict[str, BackendProcess] = {}
    try:
        for name in names:
            workers[name] = BackendProcess(model_dir, name, options)
        blocks = {name: (lambda worker=worker: worker.time(shape, AUTO_CALLS, AUTO_WARMUP)) for name, worker in workers.items()}
        return alternate(blocks, AUTO_ROUNDS, settle=SETTLE_SECONDS)
    finally:
        for worker in workers.values():
            worker.close()


def fastest_backend(model_dir: str, options: InferenceOptions, shape: Sequence[int]):
    """Time every CPU candidate on a batch of `shape`, each in its own process; log the table and
    return the fastest, built in this process."""
    candidates = dict(cpu_candidates(model_dir, options))
    samples = time_candidates(model_dir, options, list(candidates), shape)
    ranking = sorted(samples, key=lambda name: statistics.median(samples[name]))
    table = ", ".join(f"{name} {median_ms(samples[name]):.2f} ms" for name in ranking)
    logger.info("backend selection (batch %s, median, each backend in its own process): %s -> using %s",
                tuple(shape), table, ranking[0])
    return candidates[ranking[0]]()


def create_predictor(model_dir: str, options: InferenceOptions, image_shape: Sequence[int] = (3, 224, 224),
                     batch_size: int = 1):
    """A predictor for `options.backend`; "auto" on CPU measures the candidates on a batch of the
    export's nominal size and keeps the fastest (on GPU it means Paddle Inference). On CPU a folder with an
    accepted int8 model (deploy/slim/quant_post_static.py) is served by that model unless backend is auto."""
    if options.backend == "onnxruntime" and options.device != "cpu":
        raise DeploymentError("the ONNX Runtime backend here runs on CPU; use backend paddle for GPU")
    if options.backend == "auto" and options.device == "cpu":
        return fastest_backend(model_dir, options, (batch_size, *image_shape))
    if options.device == "cpu" and int8_model_file(model_dir) is not None:
        logger.info("%s holds an int8 model (%s): serving it with ONNX Runtime; backend auto serves it only where it is "
                    "faster than the float model", model_dir, INT8_FILE)
        return build_cpu_predictor(model_dir, INT8_BACKEND, options)
    if options.backend == "onnxruntime":
        return OnnxPredictor(model_dir, options.cpu_threads, options.cpu_spin_wait)
    trt = options.tensorrt
    if trt is None:
        return PaddlePredictor(model_dir, options)
    return PaddlePredictor(model_dir, options, warmup_shapes(trt.collect_sizes, image_shape, trt.max_batch_size),
                           serving_shape=(batch_size, *image_shape))


def describe_ops(ops: Sequence[Dict[str, Any]]) -> str:
    """Preprocessing ops in one line: `ResizeImage(resize_short=256), CropImage(size=224), ...`."""
    parts = []
    for op in ops:
        for name, args in op.items():
            parts.append(name + ("(" + ", ".join(f"{k}={v}" for k, v in (args or {}).items()) + ")" if args else ""))
    return ", ".join(parts)


class DeployedClassifier:
    """Classifies image files with an export of tools/export_model.py: its own preprocessing (so a
    deployed model sees exactly what it was evaluated on), the chosen backend, top-k with names."""

    def __init__(self, model_dir: str, options: Optional[InferenceOptions] = None, batch_size: int = 1,
                 topk: Optional[int] = None, class_id_map_file: Optional[str] = None,
                 preprocess: Optional[List[Any]] = None):
        self.model_dir = model_dir
        self.options = options or InferenceOptions()
        self.batch_size = max(1, int(batch_size))
        description = read_description(model_dir)
        ops = self._preprocessing(model_dir, description, preprocess)
        self.transform = build_transforms([{"DecodeImage": {"to_rgb": True, "channel_first": False}}] + ops,
                                          f"{model_dir}: PreProcess.transform_ops")
        glob = (description or {}).get("Global", {})
        self.softmax_in_model = bool(glob.get("softmax", True))
        top = ((description or {}).get("PostProcess") or {}).get("Topk") or {}
        self.postprocess = Topk(int(topk or top.get("topk", 5)), class_id_map_file,
                                label_names=None if class_id_map_file else top.get("label_list"))
        self.image_shape = tuple(glob.get("image_shape") or (3, 224, 224))
        self.predictor = load_predictor(model_dir, self.options, self.image_shape, self.batch_size)

    @staticmethod
    def _preprocessing(model_dir: str, description: Optional[Dict[str, Any]],
                       configured: Optional[List[Any]]) -> List[Any]:
        """The export's ops win; a deploy config's PreProcess serves exports without inference.yml."""
        if description is None:
            if not configured:
                raise ConfigError("this export has no inference.yml: give PreProcess.transform_ops in the deploy config")
            ops = deploy_transforms(configured)
            logger.warning("%s has no inference.yml (the preprocessing the model was evaluated with): assuming the "
                           "deploy config's PreProcess.transform_ops, as PaddleClas's predictor does: %s; if the model "
                           "was trained otherwise its results are wrong: re-export it with tools/export_model.py",
                           model_dir, describe_ops(ops))
            return ops
        exported = description["PreProcess"]["transform_ops"]
        if configured and deploy_transforms(configured) != deploy_transforms(exported):
            logger.warning("the deploy config's PreProcess differs from the export's inference.yml; using the "
                           "export's (the preprocessing the model was evaluated with)")
        return list(exported)

    @property
    def backend(self) -> str:
        return self.predictor.name

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        outputs = self.predictor.run(batch)
        if self.softmax_in_model:
            return outputs
        shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def classify(self, files: Sequence[str]) -> Iterable[dict]:
        """Results per file, in order (see `classify_files`)."""
        return classify_files(self.probabilities, files, self.transform, self.postprocess, self.batch_size)
