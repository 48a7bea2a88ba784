"""Reading Paddle's own files (`.pdparams`, `.pdopt`, `.pdema`, `.pdstates`) as data, never running what
they contain: the one loader of every Paddle pickle we read.

`paddle.save` (paddle/framework/io.py) pickles with protocol 2-4: a state dict's tensors become numpy
arrays (`numpy.core.multiarray._reconstruct` + BUILD with `numpy.dtype` + BUILD, the bytes inline, or
through `_codecs.encode(text, 'latin1')` in protocol 2, `builtins.bytes()` for empty ones), their names
go into a `StructuredToParameterName@@` table, and arrays over 1 GiB saved with protocol 2-3 are split
into slices listed under `UnpackBigParamInfor@@`; numpy scalars (`numpy.core.multiarray.scalar`),
Python numbers and strings, `collections.OrderedDict`, and - in objects that are not state dicts - tensors
as `builtins.tuple` of `(name, array)`. Those globals map here to our own constructors, which accept
plain numeric dtypes only and make each array of exactly its bytes in the file (`safe_pickle`); the result is
what `paddle.load` returns for the same file (tensors, or numpy arrays of their own with `return_numpy`).
"""
from __future__ import annotations

import collections
import math
import os
from typing import Any, Callable, Dict, Mapping, Union

import numpy as np
import paddle

from .safe_pickle import (Blob, Budget, Constructor, GlobalName, Pending, PickleDataError, PickleReader, describe,
                          read_pickle)

PathLike = Union[str, os.PathLike]

NAME_TABLE = "StructuredToParameterName@@"
SPLIT_TABLE = "UnpackBigParamInfor@@"  # sic: Paddle's key
#: the element types an array or numpy scalar may have, as numpy pickles them (kind + item size)
PLAIN_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"})
MAX_DIMS = 32  # numpy 1's limit


class _NdarrayClass:
    """Stands in for `numpy.ndarray`, which a pickle only passes to `_reconstruct`."""

    __slots__ = ()


NDARRAY = _NdarrayClass()


def plain_dtype(value: Any, reader: PickleReader) -> np.dtype:
    """`value` if it is a dtype of plain numbers made by `_dtype` (no object, void, structured, text)."""
    if not isinstance(value, np.dtype) or value.fields is not None or value.subdtype is not None or value.hasobject \
            or f"{value.kind}{value.itemsize}" not in PLAIN_DTYPES:
        raise reader.refuse(f"an array or scalar of type {describe(value)} (plain numbers only)")
    return value


def file_bytes(value: Any, reader: PickleReader, what: str) -> Blob:
    """The bytes a pickle gives as an array's or a scalar's data (protocol 2 may give latin-1 text)."""
    if type(value) is Blob:
        return value
    if type(value) is str:
        reader.budget.spend(len(value), what)
        value = value.encode("latin-1")
    if type(value) is bytes:
        return Blob(value, 0, len(value))
    raise reader.refuse(f"{what} is a {type(value).__name__}, not bytes")


def dimensions(value: Any, reader: PickleReader, what: str) -> tuple:
    """A shape (or strides): a short tuple of non-negative ints of a sane size."""
    if type(value) not in (tuple, list) or len(value) > MAX_DIMS or any(
            type(d) is not int or not 0 <= d < 1 << 48 for d in value):
        raise reader.refuse(f"{what} {describe(value)} is not a tuple of at most {MAX_DIMS} sizes")
    return tuple(value)


def owned_copy(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, aligned, writable copy of `array` in native byte order, with bools that are 0 or 1."""
    if array.dtype.kind == "b":  # a bool byte other than 0/1 is not a bool
        return np.not_equal(array.view(np.uint8), 0, order="C")
    return array.astype(array.dtype.newbyteorder("="), order="C")


def as_plain(array: np.ndarray) -> np.ndarray:
    """`array` if it is C-contiguous plain numbers in native byte order (a read-only view of the file's
    bytes: whoever makes tensors of it copies it anyway), else `owned_copy(array)`."""
    if array.flags.c_contiguous and array.dtype.isnative and array.dtype.kind != "b":
        return array
    return owned_copy(array)


def owned(array: np.ndarray) -> np.ndarray:
    """`array` as one the caller may change: a copy of a view of the file's bytes."""
    return array if array.flags.writeable else array.copy()


def array_from(data: Blob, dtype: np.dtype, shape: tuple, reader: PickleReader, fortran: bool = False) -> np.ndarray:
    """The array of `shape` made of exactly the bytes of `data` (`as_plain`: viewed in place, or converted),
    once its size is checked against them."""
    count = math.prod(shape)
    if count * dtype.itemsize != len(data):
        raise reader.refuse(f"an array of shape {shape} and type {dtype} needs {count * dtype.itemsize} bytes, "
                            f"the file gives {len(data)}")
    reader.budget.spend(count * dtype.itemsize, "an array")
    buffer, offset, _ = data.claim(reader.source)
    flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset) if count else np.empty(0, dtype)
    return as_plain(flat.reshape(shape, order="F" if fortran else "C"))


