"""Loading weights into zoo models: local files or URLs (downloaded once into a cache), strictly checked.

Formats, told apart by their first bytes: Paddle's `.pdparams` (our layout or PaddleClas's), read by the
restricted unpickler of `safe_load` (a file that asks to run anything is refused before it runs); and,
for the EfficientNet families, PyTorch checkpoints and `.safetensors` files of efficientnet_pytorch, timm
and torchvision (`convert`). A file is read before the model is built: the numerics its weights were
trained with (padding, BN epsilon: told by a foreign file's layout, recorded in a `.pdparams` we wrote)
are build options (`registry.create_model`, the engine); loading them into a model built otherwise is an
error.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import paddle
import paddle.nn as nn

from .config import ConfigError
from .convert import (NUMERICS_KEY, ForeignCheckpoint, LayoutError, Numerics, TorchFileError, file_format,
                      numerics_entry, read_foreign_checkpoint, recorded_numerics)
from .errors import UserError
from .models import ImageClassifier
from .output_paths import replaced_atomically
from .safe_load import load_paddle_file
from .safe_pickle import UnsafePickleError

logger = logging.getLogger("ppcls_ext")

PathLike = Union[str, os.PathLike]


class WeightsDownloadError(UserError, OSError):
    """A URL could not be fetched, or what arrived is incomplete or fails its checksum."""


class IncompatibleWeightsError(UserError, ValueError):
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


#: set to 1 to allow weights from plain-http URLs (a file fetched over http can be replaced on the way)
ALLOW_HTTP_ENV = "PPCLS_EXT_ALLOW_HTTP"
PIN_SUFFIX = ".sha256"
#: torch.hub's convention, used by torchvision's weights on download.pytorch.org: `<name>-<first hex digits
#: of the file's SHA-256>.<ext>`; torch.hub checks that prefix (check_hash), and so do we for those hosts
_HUB_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
HASH_IN_NAME_HOSTS = ("download.pytorch.org",)


@dataclass(frozen=True)
class Checksum:
    """An expected SHA-256, or its leading hex digits as a file name publishes them, and where it comes from
    ("given", "published in its file name")."""

    digest: str
    origin: str

    def matches(self, actual: str) -> bool:
        return actual.startswith(self.digest)


def sha256_argument(value: Optional[str], what: str = "sha256") -> Optional[str]:
    """A user-given SHA-256 as 64 lower-case hex digits (a ValueError naming `what` otherwise). A digest of
    decimal digits only reaches us from YAML or `-o` as an int: its zeros are restored."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10 ** 64:
        value = f"{value:064d}"
    text = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(f"{what} must be a SHA-256 (64 hex digits; quote it in YAML), got {value!r}")
    return text


def sha256_value(value: Any, where: str) -> Any:
    """A config check (see `config.ValueCheck`): a SHA-256 of 64 hex digits, or null."""
    try:
        sha256_argument(value, where)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return value


def published_checksum(url: str) -> Optional[Checksum]:
    """The checksum a URL publishes itself: torch.hub-style names on the hosts that use them."""
    parts = urllib.parse.urlparse(url)
    match = _HUB_NAME.search(parts.path)
    if parts.hostname in HASH_IN_NAME_HOSTS and match:
        return Checksum(match.group(1), "published in its file name")
    return None


def cache_entry(url: str, directory: Optional[PathLike] = None) -> Path:
    """The cache file of `url`: `<cache>/<first 16 hex digits of the SHA-256 of the whole URL>/<file name>`,
    so that two URLs with one file name never share an entry; its digest is pinned beside it."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name or name in (".", ".."):
        raise WeightsDownloadError(f"cannot tell a file name from URL {url!r}")
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return (Path(directory) if directory is not None else cache_dir()) / key / name


def pin_path(entry: Path) -> Path:
    return entry.with_name(entry.name + PIN_SUFFIX)


def _pinned(entry: Path) -> Optional[str]:
    """The digest recorded when `entry` was downloaded (sha256sum's format), None if absent or unreadable."""
    try:
        text = pin_path(entry).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0] if text and re.fullmatch(r"[0-9a-f]{64}", text[0]) else None


