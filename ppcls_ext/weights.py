"""Loading weights into zoo models: local files or URLs (downloaded once into a cache), strictly checked.

Formats, told apart by their first bytes: Paddle's `.pdparams` (our layout or PaddleClas's), read by the
restricted unpickler of `safe_load` (a file that asks to run anything is refused before it runs); and,
for the EfficientNet families, PyTorch checkpoints and `.safetensors` files of efficientnet_pytorch, timm
and torchvision (`convert`), whose source numerics (padding, BN epsilon, activation) are set on the model.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import paddle

from .convert import (NUMERICS_KEY, LayoutError, Numerics, TorchFileError, apply_numerics, file_format,
                      import_weights, numerics_from_entry)
from .models import ImageClassifier
from .safe_load import load_paddle_file
from .safe_pickle import UnsafePickleError

logger = logging.getLogger("ppcls_ext")

PathLike = Union[str, os.PathLike]


class WeightsDownloadError(OSError):
    """A URL could not be fetched, or what arrived is incomplete or fails its checksum."""


class IncompatibleWeightsError(ValueError):
    """A checkpoint does not fit the model (missing, unexpected or mis-shaped tensors)."""


def cache_dir() -> Path:
    """Where downloaded weights live: $PPCLS_EXT_HOME/weights, default ~/.cache/ppcls_ext/weights."""
    home = os.environ.get("PPCLS_EXT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "ppcls_ext")
    return Path(home) / "weights"


def is_url(source: PathLike) -> bool:
    return str(source).startswith(("http://", "https://"))


def file_sha256(path: PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, directory: Optional[PathLike] = None, sha256: Optional[str] = None, timeout: float = 60.0) -> Path:
    """Fetch `url` into `directory` (default `cache_dir()`) unless a file of that name is already there,
    and return its path. The file appears only once complete: the size announced by the server and, when
    given, the SHA-256 must match."""
    directory = Path(directory) if directory is not None else cache_dir()
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise WeightsDownloadError(f"cannot tell a file name from URL {url!r}")
    target = directory / name
    if target.exists() and (sha256 is None or file_sha256(target) == sha256):
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{name}.{os.getpid()}.part"
    logger.info("downloading %s to %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            announced = response.headers.get("Content-Length")
            shutil.copyfileobj(response, out, 1 << 20)
        received = partial.stat().st_size
        if announced is not None and received != int(announced):
            raise WeightsDownloadError(f"download of {url} is incomplete: {received} of {announced} bytes")
        if sha256 is not None and file_sha256(partial) != sha256:
            raise WeightsDownloadError(f"download of {url} does not match its SHA-256 {sha256}")
        os.replace(partial, target)
    except (urllib.error.URLError, OSError) as error:
        if isinstance(error, WeightsDownloadError):
            raise
        raise WeightsDownloadError(f"could not download weights from {url}: {error}") from error
    finally:
        partial.unlink(missing_ok=True)
    return target


def resolve_path(source: PathLike) -> Path:
    """A local weights file; like PaddleClas, `name` also finds `name.pdparams`."""
    path = Path(source)
    if not path.is_file() and Path(f"{source}.pdparams").is_file():
        path = Path(f"{source}.pdparams")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {source} (nor {source}.pdparams)")
    return path


def load_state_dict(path: PathLike) -> Dict[str, object]:
    """Read a `.pdparams` file (safely: see `safe_load`), checking that it holds a state dict. A converted
    file's record of its source numerics (`NUMERICS_KEY`) stays in the result; see `read_weights`."""
    try:
        state = load_paddle_file(path)
    except UnsafePickleError as error:
        raise IncompatibleWeightsError(str(error)) from error
    except Exception as error:  # unpickling raises many types for foreign or truncated files
        raise IncompatibleWeightsError(f"{path} is not a readable Paddle state dict (.pdparams): {error}") from error
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise IncompatibleWeightsError(f"{path} does not hold a state dict (name -> tensor), got {type(state).__name__}")
    return dict(state)


def read_weights(model: ImageClassifier, path: PathLike, origin: Optional[str] = None) -> Tuple[Dict[str, object], Optional[Numerics], str]:
    """(state dict under our or PaddleClas's keys, numerics of the weights' source if known, a label naming
    the file and its layout) for a `.pdparams`, PyTorch or `.safetensors` file. `origin`: the source model's
    name where a PyTorch layout needs it (timm's `tf_` ports)."""
    try:
        if file_format(path) == "other":
            state = load_state_dict(path)
            entry = state.pop(NUMERICS_KEY, None)
            return state, None if entry is None else numerics_from_entry(entry, str(path)), str(path)
        imported = import_weights(model, path, origin)
    except (UnsafePickleError, TorchFileError, LayoutError, ValueError) as error:
        if isinstance(error, IncompatibleWeightsError):
            raise
        raise IncompatibleWeightsError(str(error)) from error
    return dict(imported.state), imported.numerics, f"{path} ({imported.layout} layout)"