class _PendingDtype(Pending):
    """`numpy.dtype(code, align, copy)`; its BUILD state gives the byte order."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        super().__init__()
        self.dtype = dtype

    def build(self, reader: PickleReader, state: Any) -> np.dtype:
        # numpy's arraydescr_reduce: (version 3|4, byte order, subarray, names, fields, elsize, alignment,
        # flags[, metadata]); for plain numbers only the byte order matters
        if type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4) \
                or state[1] not in ("<", ">", "|", "=") or any(s is not None for s in state[2:5]) \
                or not all(type(s) is int for s in state[5:8]) or (len(state) == 9 and state[8] is not None
                                                                    and not isinstance(state[8], dict)):
            raise reader.refuse(f"the state {describe(state)} of a numpy dtype (plain numbers only)")
        return self.dtype.newbyteorder(state[1]) if state[1] in "<>" and self.dtype.itemsize > 1 else self.dtype


def _dtype(reader: PickleReader, code: Any, align: Any = False, copy: Any = True) -> _PendingDtype:
    if type(code) is not str or code not in PLAIN_DTYPES or type(align) is not bool or type(copy) is not bool:
        raise reader.refuse(f"a numpy dtype {describe(code)} (plain numbers only: {', '.join(sorted(PLAIN_DTYPES))})")
    return _PendingDtype(np.dtype(code))


class _PendingArray(Pending):
    """`numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`; its BUILD state (version, shape, dtype,
    Fortran order, bytes) makes the array."""

    __slots__ = ()

    def build(self, reader: PickleReader, state: Any) -> np.ndarray:
        if type(state) is not tuple or len(state) not in (4, 5) or (len(state) == 5 and state[0] != 1):
            raise reader.refuse(f"an array state of {type(state).__name__} {len(state) if type(state) is tuple else ''} "
                                "(expected (version, shape, dtype, fortran, bytes))")
        shape, dtype, fortran, data = state[-4:]
        if type(fortran) not in (bool, int):
            raise reader.refuse(f"an array whose order flag is a {type(fortran).__name__}")
        return array_from(file_bytes(data, reader, "an array's data"), plain_dtype(dtype, reader),
                          dimensions(shape, reader, "an array shape"), reader, bool(fortran))


def _reconstruct(reader: PickleReader, cls: Any, shape: Any, code: Any) -> _PendingArray:
    if cls is not NDARRAY or shape != (0,) or (code.to_bytes(reader.budget) if type(code) is Blob else code) not in (b"b", "b"):
        raise reader.refuse("numpy's _reconstruct is called with other arguments than an array's")
    return _PendingArray()


def _scalar(reader: PickleReader, dtype: Any, data: Any) -> Any:
    """`numpy.core.multiarray.scalar(dtype, bytes)`: a numpy number from exactly its bytes."""
    dtype = plain_dtype(dtype, reader)
    blob = file_bytes(data, reader, "a numpy scalar's data")
    if len(blob) != dtype.itemsize:
        raise reader.refuse(f"a numpy {dtype} scalar of {len(blob)} bytes")
    return owned_copy(np.frombuffer(blob.to_bytes(reader.budget), dtype=dtype))[0]


def _latin1_encode(reader: PickleReader, text: Any, encoding: Any = "utf-8") -> Blob:
    """`_codecs.encode(text, 'latin1')`: how protocol 2 writes bytes; no other codec is run."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise reader.refuse(f"_codecs.encode with codec {describe(encoding)} (only latin1, which protocol 2 uses for bytes)")
    return file_bytes(text, reader, "encoded bytes")


def _empty_bytes(reader: PickleReader) -> bytes:
    """`builtins.bytes()`: protocol 2's empty bytes."""
    return b""


def _ordered_dict(reader: PickleReader) -> collections.OrderedDict:
    """`collections.OrderedDict()`; its items follow as SETITEMS."""
    return collections.OrderedDict()


def _tuple(reader: PickleReader, items: Any) -> tuple:
    """`builtins.tuple((name, array))`: how paddle.save writes a tensor inside other objects."""
    if type(items) not in (tuple, list) or len(items) > 8:
        raise reader.refuse(f"builtins.tuple of a {type(items).__name__} (Paddle's tensors are (name, array) pairs)")
    return tuple(items)