def forget(entry: Path) -> None:
    """Delete a cache entry and its pin."""
    for path in (entry, pin_path(entry)):
        path.unlink(missing_ok=True)


def _check_scheme(url: str, allow_http: bool) -> None:
    scheme = urllib.parse.urlparse(url).scheme
    if scheme != "https" and not (scheme == "http" and allow_http):
        raise WeightsDownloadError(f"refusing to download {url}: weights are fetched over https only (over {scheme or 'it'}, "
                                   f"a file can be replaced on the way); use https, or set {ALLOW_HTTP_ENV}=1 to allow http")


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but not from https to anything else unless http is allowed."""

    def __init__(self, allow_http: bool):
        super().__init__()
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (urllib's signature)
        _check_scheme(newurl, self.allow_http)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, target: Path, expected: Optional[Checksum], timeout: float, allow_http: bool) -> str:
    """Download `url` to `target` whole or not at all; its SHA-256, checked against `expected`."""
    digest = hashlib.sha256()
    opener = urllib.request.build_opener(_NoDowngrade(allow_http))
    with replaced_atomically(target) as partial:
        with opener.open(url, timeout=timeout) as response, open(partial, "wb") as out:
            announced = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        received = os.path.getsize(partial)
        if announced is not None and received != int(announced):
            raise WeightsDownloadError(f"download of {url} is incomplete: {received} of {announced} bytes")
        if expected is not None and not expected.matches(digest.hexdigest()):
            raise WeightsDownloadError(f"download of {url} does not match its SHA-256 ({expected.origin}: "
                                       f"{expected.digest}, got {digest.hexdigest()}); nothing was kept")
    return digest.hexdigest()


def download(url: str, directory: Optional[PathLike] = None, sha256: Optional[str] = None, timeout: float = 60.0,
             allow_http: Optional[bool] = None) -> Path:
    """The cached file of `url` (`cache_entry`), downloaded when absent. Verified against `sha256` when given,
    else against a checksum the URL publishes (`published_checksum`), and always against the digest
    pinned at its first download; an entry that fails is deleted and fetched again, never served. Only
    https unless `allow_http` (default: ${ALLOW_HTTP_ENV}=1)."""
    allow_http = os.environ.get(ALLOW_HTTP_ENV) == "1" if allow_http is None else allow_http
    _check_scheme(url, allow_http)
    try:
        given = sha256_argument(sha256)
    except ValueError as error:
        raise WeightsDownloadError(str(error)) from None
    expected = Checksum(given, "given") if given else published_checksum(url)
    target = cache_entry(url, directory)
    if target.exists():
        actual, pinned = file_sha256(target), _pinned(target)
        if actual == pinned and (expected is None or expected.matches(actual)):
            return target
        why = ("has no record of a complete download" if pinned is None else "changed since it was downloaded"
               if actual != pinned else f"does not match the SHA-256 ({expected.origin}) {expected.digest}")
        logger.warning("cached weights %s %s: deleted, downloading %s again", target, why, url)
        forget(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, target)
    try:
        digest = _fetch(url, target, expected, timeout, allow_http)
        with replaced_atomically(pin_path(target)) as partial:
            Path(partial).write_text(f"{digest}  {target.name}\n", encoding="ascii")
    except (urllib.error.URLError, OSError, ValueError) as error:
        forget(target)
        if isinstance(error, WeightsDownloadError):
            raise
        raise WeightsDownloadError(f"could not download weights from {url}: {error}") from error
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
    """Read a `.pdparams` file (safely: see `safe_load`), checking that it holds a state dict. A record of
    the numerics (`NUMERICS_KEY`) stays in the result; see `read_weights_file`."""
    try:
        state = load_paddle_file(path)
    except UnsafePickleError as error:
        raise IncompatibleWeightsError(str(error)) from error
    except Exception as error:  # unpickling raises many types for foreign or truncated files
        raise IncompatibleWeightsError(f"{path} is not a readable Paddle state dict (.pdparams): {error}") from error
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise IncompatibleWeightsError(f"{path} does not hold a state dict (name -> tensor), got {type(state).__name__}")
    return dict(state)


@dataclass(frozen=True)
class WeightsFile:
    """A weights file as read, before any model is built: a `.pdparams` (`state`, under our or PaddleClas's
    keys) or a PyTorch / safetensors checkpoint (`foreign`, under its library's keys), and the numerics
    the weights were trained with - the build options a model needs to compute as their source did (None:
    not recorded, i.e. the model's defaults)."""

    path: Path
    numerics: Optional[Numerics]
    state: Optional[Dict[str, object]] = None
    foreign: Optional[ForeignCheckpoint] = None

    @property
    def label(self) -> str:
        """The file, and the layout of a foreign one, for messages."""
        return str(self.path) if self.foreign is None else f"{self.path} ({self.foreign.layout.name} layout)"

    def state_for(self, model: ImageClassifier) -> Dict[str, object]:
        """The tensors under `model`'s (or PaddleClas's) key names. A foreign checkpoint comes with numerics, so
        only a model built with numerics takes one (the EfficientNet families, whose key layouts these are)."""
        if self.foreign is None:
            return dict(self.state or {})
        if model_numerics(model) is None:
            raise IncompatibleWeightsError(f"{self.path}: PyTorch / safetensors weights import into EfficientNet, "
                                           f"EfficientNetV2 and EfficientNet-Lite models, not {type(model).__name__}")
        try:
            return self.foreign.to_model(model)
        except LayoutError as error:
            raise IncompatibleWeightsError(str(error)) from error


def _read_file(path: Path, origin: Optional[str]) -> WeightsFile:
    try:
        if file_format(path) == "other":
            state = load_state_dict(path)
            numerics = recorded_numerics(state, str(path))
            state.pop(NUMERICS_KEY, None)
            return WeightsFile(path, numerics, state=state)
        foreign = read_foreign_checkpoint(path, origin)
    except (UnsafePickleError, TorchFileError, LayoutError, ValueError) as error:
        if isinstance(error, IncompatibleWeightsError):
            raise
        raise IncompatibleWeightsError(str(error)) from error
    return WeightsFile(path, foreign.numerics, foreign=foreign)


def read_weights_file(source: PathLike, sha256: Optional[str] = None, origin: Optional[str] = None,
                      allow_http: Optional[bool] = None) -> WeightsFile:
    """Read a weights file from a local path or a URL (cached and verified, see `download`; a download that
    is not a weights file is deleted again so that the next attempt fetches it afresh): a `.pdparams`, or
    for EfficientNets a PyTorch / `.safetensors` checkpoint of efficientnet_pytorch, timm or torchvision.
    `sha256`: the file's expected SHA-256, checked for local files too. `origin`: the source model's name
    where a PyTorch layout needs it (timm's `tf_` ports)."""
    try:
        sha256 = sha256_argument(sha256)
    except ValueError as error:
        raise IncompatibleWeightsError(str(error)) from None
    if not is_url(source):
        path = resolve_path(source)
        if sha256 is not None:
            expected, actual = sha256, file_sha256(path)
            if actual != expected:
                raise IncompatibleWeightsError(f"{path}: its SHA-256 is {actual}, not the expected {expected}")
        return _read_file(path, origin)
    path = download(str(source), sha256=sha256, allow_http=allow_http)
    try:
        return _read_file(path, origin)
    except IncompatibleWeightsError:
        forget(path)
        raise


def model_numerics(model: nn.Layer) -> Optional[Numerics]:
    """The numerics `model` says it was built with (`ImageClassifier.numerics`: the EfficientNet families);
    None for a model without such options and for layers that do not say (a DistillationModel's members
    record their own)."""
    numerics = getattr(model, "numerics", None)
    return numerics() if callable(numerics) else None


def numerics_record(model: nn.Layer, origin: Optional[str] = None) -> Dict[str, object]:
    """{NUMERICS_KEY: record} of the numerics `model` computes with, to save beside its tensors so that a
    later load builds the model alike; empty for a model without such options."""
    numerics = model_numerics(model)
    return {} if numerics is None else {NUMERICS_KEY: numerics_entry(numerics, origin)}


def check_numerics(model: nn.Layer, numerics: Optional[Numerics], label: str) -> None:
    """Weights trained with `numerics` must meet a model built with them: otherwise a one-line error that
    says how to build it (options of a model are fixed once it is built)."""
    built = model_numerics(model)
    if numerics is None or built is None or built == numerics:
        return
    raise IncompatibleWeightsError(
        f"{label} was trained with {numerics.describe()}, but the model was built with {built.describe()}: its "
        f"logits would not be the source's. Build it with the weights (create_model(name, pretrained=...) reads "
        f"them first), or with padding={numerics.padding!r}, bn_epsilon={numerics.bn_epsilon:g} "
        f"(config: Arch.padding, Arch.bn_epsilon)")


#: tensor types one another's values convert to without changing what a model computes (beyond rounding)
FLOAT_TYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


def _dtype_name(value: object) -> str:
    """'float32' for a numpy array or a Paddle tensor of that type (Paddle: `paddle.float32`), else the
    value's type name."""
    dtype = getattr(value, "dtype", None)
    return str(dtype).replace("paddle.", "") if dtype is not None else type(value).__name__


def _shape(value: object) -> tuple:
    return tuple(int(d) for d in getattr(value, "shape", ()))


def _listing(keys: List[str], limit: int = 5) -> str:
    """The first `limit` keys for a message, each cut to 100 characters (a file may hold any names)."""
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(k if len(k) <= 100 else k[:97] + "..." for k in keys[:limit]) + more


def _fit(model: ImageClassifier, state_dict: Mapping[str, object], source: str, numerics: Optional[Numerics],
         allow_classifier_mismatch: bool = True) -> List[str]:
    """Load `state_dict` into `model` strictly (see `load_weights`), its tensors checked before its numerics."""
    state = model.convert_state_dict(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and _shape(state[k]) != _shape(expected[k])]
    skipped = [k for k in missing + unexpected + mismatched if k.startswith(model.classifier_prefixes)]
    # the dtypes the tensors have (an AMP-O2-decorated model's state_dict() shows float32 copies of float16 ones)
    own = {name: tensor for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())}
    target = {k: own.get(k, expected[k]) for k in expected}
    fitting = [k for k in expected if k in state and k not in mismatched and k not in skipped]
    retype = [k for k in fitting if _dtype_name(state[k]) != _dtype_name(target[k])]
    wrong_type = [k for k in retype if not {_dtype_name(state[k]), _dtype_name(target[k])} <= FLOAT_TYPES]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched),
                        ("wrong type", wrong_type)):
        keys = [k for k in keys if k not in skipped]
        if label == "wrong shape":
            keys = [f"{k} {_shape(state[k])} vs {_shape(expected[k])}" for k in keys]
        elif label == "wrong type":
            keys = [f"{k} {_dtype_name(state[k])} vs {_dtype_name(target[k])}" for k in keys]
        if keys:
            problems.append(f"{label} {len(keys)}: {_listing(keys)}")
    if problems:
        raise IncompatibleWeightsError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    if skipped and not allow_classifier_mismatch:
        counts = [(_shape(state[k])[-1], _shape(expected[k])[-1]) for k in skipped if k in state and k in expected]
        found = f"is for {counts[0][0]} classes, the model has {counts[0][1]}" if counts else f"lacks {_listing(skipped)}"
        raise IncompatibleWeightsError(f"{source}: its classifier {found} (Arch.class_num); only training may leave "
                                       "a classifier randomly initialised")
    check_numerics(model, numerics, source)
    if skipped:
        logger.warning("%s: classifier does not match the model's class_num; left as initialised: %s", source, _listing(skipped))
    loaded = {k: v for k, v in state.items() if k in expected and k not in skipped}
    if retype:  # floating point of another width (a float16 or float64 save): Paddle would assert
        logger.info("%s: %d tensors cast from %s to the model's %s", source, len(retype), _dtype_name(state[retype[0]]),
                    _dtype_name(target[retype[0]]))
        for k in retype:
            value = loaded[k] if isinstance(loaded[k], paddle.Tensor) else paddle.to_tensor(loaded[k])
            loaded[k] = value.astype(target[k].dtype)
    model.set_state_dict({**expected, **loaded})  # complete, so that Paddle does not warn about the skipped keys
    return skipped


