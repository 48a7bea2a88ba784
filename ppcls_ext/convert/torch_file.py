"""Reading PyTorch checkpoints and `.safetensors` files into numpy arrays, without torch and without
running anything a file names.

PyTorch files come in two formats, both pickles (protocol 2) whose tensors point into raw storages: the zip
archive of torch >= 1.6 (`<name>/data.pkl` + one `<name>/data/<key>` file per storage, found through the
persistent id `('storage', torch.FloatStorage, key, location, numel)`) and the legacy stream (magic number,
protocol, system info, the pickle, its storage keys, then each storage as an element count and its bytes;
persistent ids may add a view `(key, offset, numel)` into a root storage). The pickle is read as data
(`safe_pickle`): `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` and the storage types map to our
own constructors, each tensor becomes a numpy array of its storage's bytes (viewed in place, read-only, where
it is C-contiguous; else copied), and everything is checked against the bytes really present before it is used: zip
members against the archive's size (no zip bombs), legacy storage counts against what remains of the file,
every tensor against its storage, and what the file makes against its `Budget`. `.safetensors` files hold
no code at all and are read by the `safetensors` package's numpy API.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import UserError
from ..safe_load import PADDLE_GLOBALS, as_plain, dimensions, read_whole_file
from ..safe_pickle import Budget, Constructor, PickleDataError, PickleReader, UnsafePickleError, describe, read_pickle

PathLike = Union[str, os.PathLike]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PREFIX = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")

#: torch's typed storage classes -> numpy dtypes (bfloat16 is widened to float32 when read)
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}


class TorchFileError(UserError, ValueError):
    """A file that is not a PyTorch checkpoint or safetensors file this reader understands."""


class _StorageType:
    """Stands in for `torch.FloatStorage` etc. in a pickle: an immutable token naming the element type (the
    reader never sets the state of, or calls, a token; one instance per type, compared by identity)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    @property
    def stored(self) -> np.dtype:
        """The dtype of the stored elements, little-endian (bfloat16 as its 16 bits)."""
        return np.dtype("<u2" if self.name == "BFloat16Storage" else STORAGE_DTYPES[self.name]).newbyteorder("<")

    @property
    def output(self) -> np.dtype:
        return np.dtype("float32" if self.name == "BFloat16Storage" else STORAGE_DTYPES[self.name])


class _Storage:
    """A flat buffer of `numel` elements of one type; its bytes are located once known (zip: at once;
    legacy: after the pickle), each checked to be present in the file."""

    def __init__(self, storage_type: _StorageType, numel: int):
        self.type, self.numel = storage_type, numel
        self.buffer: Optional[bytes] = None
        self.offset = 0

    def locate(self, buffer: bytes, offset: int, available: int, source: str) -> None:
        if self.numel * self.type.stored.itemsize > available:
            raise PickleDataError(f"{source}: a storage of {self.numel} elements has only {available} bytes in the file "
                                  "(truncated or forged)")
        self.buffer, self.offset = buffer, offset

    @property
    def located(self) -> bool:
        return self.buffer is not None

    def elements(self, big_endian: bool) -> np.ndarray:
        """All elements as stored (a view of the file's bytes)."""
        dtype = self.type.stored.newbyteorder(">" if big_endian else "<")
        return np.frombuffer(self.buffer, dtype=dtype, count=self.numel, offset=self.offset)


class _StorageView(_Storage):
    """Legacy files may store a tensor's storage as a view (offset, numel) into a larger root storage."""

    def __init__(self, root: _Storage, offset: int, numel: int):
        super().__init__(root.type, numel)
        self.root, self.start = root, offset

    @property
    def located(self) -> bool:
        return self.root.located

    def elements(self, big_endian: bool) -> np.ndarray:
        return self.root.elements(big_endian)[self.start:self.start + self.numel]


def _c_strides(size: Tuple[int, ...]) -> Tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


@dataclass
class _PendingTensor:
    """A tensor rebuilt from (storage, offset, size, stride), checked to lie inside its storage; an array
    once the storages are located."""

    storage: _Storage
    offset: int
    size: Tuple[int, ...]
    stride: Tuple[int, ...]

    @property
    def count(self) -> int:
        return math.prod(self.size)

    def to_numpy(self, big_endian: bool, reader: PickleReader) -> np.ndarray:
        """The tensor as a C-contiguous array in native byte order (`safe_load.as_plain`: a read-only view of
        the storage's bytes where it is laid out so, else a copy), once what it makes is paid from the budget."""
        out = self.storage.type.output
        reader.budget.spend(self.count * out.itemsize, f"a tensor of size {self.size}")
        if self.count == 0:
            return np.zeros(self.size, dtype=out)
        if not self.storage.located:
            raise TorchFileError(f"{reader.source}: a tensor's storage has no data in the file (not listed)")
        flat = self.storage.elements(big_endian)
        significant = [(n, s) for n, s in zip(self.size, self.stride) if n != 1]
        if all(s == c for (n, s), c in zip(significant, _c_strides(tuple(n for n, _ in significant)))):
            values = flat[self.offset:self.offset + self.count].reshape(self.size)
        else:
            strides = [s * flat.itemsize for s in self.stride]
            values = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size, strides, writeable=False)
        if self.storage.type.name == "BFloat16Storage":
            return (values.astype(np.uint32, order="C") << 16).view(np.float32)
        return as_plain(values)


