"""Reading PyTorch checkpoints and `.safetensors` files into numpy arrays, without torch.

PyTorch files come in two formats, both pickles whose tensors point into raw storages: the zip archive
of torch >= 1.6 (`<name>/data.pkl` + one `<name>/data/<key>` file per storage) and the legacy stream
(magic number, protocol, system info, the pickle, its storage keys, then each storage as an int64 element
count and its bytes). The pickle is read with the restricted unpickler: tensors are rebuilt from their
storages here, by numpy, and any other global (code, modules, arbitrary classes) is refused - unlike
`torch.load` before torch 2.6, which runs what the file names. `.safetensors` files hold no code at all
and are read by the `safetensors` package's numpy API.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..safe_load import PADDLE_GLOBALS
from ..safe_pickle import GlobalName, UnsafePickleError, restricted_load

PathLike = Union[str, os.PathLike]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PREFIX = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")

#: torch's typed storage classes -> numpy dtypes (bfloat16 is widened to float32 when read)
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}


class TorchFileError(ValueError):
    """A file that is not a PyTorch checkpoint or safetensors file this reader understands."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for `torch.FloatStorage` etc. in a pickle: only its element type is used."""

    name: str

    @property
    def itemsize(self) -> int:
        return 2 if self.name == "BFloat16Storage" else np.dtype(STORAGE_DTYPES[self.name]).itemsize


class _Storage:
    """A flat buffer of one element type; legacy files fill it after the pickle is read."""

    def __init__(self, storage_type: _StorageType, numel: int, data: Optional[bytes] = None):
        self.type, self.numel, self.data = storage_type, int(numel), data

    def elements(self, big_endian: bool) -> np.ndarray:
        if self.data is None:
            raise TorchFileError("a storage of the checkpoint has no data")
        if self.type.name == "BFloat16Storage":
            halves = np.frombuffer(self.data, dtype=">u2" if big_endian else "<u2").astype(np.uint32)
            return (halves << 16).view(np.float32)
        dtype = np.dtype(STORAGE_DTYPES[self.type.name])
        return np.frombuffer(self.data, dtype=dtype.newbyteorder(">" if big_endian else "<")).astype(dtype)


@dataclass
class _PendingTensor:
    """A tensor rebuilt from (storage, offset, size, stride); turned into an array once storages are read."""

    storage: _Storage
    offset: int
    size: Tuple[int, ...]
    stride: Tuple[int, ...]

    def to_numpy(self, big_endian: bool) -> np.ndarray:
        flat = self.storage.elements(big_endian)
        size, stride = tuple(int(s) for s in self.size), tuple(int(s) for s in self.stride)
        if len(size) != len(stride) or any(s < 0 for s in size + stride) or self.offset < 0:
            raise TorchFileError(f"a tensor has an invalid layout: size {size}, stride {stride}, offset {self.offset}")
        if 0 in size:
            return np.zeros(size, dtype=flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:  # checked before as_strided, which would read past the buffer
            raise TorchFileError(f"a tensor of size {size} reaches element {last} of a storage of {flat.size}")
        return np.lib.stride_tricks.as_strided(flat[self.offset:], size, [s * flat.itemsize for s in stride]).copy()


def _rebuild_tensor(storage: _Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], *_ignored) -> _PendingTensor:
    """torch._utils._rebuild_tensor(_v2): requires_grad, hooks and metadata do not matter for weights."""
    return _PendingTensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _PendingTensor, *_ignored) -> _PendingTensor:
    """torch._utils._rebuild_parameter(_with_state): an nn.Parameter is its tensor."""
    return data


#: what PyTorch checkpoints may name: tensor rebuilders, storage types, containers, numpy values
TORCH_GLOBALS: Dict[GlobalName, Any] = {
    **PADDLE_GLOBALS,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


def _storage_type(value: Any, source: str) -> _StorageType:
    if not isinstance(value, _StorageType):
        raise UnsafePickleError(f"{source}: refused to load: a storage names {value!r} as its type")
    return value


def _text(value: Union[str, bytes]) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _resolve(obj: Any, big_endian: bool) -> Any:
    """Replace every pending tensor inside dicts, lists and tuples by its array."""
    if isinstance(obj, _PendingTensor):
        return obj.to_numpy(big_endian)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, big_endian)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, big_endian) for v in obj)
    return obj