def load_weights(model: ImageClassifier, state_dict: Mapping[str, object], source: str = "state dict",
                 allow_classifier_mismatch: bool = True) -> List[str]:
    """Load `state_dict` (our layout or PaddleClas's) into `model`, strictly: every tensor must be present
    with its shape, except the classifier's, which is left as initialised when the checkpoint's has
    another class count or none (fine-tuning) — unless `allow_classifier_mismatch` is False (evaluation,
    inference, export), where that would give a random classifier; numerics it records must be the
    model's (`check_numerics`). Returns the classifier keys not loaded."""
    state = dict(state_dict)
    try:
        numerics = recorded_numerics(state, source)
    except ValueError as error:
        raise IncompatibleWeightsError(str(error)) from error
    state.pop(NUMERICS_KEY, None)
    return _fit(model, state, source, numerics, allow_classifier_mismatch)


def load_weights_file(model: ImageClassifier, weights: WeightsFile, allow_classifier_mismatch: bool = True) -> List[str]:
    """Load weights already read into `model`, built knowing their numerics (`create_model`, the engine:
    where the options given contradict them, that was warned about). Returns the skipped classifier keys."""
    skipped = _fit(model, weights.state_for(model), weights.label, None, allow_classifier_mismatch)
    logger.info("loaded weights from %s", weights.label)
    return skipped