def _rebuild_tensor(reader: PickleReader, storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> _PendingTensor:
    """torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride[, requires_grad, hooks, metadata]);
    requires_grad, hooks and metadata do not matter for weights."""
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise reader.refuse(f"a tensor is rebuilt from a {type(storage).__name__} at offset {describe(offset)}")
    size, stride = dimensions(size, reader, "a tensor size"), dimensions(stride, reader, "a tensor stride")
    if len(size) != len(stride):
        raise reader.refuse(f"a tensor of size {size} has strides {stride}")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise reader.refuse(f"a tensor of size {size}, stride {stride} at offset {offset} reaches element {last} "
                                f"of a storage of {storage.numel}")
    return _PendingTensor(storage, offset, size, stride)


def _rebuild_parameter(reader: PickleReader, data: Any, *_ignored: Any) -> _PendingTensor:
    """torch._utils._rebuild_parameter(_with_state): an nn.Parameter is its tensor."""
    if not isinstance(data, _PendingTensor):
        raise reader.refuse(f"a parameter is made of a {type(data).__name__}, not a tensor")
    return data


#: what PyTorch checkpoints may name: tensor rebuilders, storage types, containers, numpy values
TORCH_GLOBALS: Dict[Tuple[str, str], Any] = {
    **PADDLE_GLOBALS,
    **{("torch._utils", name): Constructor(_rebuild_tensor, f"torch._utils.{name}")
       for name in ("_rebuild_tensor", "_rebuild_tensor_v2")},
    **{("torch._utils", name): Constructor(_rebuild_parameter, f"torch._utils.{name}")
       for name in ("_rebuild_parameter", "_rebuild_parameter_with_state")},
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


def _storage_id(pid: Any, reader: PickleReader, length: int) -> Tuple[_StorageType, str, int]:
    """(type, key, numel) of a persistent id ('storage', type, key, location, numel, ...)."""
    if type(pid) is not tuple or len(pid) != length or pid[0] != "storage":
        raise reader.refuse(f"a persistent object {describe(pid)} that is not a storage")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, _StorageType) or type(key) is not str or type(numel) is not int \
            or not 0 <= numel < 1 << 48:
        raise reader.refuse(f"a storage of type {describe(storage_type)}, key {describe(key)}, {describe(numel)} elements")
    return storage_type, key, numel


def _same_type(storage: _Storage, storage_type: _StorageType, key: str, reader: PickleReader) -> _Storage:
    if storage.type != storage_type:
        raise reader.refuse(f"storage {describe(key)} is used as {storage.type.name} and as {storage_type.name}")
    return storage


def _resolve(obj: Any, big_endian: bool, reader: PickleReader, done: Dict[int, Any]) -> Any:
    """Replace every pending tensor inside dicts, lists and tuples by its array, once per object."""
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, _PendingTensor):
        value: Any = obj.to_numpy(big_endian, reader)
    elif isinstance(obj, _Storage):
        raise reader.refuse("a bare storage outside a tensor")
    elif isinstance(obj, dict):
        value = type(obj)((k, _resolve(v, big_endian, reader, done)) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        value = type(obj)(_resolve(v, big_endian, reader, done) for v in obj)
    else:
        return obj
    done[id(obj)] = value
    return value


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, allowance: List[int], source: str) -> bytes:
    """A member's bytes, its declared size checked first against what is left of the archive's own size
    (members of a torch checkpoint are stored, not compressed: together they fit in the file)."""
    if info.file_size > allowance[0]:
        raise UnsafePickleError(f"{source}: refused to load: member {describe(info.filename)} declares {info.file_size} bytes, "
                                f"more than the archive holds ({allowance[0]} left of its size): a zip bomb?")
    allowance[0] -= info.file_size
    with archive.open(info) as member:
        data = member.read(info.file_size)
    if len(data) != info.file_size:
        raise PickleDataError(f"{source}: member {describe(info.filename)} ends after {len(data)} of its {info.file_size} bytes")
    return data