def _constructors(table: Mapping[GlobalName, Callable[..., Any]]) -> Dict[GlobalName, Any]:
    return {key: Constructor(function, f"{key[0]}.{key[1]}") for key, function in table.items()}


#: the globals paddle.save writes (read from paddle/framework/io.py and checked on real files), each given
#: our own constructor; numpy's names for numpy 1 and numpy 2
PADDLE_GLOBALS: Mapping[GlobalName, Any] = {
    ("numpy", "ndarray"): NDARRAY,
    **_constructors({
        ("numpy", "dtype"): _dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("collections", "OrderedDict"): _ordered_dict,
        ("builtins", "tuple"): _tuple,
        ("builtins", "bytes"): _empty_bytes,
        ("_codecs", "encode"): _latin1_encode,
    }),
}


def read_whole_file(path: PathLike) -> bytes:
    """The file's bytes (one read; what arrays are copied from)."""
    with open(path, "rb") as f:
        return f.read()


def _join_split_arrays(state: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Undo protocol 2-3 splitting of arrays over 1 GiB into `<key>@@.<i>` slices."""
    info = state.pop(SPLIT_TABLE, None)
    if not info:
        return state
    try:
        for key, entry in info.items():
            slices = [state.pop(part) for part in entry["slices"]]
            if not all(isinstance(s, np.ndarray) and s.dtype == slices[0].dtype for s in slices):
                raise TypeError("slices that are not arrays of one type")
            state[key] = np.concatenate(slices).reshape(tuple(int(d) for d in entry["OriginShape"]))
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as error:
        raise PickleDataError(f"{source}: its table of split arrays ({SPLIT_TABLE}) does not match its arrays "
                              f"({type(error).__name__}: {error})") from None
    return state


def _is_tensor_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], np.ndarray)


class _Converter:
    """Applies a conversion to every array / tensor tuple inside dicts, lists and tuples, once per object:
    a value the file refers to many times is converted once (the reader bounds the nesting and refuses
    cycles), so neither time nor memory grows with the number of references."""

    def __init__(self, convert: Callable[[Any], Any]):
        self.convert, self.done = convert, {}

    def __call__(self, value: Any) -> Any:
        if id(value) in self.done:
            return self.done[id(value)]
        converted = self.convert(value)
        if converted is value:
            if isinstance(value, dict):
                converted = type(value)((k, self(v)) for k, v in value.items())
            elif isinstance(value, (list, tuple)):
                converted = type(value)(self(v) for v in value)
            else:
                return value
        self.done[id(value)] = converted
        return converted


def _contains_tensor_tuple(value: Any, seen: set) -> bool:
    if id(value) in seen:
        return False
    seen.add(id(value))
    if _is_tensor_tuple(value):
        return True
    children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return any(_contains_tensor_tuple(v, seen) for v in children)


def _tensor(value: Any, name: str = "") -> Any:
    if not isinstance(value, np.ndarray):
        return value
    tensor = paddle.to_tensor(value)
    if name:
        tensor.name = name
    return tensor


def _names(table: Any, source: str) -> Mapping[str, str]:
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise PickleDataError(f"{source}: its parameter-name table ({NAME_TABLE}) is not a mapping of names")
    return table


def load_paddle_file(path: PathLike, return_numpy: bool = False) -> Any:
    """Read a file written by `paddle.save` as data (`safe_pickle`), refusing (`UnsafePickleError`, naming
    the file and the reason) any pickle that asks for something else, and raising `PickleDataError` for
    one that is malformed. Returns what `paddle.load(path)` would."""
    source = str(path)
    data = read_whole_file(path)
    obj, _ = read_pickle(data, source, PADDLE_GLOBALS, Budget.for_file(len(data), source))
    if isinstance(obj, dict):
        obj = _join_split_arrays(obj, source)
        if NAME_TABLE in obj:  # a state dict: its arrays become (named) tensors
            names = _names(obj.pop(NAME_TABLE), source)
            if return_numpy:
                return type(obj)((k, owned(v) if isinstance(v, np.ndarray) else v) for k, v in obj.items())
            tensors: Dict[int, Any] = {}
            for key, value in obj.items():
                if id(value) not in tensors:
                    tensors[id(value)] = _tensor(value, names.get(key, ""))
            return type(obj)((k, tensors[id(v)]) for k, v in obj.items())
    if return_numpy:
        return _Converter(lambda v: owned(v[1]) if _is_tensor_tuple(v) else owned(v) if isinstance(v, np.ndarray) else v)(obj)
    if _contains_tensor_tuple(obj, set()):  # tensors saved inside other objects
        return _Converter(lambda v: _tensor(v[1], v[0]) if _is_tensor_tuple(v) else v)(obj)
    return _Converter(_tensor)(obj)