def _read_zip(path: PathLike, source: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pickles) != 1:
            raise TorchFileError(f"{source}: a zip file without one data.pkl is not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        storages: Dict[str, _Storage] = {}

        def persistent_load(pid: Tuple) -> _Storage:
            if _text(pid[0]) != "storage":
                raise UnsafePickleError(f"{source}: refused to load: persistent object of kind {_text(pid[0])!r}")
            storage_type, key = _storage_type(pid[1], source), _text(pid[2])
            if key not in storages:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise TorchFileError(f"{source}: storage {key} is missing from the archive")
                data = archive.read(record)
                storages[key] = _Storage(storage_type, len(data) // storage_type.itemsize, data)
            return storages[key]

        with archive.open(pickles[0]) as f:
            obj = restricted_load(io.BufferedReader(f), TORCH_GLOBALS, source, persistent_load)
    return _resolve(obj, big_endian=byteorder == "big")


class _StorageView(_Storage):
    """Legacy files may store a tensor's storage as a view (offset, size) into a larger root storage."""

    def __init__(self, root: _Storage, offset: int, numel: int):
        super().__init__(root.type, numel)
        self.root, self.offset = root, int(offset)

    def elements(self, big_endian: bool) -> np.ndarray:
        return self.root.elements(big_endian)[self.offset:self.offset + self.numel]


def _read_legacy(path: PathLike, source: str) -> Any:
    with open(path, "rb") as f:
        if restricted_load(f, TORCH_GLOBALS, source) != LEGACY_MAGIC:
            raise TorchFileError(f"{source}: not a PyTorch checkpoint (wrong magic number)")
        restricted_load(f, TORCH_GLOBALS, source)  # protocol version
        system = restricted_load(f, TORCH_GLOBALS, source)
        big_endian = isinstance(system, dict) and not system.get("little_endian", True)
        storages: Dict[str, _Storage] = {}

        def persistent_load(pid: Tuple) -> _Storage:
            if _text(pid[0]) != "storage":
                raise UnsafePickleError(f"{source}: refused to load: persistent object of kind {_text(pid[0])!r} "
                                        f"(a pickled module or class, not weights)")
            storage_type, key, _location, numel, view = pid[1:6] if len(pid) >= 6 else (*pid[1:5], None)
            key = _text(key)
            if key not in storages:
                storages[key] = _Storage(_storage_type(storage_type, source), numel)
            if view is None:
                return storages[key]
            view_key, offset, view_numel = view
            return storages.setdefault(_text(view_key), _StorageView(storages[key], offset, view_numel))

        obj = restricted_load(f, TORCH_GLOBALS, source, persistent_load)
        keys: List[str] = [_text(k) for k in restricted_load(f, TORCH_GLOBALS, source)]
        for key in keys:
            if key not in storages:
                raise TorchFileError(f"{source}: storage {key} is listed but never used")
            storage = storages[key]
            count = int.from_bytes(f.read(8), "big" if big_endian else "little")
            storage.data = f.read(count * storage.type.itemsize)
            if len(storage.data) != count * storage.type.itemsize:
                raise TorchFileError(f"{source}: the file ends inside storage {key} (truncated?)")
    return _resolve(obj, big_endian)


def _read_safetensors(path: PathLike, source: str) -> Dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, TypeError, ValueError) as error:
        raise TorchFileError(f"{source}: cannot read this .safetensors file: {error}") from error


def file_format(path: PathLike) -> str:
    """'safetensors', 'torch-zip', 'torch-legacy' or 'other' (a Paddle pickle, or anything else), from the
    first bytes of the file, whatever its name."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head.startswith(_LEGACY_PREFIX):
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path):
        return "safetensors"
    return "other"


def _find_state_dict(obj: Any, source: str) -> Dict[str, np.ndarray]:
    """The name -> array mapping of a checkpoint: the object itself, or its `state_dict` / `model` entry
    (training checkpoints of timm and torchvision's reference scripts); `module.` prefixes (DataParallel)
    are dropped."""
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise TorchFileError(f"{source}: holds no state dict (a mapping of names to tensors), got {type(obj).__name__}")
    arrays = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
    others = [str(k) for k in obj if k not in arrays]
    if others:
        raise TorchFileError(f"{source}: entries that are not tensors: {', '.join(others[:5])}")
    if all(k.startswith("module.") for k in arrays):
        arrays = {k[len("module."):]: v for k, v in arrays.items()}
    return arrays


def read_foreign_state_dict(path: PathLike) -> Tuple[str, Dict[str, np.ndarray]]:
    """(format, state dict as numpy arrays) of a PyTorch (.pth/.pt/.bin, zip or legacy) or .safetensors file."""
    source = str(path)
    kind = file_format(path)
    try:
        if kind == "safetensors":
            state: Any = _read_safetensors(path, source)
        elif kind == "torch-zip":
            state = _read_zip(path, source)
        elif kind == "torch-legacy":
            state = _read_legacy(path, source)
        else:
            raise TorchFileError(f"{source}: neither a PyTorch checkpoint (zip or legacy) nor a .safetensors file")
    except (UnsafePickleError, TorchFileError):
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, IndexError, TypeError, ValueError, AttributeError, OSError) as error:
        raise TorchFileError(f"{source}: cannot read this {kind} file ({type(error).__name__}: {error}); truncated or "
                             f"not a checkpoint?") from error
    return kind, _find_state_dict(state, source)
