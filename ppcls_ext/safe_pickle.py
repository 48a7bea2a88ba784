"""Unpickling restricted to an allow-list of globals.

Paddle's and PyTorch's weights files are pickles, and a plain `pickle.load` (so `paddle.load` and, before
torch 2.6, `torch.load`) calls whatever the file names - `os.system` included - while reading it. Here
every global the pickle asks for is looked up in an allow-list of harmless constructors (containers,
numpy arrays, tensor rebuilders); anything else stops the load with `UnsafePickleError` before it is
called, so a malicious file runs nothing.
"""
from __future__ import annotations

import _compat_pickle
import pickle
from typing import IO, Any, Callable, Mapping, Optional, Tuple

GlobalName = Tuple[str, str]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (or for a persistent object); nothing it named
    was called."""


def _python3_name(module: str, name: str) -> GlobalName:
    """Protocol 0-2 pickles name Python 2 modules (`__builtin__`, `copy_reg`); map them as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals come only from `allowed` ((module, name) -> object to use instead);
    `persistent_load`, when given, resolves persistent ids (PyTorch's storages)."""

    def __init__(self, file: IO[bytes], allowed: Mapping[GlobalName, Any], source: str,
                 persistent_load: Optional[Callable[[Any], Any]] = None):
        super().__init__(file, encoding="latin1")
        self._allowed = allowed
        self._source = source
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        key = _python3_name(module, name)
        if key not in self._allowed:
            raise UnsafePickleError(
                f"{self._source}: refused to load: it asks for the Python global '{key[0]}.{key[1]}', which a "
                f"weights file does not need (allowed: tensors, numpy arrays and scalars, containers); nothing was run")
        return self._allowed[key]

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafePickleError(f"{self._source}: refused to load: it refers to a persistent object, which this "
                                    f"kind of file does not contain")
        return self._persistent(pid)


def restricted_load(file: IO[bytes], allowed: Mapping[GlobalName, Any], source: str,
                    persistent_load: Optional[Callable[[Any], Any]] = None) -> Any:
    """Read one pickle from `file` with the globals of `allowed` only (see `RestrictedUnpickler`)."""
    return RestrictedUnpickler(file, allowed, source, persistent_load).load()
