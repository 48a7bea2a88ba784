"""Reading Paddle's own files (`.pdparams`, `.pdopt`, `.pdema`, `.pdstates`) without running what they
contain: the one loader of every file we read with pickle.

`paddle.save` pickles numpy arrays (a state dict's tensors become arrays, their parameter names go into a
`StructuredToParameterName@@` table; arrays over 1 GiB saved with protocol 2-3 are split into slices listed
under `UnpackBigParamInfor@@`), Python numbers and strings, numpy scalars, containers, and - in objects
that are not state dicts - tensors as `(name, array)` tuples. Those are the only globals allowed here; the
result is what `paddle.load` returns for the same file (tensors, or numpy arrays with `return_numpy`).
"""
from __future__ import annotations

import codecs
import collections
import os
from typing import Any, Dict, Mapping, Union

import numpy as np
import paddle

from .safe_pickle import GlobalName, restricted_load

PathLike = Union[str, os.PathLike]

NAME_TABLE = "StructuredToParameterName@@"
SPLIT_TABLE = "UnpackBigParamInfor@@"  # sic: Paddle's key


def _numpy_globals() -> Dict[GlobalName, Any]:
    """numpy's array and scalar reconstructors under their numpy 1 and numpy 2 module names."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float32(0).__reduce__()[0]
    entries: Dict[GlobalName, Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries[(module, "_reconstruct")] = reconstruct
        entries[(module, "scalar")] = scalar
    return entries


#: every global that paddle.save writes into these files (read from paddle/framework/io.py and checked on
#: real files): arrays, numpy scalars, OrderedDict, bytes in protocol 2 (`_codecs.encode`), tensor tuples
PADDLE_GLOBALS: Mapping[GlobalName, Any] = {
    **_numpy_globals(),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "tuple"): tuple,
    ("_codecs", "encode"): codecs.encode,
}


def _join_split_arrays(state: Dict[str, Any]) -> Dict[str, Any]:
    """Undo protocol 2-3 splitting of arrays over 1 GiB into `<key>@@.<i>` slices."""
    info = state.pop(SPLIT_TABLE, None)
    if not info:
        return state
    for key, entry in info.items():
        slices = [state.pop(part) for part in entry["slices"]]
        state[key] = np.concatenate(slices).reshape(entry["OriginShape"])
    return state


def _to_tensor(array: np.ndarray, name: str = "") -> paddle.Tensor:
    tensor = paddle.to_tensor(array)
    if name:
        tensor.name = name
    return tensor


def _is_tensor_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], np.ndarray)


def _convert_nested(value: Any, convert) -> Any:
    """Apply `convert` to every array / tensor tuple inside dicts, lists and tuples."""
    converted = convert(value)
    if converted is not value:
        return converted
    if isinstance(value, dict):
        return type(value)((k, _convert_nested(v, convert)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_convert_nested(v, convert) for v in value)
    return value


def _contains(value: Any, predicate) -> bool:
    if predicate(value):
        return True
    if isinstance(value, dict):
        return any(_contains(v, predicate) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains(v, predicate) for v in value)
    return False


def load_paddle_file(path: PathLike, return_numpy: bool = False) -> Any:
    """Read a file written by `paddle.save`, refusing (`UnsafePickleError`, naming the file and the global)
    any pickle that asks for something else than data. Returns what `paddle.load(path)` would."""
    with open(path, "rb") as f:
        obj = restricted_load(f, PADDLE_GLOBALS, source=str(path))
    if isinstance(obj, dict):
        obj = _join_split_arrays(obj)
        if NAME_TABLE in obj:  # a state dict: its arrays become (named) tensors
            names = obj.pop(NAME_TABLE)
            if return_numpy:
                return obj
            return type(obj)((k, _to_tensor(v, names.get(k, "")) if isinstance(v, np.ndarray) else v) for k, v in obj.items())
    if return_numpy:
        return _convert_nested(obj, lambda v: v[1] if _is_tensor_tuple(v) else v)
    if _contains(obj, _is_tensor_tuple):  # tensors saved inside other objects
        return _convert_nested(obj, lambda v: _to_tensor(v[1], v[0]) if _is_tensor_tuple(v) else v)
    return _convert_nested(obj, lambda v: _to_tensor(v) if isinstance(v, np.ndarray) else v)