def _read_zip(path: PathLike, source: str) -> Any:
    size = os.path.getsize(path)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: info for info in archive.infolist()}
        pickles = [n for n in members if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pickles) != 1:
            raise TorchFileError(f"{source}: a zip file without one data.pkl is not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        allowance = [size]
        byteorder = "little"
        if prefix + "byteorder" in members:
            if members[prefix + "byteorder"].file_size > 16:
                raise TorchFileError(f"{source}: its byteorder record is not 'little' or 'big'")
            byteorder = _read_member(archive, members[prefix + "byteorder"], allowance, source).decode("ascii").strip()
        storages: Dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            storage_type, key, numel = _storage_id(pid, reader, 5)
            if key in storages:
                return _same_type(storages[key], storage_type, key, reader)
            record = f"{prefix}data/{key}"
            if record not in members:
                raise PickleDataError(f"{source}: storage {describe(key)} is missing from the archive")
            data = _read_member(archive, members[record], allowance, source)
            storage = storages[key] = _Storage(storage_type, numel)
            storage.locate(data, 0, len(data), source)
            return storage

        data = _read_member(archive, members[pickles[0]], allowance, source)
        reader = PickleReader(data, source, TORCH_GLOBALS, Budget.for_file(size, source), persistent_load)
        obj, _ = reader.read()
    return _resolve(obj, byteorder == "big", reader, {})


def _read_legacy(path: PathLike, source: str) -> Any:
    data = read_whole_file(path)
    budget = Budget.for_file(len(data), source)
    magic, position = read_pickle(data, source, TORCH_GLOBALS, budget)
    if magic != LEGACY_MAGIC:
        raise TorchFileError(f"{source}: not a PyTorch checkpoint (wrong magic number)")
    _protocol, position = read_pickle(data, source, TORCH_GLOBALS, budget, position)
    system, position = read_pickle(data, source, TORCH_GLOBALS, budget, position)
    big_endian = isinstance(system, dict) and system.get("little_endian", True) is False
    storages: Dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage_type, key, numel = _storage_id(pid, reader, 6)
        storage = _same_type(storages.setdefault(key, _Storage(storage_type, numel)), storage_type, key, reader)
        view = pid[5]
        if view is None:
            return storage
        if type(view) is not tuple or len(view) != 3 or type(view[0]) is not str or isinstance(storage, _StorageView) \
                or not all(type(v) is int and v >= 0 for v in view[1:]) or view[1] + view[2] > storage.numel:
            raise reader.refuse(f"a view {describe(view)} of storage {describe(key)} ({storage.numel} elements)")
        if view[0] not in storages:
            storages[view[0]] = _StorageView(storage, view[1], view[2])
        return _same_type(storages[view[0]], storage_type, view[0], reader)

    reader = PickleReader(data, source, TORCH_GLOBALS, budget, persistent_load)
    obj, position = reader.read(position)
    keys, position = read_pickle(data, source, TORCH_GLOBALS, budget, position)
    if type(keys) is not list or not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
        raise TorchFileError(f"{source}: its list of storages is not a list of distinct keys")
    for key in keys:
        storage = storages.get(key)
        if storage is None or isinstance(storage, _StorageView):
            raise TorchFileError(f"{source}: storage {describe(key)} is listed but never used")
        if position + 8 > len(data):
            raise TorchFileError(f"{source}: the file ends inside storage {describe(key)} (truncated?)")
        count = int.from_bytes(data[position:position + 8], "big" if big_endian else "little")
        position += 8
        available = len(data) - position
        if count < storage.numel or count * storage.type.stored.itemsize > available:
            raise TorchFileError(f"{source}: the file ends inside storage {describe(key)}: it declares {count} elements "
                                 f"({storage.numel} used) and {available} bytes remain (truncated or forged)")
        storage.locate(data, position, available, source)
        position += count * storage.type.stored.itemsize
    return _resolve(obj, big_endian, reader, {})


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
    """(format, state dict as numpy arrays) of a PyTorch (.pth/.pt/.bin, zip or legacy) or .safetensors file;
    arrays that view the file's bytes are read-only (copy one to change it)."""
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
    except PickleDataError as error:  # a malformed pickle or storage, named by the reader
        raise TorchFileError(str(error)) from error
    except Exception as error:  # malformed pickles and archives raise many types; none is a traceback for the user
        detail = str(error)[len(source) + 2:] if str(error).startswith(f"{source}: ") else str(error)
        raise TorchFileError(f"{source}: cannot read this {kind} file ({type(error).__name__}: {detail}); truncated or "
                             f"not a checkpoint?") from error
    return kind, _find_state_dict(state, source)