def set_source_numerics(model: ImageClassifier, numerics: Numerics, label: str) -> List[str]:
    """Make `model` compute as the weights' source did (logged), returning what changed."""
    changes = apply_numerics(model, numerics)
    if changes:
        logger.info("%s was trained with %s; set on the model (%s). Build it so directly with padding=%r, bn_epsilon=%g "
                    "(config: Arch.padding, Arch.bn_epsilon)", label, numerics.describe(), ", ".join(changes),
                    numerics.padding, numerics.bn_epsilon)
    else:
        logger.info("%s was trained with %s, as the model computes", label, numerics.describe())
    return changes


def _shape(value: object) -> tuple:
    return tuple(int(d) for d in getattr(value, "shape", ()))


def _listing(keys: List[str], limit: int = 5) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(model: ImageClassifier, state_dict: Mapping[str, object], source: str = "state dict",
                 allow_classifier_mismatch: bool = True) -> List[str]:
    """Load `state_dict` (our layout or PaddleClas's) into `model`, strictly: every tensor must be present
    with its shape, except the classifier's, which is left as initialised when the checkpoint's has
    another class count or none (fine-tuning) — unless `allow_classifier_mismatch` is False (evaluation,
    inference, export), where that would give a random classifier. Returns the classifier keys not loaded."""
    state = model.convert_state_dict(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and _shape(state[k]) != _shape(expected[k])]
    skipped = [k for k in missing + unexpected + mismatched if k.startswith(model.classifier_prefixes)]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        keys = [k for k in keys if k not in skipped]
        if label == "wrong shape":
            keys = [f"{k} {_shape(state[k])} vs {_shape(expected[k])}" for k in keys]
        if keys:
            problems.append(f"{label} {len(keys)}: {_listing(keys)}")
    if problems:
        raise IncompatibleWeightsError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    if skipped and not allow_classifier_mismatch:
        counts = [(_shape(state[k])[-1], _shape(expected[k])[-1]) for k in skipped if k in state and k in expected]
        found = f"is for {counts[0][0]} classes, the model has {counts[0][1]}" if counts else f"lacks {_listing(skipped)}"
        raise IncompatibleWeightsError(f"{source}: its classifier {found} (Arch.class_num); only training may leave "
                                       "a classifier randomly initialised")
    if skipped:
        logger.warning("%s: classifier does not match the model's class_num; left as initialised: %s", source, _listing(skipped))
    loaded = {k: v for k, v in state.items() if k in expected and k not in skipped}
    model.set_state_dict({**expected, **loaded})  # complete, so that Paddle does not warn about the skipped keys
    return skipped


def load_pretrained(model: ImageClassifier, source: PathLike, sha256: Optional[str] = None,
                    origin: Optional[str] = None, allow_classifier_mismatch: bool = True) -> List[str]:
    """Load weights from a local path or a URL (cached; a download that is not a weights file is deleted
    again so that the next attempt fetches it afresh): a `.pdparams`, or for EfficientNets a PyTorch /
    `.safetensors` checkpoint (see `read_weights`), whose source numerics are then set on the model.
    Returns the skipped classifier keys (see `load_weights` for `allow_classifier_mismatch`)."""
    if is_url(source):
        path = download(str(source), sha256=sha256)
        try:
            state, numerics, label = read_weights(model, path, origin)
        except IncompatibleWeightsError:
            path.unlink(missing_ok=True)
            raise
    else:
        path = resolve_path(source)
        state, numerics, label = read_weights(model, path, origin)
    skipped = load_weights(model, state, source=label, allow_classifier_mismatch=allow_classifier_mismatch)
    if numerics is not None:  # after a load that fitted: rebuilt convolutions keep the loaded weights
        set_source_numerics(model, numerics, label)
    logger.info("loaded weights from %s", label)
    return skipped


def randomize_(state_dict: Mapping[str, paddle.Tensor], seed: int = 0) -> Mapping[str, paddle.Tensor]:
    """Overwrite every tensor in place with random values of a realistic scale (weights ~ 1/sqrt(fan_in),
    BN scales near 1, running statistics away from their 0/1 defaults). Freshly initialised models give
    near-zero logits through their heads; comparisons between implementations or backends need outputs
    that exercise every tensor."""
    rng = np.random.default_rng(seed)
    for key, tensor in state_dict.items():
        shape = tuple(tensor.shape)
        values = rng.standard_normal(shape).astype("float32")
        if key.endswith("_variance"):
            values = np.abs(values) + 0.5
        elif key.endswith(("_mean", "bias")):
            values *= 0.1
        elif len(shape) > 1:
            values /= np.sqrt(np.prod(shape[1:]) if len(shape) == 4 else shape[0])
        else:
            values = 1.0 + 0.1 * values
        tensor.set_value(paddle.to_tensor(values))
    return state_dict