def load_pretrained(model: ImageClassifier, source: PathLike, sha256: Optional[str] = None,
                    origin: Optional[str] = None, allow_classifier_mismatch: bool = True) -> List[str]:
    """Load weights from a local path or a URL (see `read_weights_file`) into a model already built, which
    must compute with the numerics the weights were trained with (`check_numerics`; `create_model(name,
    pretrained=source)` builds it so). Returns the skipped classifier keys (see `load_weights` for
    `allow_classifier_mismatch`)."""
    weights = read_weights_file(source, sha256=sha256, origin=origin)
    skipped = _fit(model, weights.state_for(model), weights.label, weights.numerics, allow_classifier_mismatch)
    logger.info("loaded weights from %s", weights.label)
    return skipped


@dataclass(frozen=True)
class SourceNumerics:
    """Numerics a model must be built with because weights trained with them will be loaded into it,
    read from `label`. `binding`: the weights of a run to resume, which options may not contradict."""

    numerics: Numerics
    label: str
    binding: bool = False


@dataclass(frozen=True)
class StartingWeights:
    """What a run starts from, read before its model is built: the pretrained weights and the numerics
    to build with."""

    pretrained: Optional[WeightsFile]
    numerics: Optional[SourceNumerics]


def checkpoint_numerics(prefix: str) -> Optional[SourceNumerics]:
    """The numerics recorded by the checkpoint `prefix` (in its small `.pdstates`, so that the model can
    be built before the weights are read); None if it records none or cannot be read here (resuming
    reports why)."""
    prefix = prefix[: -len(".pdparams")] if prefix.endswith(".pdparams") else prefix
    try:
        states = load_paddle_file(f"{prefix}.pdstates")
    except Exception:  # missing, unreadable or refused: the checkpoint's own loader names the problem
        return None
    if not isinstance(states, Mapping) or NUMERICS_KEY not in states:
        return None
    try:
        numerics = recorded_numerics(states, f"{prefix}.pdstates")
    except ValueError as error:
        raise IncompatibleWeightsError(str(error)) from error
    return SourceNumerics(numerics, f"checkpoint {prefix}", binding=True)


def read_starting_weights(pretrained: Optional[PathLike], resume: Optional[PathLike] = None,
                          sha256: Optional[str] = None) -> StartingWeights:
    """`Global.pretrained_model` read (checked against `sha256`, `Global.pretrained_model_sha256`, when
    given), and the numerics a run builds its model with: those of the checkpoint it resumes
    (`Global.checkpoints`), else those of the pretrained weights."""
    weights = read_weights_file(pretrained, sha256=sha256) if pretrained else None
    numerics = checkpoint_numerics(str(resume)) if resume else None
    if numerics is None and weights is not None and weights.numerics is not None:
        numerics = SourceNumerics(weights.numerics, weights.label)
    return StartingWeights(weights, numerics)


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
