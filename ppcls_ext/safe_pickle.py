"""Pickles read as data: an opcode reader that calls nothing a file names.

Paddle's and PyTorch's weights files are pickles, and `pickle.load` (so `paddle.load` and, before torch 2.6,
`torch.load`) calls whatever they name. This reader interprets the opcodes itself and makes only None, bools,
ints, floats, str, bytes, lists, tuples and dicts, plus what the caller's allow-list constructors make from
them (`Constructor`, `Pending`: numpy arrays of plain numbers copied from the file's own bytes, tensors
rebuilt by us). Everything else is refused with `UnsafePickleError` ("<file>: refused to load: <reason>")
before it runs: any other global, class instances, extension codes, sets, containers changed after being
stored (the only way to make a cycle), nesting deeper than `Limits.depth`, more than `Limits.opcodes`
opcodes (each makes at most one value or entry, so this bounds them all), or more bytes made than the
file's `Budget`. So a hostile file runs nothing, crashes nothing, and costs time and memory bounded by its
size.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import gc
import pickle
import pickletools
import struct
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .errors import UserError

GlobalName = Tuple[str, str]


class PickleDataError(UserError, pickle.UnpicklingError):
    """A pickle that cannot be read as data: malformed or cut short (or refused, see `UnsafePickleError`)."""


class UnsafePickleError(PickleDataError):
    """A pickle refused: it asks for something that is not plain data (a global outside the allow-list,
    a class instance, a persistent object where none may be) or goes beyond the reader's limits; nothing
    it named was called."""


@dataclass(frozen=True)
class Limits:
    """Container nesting and opcodes one pickle may have. Every opcode makes at most one value, memo entry
    or container entry, so the opcode count bounds them all (2 million: under 0.5 GB at worst); an
    EfficientNetB0 .pdparams has ~9 000 opcodes and nests 2 deep."""

    depth: int = 100
    opcodes: int = 2_000_000


LIMITS = Limits()
#: longest decimal (protocol 0) number and widest binary integer accepted: far beyond 64-bit counters
#: (torch's legacy magic number is 10 bytes), far below what would be slow to print or compute with
MAX_DIGITS, MAX_INT_BYTES = 40, 16


class Budget:
    """The bytes one file may make its reader produce (arrays, bytes, decoded text): a small multiple of
    its size, checked before each allocation."""

    def __init__(self, limit: int, source: str):
        self.limit, self.spent, self.source = int(limit), 0, source

    @classmethod
    def for_file(cls, size: int, source: str, factor: int = 2) -> "Budget":
        """`factor` times the file's size plus 1 MiB (bfloat16 widened to float32 doubles a tensor)."""
        return cls(factor * size + (1 << 20), source)

    def spend(self, size: int, what: str) -> None:
        if size < 0 or self.spent + size > self.limit:
            raise UnsafePickleError(f"{self.source}: refused to load: {what} would bring what the file makes to "
                                    f"{self.spent + size} bytes, more than its limit of {self.limit} (file size x2 "
                                    f"+ 1 MiB); data repeated or declared larger than it is")
        self.spent += size


class Constructor:
    """What an allow-list gives in place of a callable global: `function(reader, *args)` is called by
    REDUCE; it checks its arguments and makes a value of the allowed kinds."""

    __slots__ = ("function", "name")

    def __init__(self, function: Callable[..., Any], name: str):
        self.function, self.name = function, name


class Pending:
    """A value made in two steps, REDUCE then BUILD (numpy's arrays and dtypes): `build` turns the state
    into the finished value, which replaces this object wherever the pickle refers to it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None

    def build(self, reader: "PickleReader", state: Any) -> Any:
        raise NotImplementedError


class Blob:
    """Bytes of the file (or of a decoded string) not copied yet: an array made from them copies them once;
    anywhere else they become `bytes`, paid from the budget."""

    __slots__ = ("buffer", "start", "stop", "claimed", "_bytes")

    def __init__(self, buffer: bytes, start: int, stop: int):
        self.buffer, self.start, self.stop, self.claimed, self._bytes = buffer, start, stop, False, None

    def __len__(self) -> int:
        return self.stop - self.start

    def to_bytes(self, budget: Budget) -> bytes:
        if self._bytes is None:
            budget.spend(len(self), "a bytes value")
            self._bytes = self.buffer[self.start:self.stop]
        return self._bytes

    def claim(self, source: str) -> Tuple[bytes, int, int]:
        """(buffer, offset, length) for the one array these bytes become."""
        if self.claimed:
            raise UnsafePickleError(f"{source}: refused to load: the same bytes are the data of two arrays")
        self.claimed = True
        return self.buffer, self.start, len(self)


def printable(text: str) -> str:
    """`text` for a one-line message: as it is, or escaped where it holds line breaks or other controls."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def describe(value: Any, limit: int = 60) -> str:
    """A value read from a file, for a one-line message: short text and numbers as they are (cut to `limit`
    characters), small tuples, lists and dicts item by item, anything else by its type and size - never a
    whole repr (which could be huge, span lines, or run a forged object's code)."""
    if isinstance(value, (str, bytes)):
        text = repr(value[:limit]) + ("..." if len(value) > limit else "")
    elif value is None or type(value) in (bool, int, float):
        text = repr(value)
    elif type(value) in (tuple, list, dict) and len(value) <= 4 and limit >= 12:
        if type(value) is dict:
            items = ", ".join(f"{describe(k, limit // 3)}: {describe(v, limit // 3)}" for k, v in value.items())
            text = "{" + items + "}"
        else:
            items = ", ".join(describe(item, limit // 3) for item in value)
            text = f"({items}{',' if len(value) == 1 else ''})" if type(value) is tuple else f"[{items}]"
    else:
        size = f" of {len(value)} items" if type(value) in (tuple, list, dict) else ""
        text = f"<{type(value).__name__}{size}>"
    return printable(text)


def python3_name(module: str, name: str) -> GlobalName:
    """Protocol 0-2 pickles name Python 2 modules (`__builtin__`, `copy_reg`); map them as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


_CONTAINERS = frozenset({list, dict, collections.OrderedDict, tuple})
_PLAIN = frozenset({str, int, float, bool, type(None), bytes})  # values stored as they are
_KEY_TYPES = (str, bytes, int, bool, type(None))
_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
_U16, _U32, _I32, _U64, _F64 = (struct.Struct(f).unpack_from for f in ("<H", "<I", "<i", "<Q", ">d"))
_CODES = {op.name: op.code.encode("latin-1")[0] for op in pickletools.opcodes}
_MEMOIZE, _BINPUT, _BINGET, _LONG_BINGET, _BININT1, _SHORT_BINUNICODE, _NEWFALSE, _NEWTRUE, _NONE = (
    _CODES[name] for name in ("MEMOIZE", "BINPUT", "BINGET", "LONG_BINGET", "BININT1", "SHORT_BINUNICODE", "NEWFALSE",
                              "NEWTRUE", "NONE"))
_MISSING = object()


class PickleReader:
    """Reads one pickle from `buffer` at a position, making data only (see the module's docstring).
    `allowed` maps (module, name) to a `Constructor` or to a plain token value (a storage type, numpy's
    ndarray class as an argument); `persistent_load(pid)` resolves persistent ids (PyTorch's storages)."""

    def __init__(self, buffer: bytes, source: str, allowed: Mapping[GlobalName, Any], budget: Budget,
                 persistent_load: Optional[Callable[[Any], Any]] = None, limits: Limits = LIMITS):
        self.buffer, self.source = buffer, source
        self.allowed, self.budget, self.persistent, self.limits = allowed, budget, persistent_load, limits

    # --- errors -------------------------------------------------------------------------------------
    def refuse(self, reason: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.source}: refused to load: {reason}")

    def _malformed(self, reason: str) -> PickleDataError:
        return PickleDataError(f"{self.source}: not a readable pickle: {reason}")

    # --- reading ------------------------------------------------------------------------------------
    def read(self, start: int = 0) -> Tuple[Any, int]:
        """(the pickled value, the position after its STOP opcode). The cyclic garbage collector is paused
        meanwhile: the reader makes no cycles, and with Paddle's objects in memory its passes, triggered by
        the many small values a pickle makes, cost more than the reading."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._read(start)
        finally:
            self.stack = self.marks = self.memo = self._containers = self._settled = None  # type: ignore[assignment]
            if enabled:
                gc.enable()

    def _read(self, start: int) -> Tuple[Any, int]:
        """`read`: the opcodes that make up most of a weights file (memo traffic, small ints and names,
        booleans) are handled in the loop itself, the others by their `_op_` method (`_DISPATCH`)."""
        self.pos, self.stack, self.marks, self.memo = start, [], [], {}
        self._containers: Dict[int, list] = {}  # id -> [container, depth, sealed, holds Blobs]; keeps them alive
        self._settled: Dict[int, tuple] = {}  # id of a tuple holding Blobs -> its copy holding bytes
        self.done = False
        buffer, dispatch, limit, memo = self.buffer, _DISPATCH, self.limits.opcodes, self.memo
        stack, pos, size, count, code = self.stack, start, len(buffer), 0, -1
        try:
            while not self.done:
                if pos >= size:
                    raise self._malformed(f"it ends at byte {pos} before its STOP opcode (truncated?)")
                code = buffer[pos]
                pos += 1
                count += 1
                if count > limit:
                    raise self.refuse(f"more than {limit} pickle opcodes")
                if code == _MEMOIZE:
                    memo[len(memo)] = stack[-1]
                elif code == _BINPUT:
                    memo[buffer[pos]] = stack[-1]
                    pos += 1
                elif code == _BINGET or code == _LONG_BINGET:
                    index = buffer[pos] if code == _BINGET else _U32(buffer, pos)[0]
                    pos += 1 if code == _BINGET else 4
                    value = memo.get(index, _MISSING)
                    if value is _MISSING:
                        raise self._malformed(f"memo entry {index} is read before it is written")
                    stack.append(value.value if isinstance(value, Pending) and value.value is not None else value)
                elif code == _BININT1:
                    stack.append(buffer[pos])
                    pos += 1
                elif code == _SHORT_BINUNICODE:
                    end = pos + 1 + buffer[pos]
                    if end > size:
                        raise self._malformed(f"byte {pos} declares {buffer[pos]} bytes but {size - pos - 1} remain")
                    stack.append(str(buffer[pos + 1:end], "utf-8", "surrogatepass"))
                    pos = end
                elif code == _NEWFALSE or code == _NEWTRUE or code == _NONE:
                    stack.append(False if code == _NEWFALSE else True if code == _NEWTRUE else None)
                else:
                    handler = dispatch[code]
                    if handler is None:
                        raise self._malformed(f"unknown opcode {bytes([code])!r} at byte {pos - 1}")
                    self.pos, self.stack = pos, stack
                    handler(self)
                    pos, stack = self.pos, self.stack
        except PickleDataError:
            raise
        except Exception as error:  # a malformed stream: empty stack, wrong types, bad text, ...
            name = _OPCODE_NAMES.get(code, "?")
            detail = printable(str(error))[:200]
            raise self._malformed(f"opcode {name} at byte {pos - 1} fails ({type(error).__name__}: {detail})") from None
        return self.result, self.pos

    def _take(self, length: int) -> int:
        start, end = self.pos, self.pos + length
        if length < 0 or end > len(self.buffer):
            raise self._malformed(f"byte {start} declares {length} bytes but {len(self.buffer) - start} remain "
                                  "(truncated or forged)")
        self.pos = end
        return start

    def _byte(self) -> int:
        value = self.buffer[self.pos]
        self.pos += 1
        return value

    def _unpack(self, unpack: Callable[[bytes, int], tuple], width: int) -> Any:
        value = unpack(self.buffer, self._take(width))[0]
        return value

    def _line(self) -> bytes:
        end = self.buffer.find(b"\n", self.pos)
        if end < 0:
            raise self._malformed(f"the text line at byte {self.pos} has no end")
        line = self.buffer[self.pos:end]
        self.pos = end + 1
        return line

    def _text(self, length: int) -> str:
        start = self._take(length)
        return str(self.buffer[start:start + length], "utf-8", "surrogatepass")

    def _latin1(self, length: int) -> str:
        start = self._take(length)
        return str(self.buffer[start:start + length], "latin-1")

    # --- values, containers and their bookkeeping ---------------------------------------------------
    def _register(self, container: Any, depth: int = 1, raw: bool = False) -> list:
        info = [container, depth, False, raw]
        self._containers[id(container)] = info
        return info

    def _adopt(self, parent: list, child: Any) -> None:
        """`child` is now inside `parent`: it may no longer change (no cycles), and the parent is deeper."""
        info = self._containers.get(id(child))
        if info is None:
            return
        if info is parent:
            raise self.refuse("a container holds itself (a self-reference)")
        info[2] = True
        if info[1] >= parent[1]:
            parent[1] = info[1] + 1
            if parent[1] > self.limits.depth:
                raise self.refuse(f"containers nested deeper than {self.limits.depth} levels")

    def _resolved(self, value: Any) -> Any:
        if isinstance(value, Pending):
            if value.value is None:
                raise self.refuse(f"a {type(value).__name__} is used before its BUILD")
            return value.value
        return value

    def settle(self, value: Any) -> Any:
        """`value` as it may be stored or returned: Blobs as bytes, finished pending values."""
        kind = type(value)
        if kind in _PLAIN:
            return value
        if kind is Blob:
            return value.to_bytes(self.budget)
        if kind is tuple:
            info = self._containers.get(id(value))
            if info is not None and info[3]:
                if id(value) not in self._settled:
                    copy = tuple(v.to_bytes(self.budget) if type(v) is Blob else v for v in value)
                    self._register(copy, info[1])
                    self._settled[id(value)] = copy
                return self._settled[id(value)]
            return value
        return self._resolved(value)

    def _mutable(self, kind: type) -> Tuple[Any, list]:
        """The container on top of the stack, which must be of `kind` (list or dict) and not yet stored."""
        target = self.stack[-1]
        info = self._containers.get(id(target))
        if info is None or not isinstance(target, kind):
            raise self.refuse(f"it adds items to a {type(target).__name__}, not to a {kind.__name__} of its own")
        if info[2]:
            raise self.refuse("it changes a container after storing it in another (a self-reference?)")
        return target, info

    def _key(self, key: Any) -> Any:
        kind = type(key)
        if kind is not str:
            key = self.settle(key)
            if not isinstance(key, _KEY_TYPES) or (type(key) is int and abs(key) >= 1 << 61):
                raise self.refuse(f"a dict key of type {type(key).__name__} (keys are names and small numbers)")
        return key

    def _store(self, info: list, value: Any) -> Any:
        """`value` settled and adopted by the container of `info`."""
        if type(value) not in _PLAIN:
            value = self.settle(value)
            self._adopt(info, value)
        return value

    def _set_items(self, target: dict, info: list, items: List[Any]) -> None:
        if len(items) % 2:
            raise self._malformed("SETITEMS with an odd number of items")
        for index in range(0, len(items), 2):
            target[self._key(items[index])] = self._store(info, items[index + 1])

    def _new_tuple(self, items: List[Any]) -> None:
        """A tuple of `items` (settled, except Blobs: a tuple holding them is an argument list or an array's
        state, settled only where it is stored); one of plain values only needs no bookkeeping."""
        raw, plain = False, True
        for index, item in enumerate(items):
            kind = type(item)
            if kind is Blob:
                raw, plain = True, False
            elif kind not in _PLAIN:
                items[index] = self.settle(item)
                plain = False
        value = tuple(items)
        if not plain:
            info = self._register(value, raw=raw)
            for item in value:
                if type(item) in _CONTAINERS:
                    self._adopt(info, item)
        self.stack.append(value)

    def _made(self, value: Any) -> Any:
        """A constructor's result, registered when it is a container (its items are checked as stored)."""
        if type(value) in _CONTAINERS and id(value) not in self._containers:
            items = [self._key(k) for k in value] + list(value.values()) if isinstance(value, dict) else list(value)
            info = self._register(value)
            for item in items:
                if type(item) is Blob or isinstance(item, Pending):
                    raise self.refuse(f"{type(item).__name__} inside a constructed {type(value).__name__}")
                self._adopt(info, item)
        return value

    def _pop_mark(self) -> List[Any]:
        items = self.stack
        self.stack = self.marks.pop()
        return items

    # --- opcodes: structure -------------------------------------------------------------------------
    def _op_PROTO(self) -> None:
        if self._byte() > 5:
            raise self._malformed("an unknown pickle protocol")

    def _op_FRAME(self) -> None:
        self._unpack(_U64, 8)  # a frame only groups opcodes for buffered reading; the whole file is in memory

    def _op_STOP(self) -> None:
        self.result = self.settle(self.stack.pop())
        self.done = True

    def _op_MARK(self) -> None:
        self.marks.append(self.stack)
        self.stack = []

    def _op_POP(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()

    def _op_POP_MARK(self) -> None:
        self._pop_mark()

    def _op_DUP(self) -> None:
        self.stack.append(self.stack[-1])

    # --- opcodes: memo ------------------------------------------------------------------------------
    def _get(self, index: int) -> None:
        if index not in self.memo:
            raise self._malformed(f"memo entry {index} is read before it is written")
        value = self.memo[index]
        if isinstance(value, Pending) and value.value is not None:
            value = value.value
        self.stack.append(value)

    def _op_GET(self) -> None:
        line = self._line()
        if len(line) > MAX_DIGITS:
            raise self._malformed("a memo index of more than 40 digits")
        self._get(int(line))

    def _op_PUT(self) -> None:
        line = self._line()
        if len(line) > MAX_DIGITS:
            raise self._malformed("a memo index of more than 40 digits")
        self.memo[int(line)] = self.stack[-1]

    def _op_LONG_BINPUT(self) -> None:
        self.memo[self._unpack(_U32, 4)] = self.stack[-1]

    # --- opcodes: scalars ---------------------------------------------------------------------------
    def _decimal(self) -> bytes:
        line = self._line()
        if len(line) > MAX_DIGITS + 2:
            raise self.refuse(f"a number of {len(line)} digits")
        return line

    def _op_INT(self) -> None:
        line = self._decimal()
        self.stack.append(False if line == b"00" else True if line == b"01" else int(line))

    def _op_LONG(self) -> None:
        line = self._decimal()
        self.stack.append(int(line[:-1] if line.endswith(b"L") else line))

    def _op_BININT(self) -> None:
        self.stack.append(self._unpack(_I32, 4))

    def _op_BININT2(self) -> None:
        self.stack.append(self._unpack(_U16, 2))

    def _long(self, length: int) -> None:
        if length > MAX_INT_BYTES:
            raise self.refuse(f"an integer of {length} bytes")
        start = self._take(length)
        self.stack.append(int.from_bytes(self.buffer[start:start + length], "little", signed=True))

    def _op_LONG1(self) -> None:
        self._long(self._byte())

    def _op_LONG4(self) -> None:
        self._long(self._unpack(_I32, 4))

    def _op_FLOAT(self) -> None:
        self.stack.append(float(self._decimal()))

    def _op_BINFLOAT(self) -> None:
        self.stack.append(self._unpack(_F64, 8))

    # --- opcodes: text and bytes --------------------------------------------------------------------
    def _op_STRING(self) -> None:
        line = self._line()
        if len(line) < 2 or line[0] != line[-1] or line[:1] not in (b"'", b'"'):
            raise self._malformed("the STRING opcode's argument is not quoted")
        self.stack.append(codecs.escape_decode(line[1:-1])[0].decode("latin-1"))

    def _op_BINSTRING(self) -> None:
        self.stack.append(self._latin1(self._unpack(_I32, 4)))

    def _op_SHORT_BINSTRING(self) -> None:
        self.stack.append(self._latin1(self._byte()))

    def _op_UNICODE(self) -> None:
        self.stack.append(str(self._line(), "raw-unicode-escape"))

    def _op_BINUNICODE(self) -> None:
        self.stack.append(self._text(self._unpack(_U32, 4)))

    def _op_BINUNICODE8(self) -> None:
        self.stack.append(self._text(self._unpack(_U64, 8)))

    def _blob(self, length: int) -> None:
        start = self._take(length)
        self.stack.append(Blob(self.buffer, start, start + length))

    def _op_SHORT_BINBYTES(self) -> None:
        self._blob(self._byte())

    def _op_BINBYTES(self) -> None:
        self._blob(self._unpack(_U32, 4))

    def _op_BINBYTES8(self) -> None:
        self._blob(self._unpack(_U64, 8))

    # --- opcodes: containers ------------------------------------------------------------------------
    def _op_EMPTY_LIST(self) -> None:
        self.stack.append(self._register([])[0])

    def _op_EMPTY_DICT(self) -> None:
        self.stack.append(self._register({})[0])

    def _op_EMPTY_TUPLE(self) -> None:
        self._new_tuple([])

    def _op_TUPLE(self) -> None:
        self._new_tuple(self._pop_mark())

    def _op_TUPLE1(self) -> None:
        self._new_tuple([self.stack.pop()])

    def _pop_items(self, count: int) -> List[Any]:
        items = self.stack[-count:]
        if len(items) < count:
            raise IndexError("stack underflow")
        del self.stack[-count:]
        return items

    def _op_TUPLE2(self) -> None:
        self._new_tuple(self._pop_items(2))

    def _op_TUPLE3(self) -> None:
        self._new_tuple(self._pop_items(3))

    def _op_LIST(self) -> None:
        items = self._pop_mark()
        self._op_EMPTY_LIST()
        self._append(items)

    def _op_DICT(self) -> None:
        items = self._pop_mark()
        self._op_EMPTY_DICT()
        target, info = self._mutable(dict)
        self._set_items(target, info, items)

    def _append(self, items: List[Any]) -> None:
        target, info = self._mutable(list)
        target.extend(self._store(info, item) for item in items)

    def _op_APPEND(self) -> None:
        self._append([self.stack.pop()])

    def _op_APPENDS(self) -> None:
        self._append(self._pop_mark())

    def _op_SETITEM(self) -> None:
        items = self._pop_items(2)
        target, info = self._mutable(dict)
        self._set_items(target, info, items)

    def _op_SETITEMS(self) -> None:
        items = self._pop_mark()
        target, info = self._mutable(dict)
        self._set_items(target, info, items)

    # --- opcodes: globals, calls and objects --------------------------------------------------------
    def _global(self, module: str, name: str) -> None:
        key = python3_name(module, name)
        if key not in self.allowed:
            raise self.refuse(f"it asks for the Python global '{printable(key[0])}.{printable(key[1])}', which a weights "
                              f"file does not need (allowed: tensors, numpy arrays and scalars, containers); nothing was run")
        self.stack.append(self.allowed[key])

    def _op_GLOBAL(self) -> None:
        module = self._line().decode("utf-8")
        self._global(module, self._line().decode("utf-8"))

    def _op_STACK_GLOBAL(self) -> None:
        name, module = self._pop_items(2)[::-1]
        if type(name) is not str or type(module) is not str:
            raise self._malformed("STACK_GLOBAL needs two strings")
        self._global(module, name)

    def _op_REDUCE(self) -> None:
        args, function = self.stack.pop(), self.stack[-1]
        if type(function) is not Constructor:
            raise self.refuse(f"it calls a {type(function).__name__}, which is not a constructor of the allow-list")
        if type(args) is not tuple:
            raise self.refuse(f"{function.name} is called with a {type(args).__name__} as its arguments")
        try:
            value = function.function(self, *args)
        except TypeError as error:
            raise self.refuse(f"{function.name} is called with {len(args)} arguments ({error})") from None
        self.stack[-1] = self._made(value)

    def _op_BUILD(self) -> None:
        state, target = self.stack.pop(), self.stack[-1]
        if isinstance(target, Pending):
            if target.value is not None:
                raise self.refuse(f"a {type(target).__name__} is built twice")
            target.value = target.build(self, state if type(state) is Blob else self._resolved(state))
            self.stack[-1] = self._made(target.value)
        elif isinstance(target, dict) and id(target) in self._containers:
            # attributes of a dict (PyTorch's state_dict._metadata): no data, dropped
            state = self.settle(state)
            if not (isinstance(state, dict) or (type(state) is tuple and len(state) == 2
                                                and all(s is None or isinstance(s, dict) for s in state))):
                raise self.refuse(f"a dict is given a {type(state).__name__} as its state")
        else:
            raise self.refuse(f"it sets the state of a {type(target).__name__}")

    def _persistent(self, pid: Any) -> None:
        if self.persistent is None:
            raise self.refuse("it refers to a persistent object, which this kind of file does not contain")
        self.stack.append(self._made(self.persistent(pid)))

    def _op_PERSID(self) -> None:
        self._persistent(self._line().decode("ascii"))

    def _op_BINPERSID(self) -> None:
        self._persistent(self.settle(self.stack.pop()))

    def _refused(reason: str) -> Callable[["PickleReader"], None]:
        def op(self: "PickleReader") -> None:
            raise self.refuse(reason)
        return op

    _op_INST = _op_OBJ = _op_NEWOBJ = _op_NEWOBJ_EX = _refused("it creates an instance of a class")
    _op_EXT1 = _op_EXT2 = _op_EXT4 = _refused("it uses the extension registry (copyreg codes)")
    _op_EMPTY_SET = _op_ADDITEMS = _op_FROZENSET = _refused("it holds a set, which weights files do not")
    _op_BYTEARRAY8 = _op_NEXT_BUFFER = _op_READONLY_BUFFER = _refused(
        "it uses pickle protocol 5 buffers, which paddle.save and torch.save do not write")
    del _refused


#: opcode -> the `PickleReader` method that handles it (None: unknown, or handled in `_read`'s loop)
_DISPATCH: List[Optional[Callable[[PickleReader], None]]] = [None] * 256
for _code, _name in _OPCODE_NAMES.items():
    _DISPATCH[_code] = getattr(PickleReader, f"_op_{_name}", None)


def read_pickle(buffer: bytes, source: str, allowed: Mapping[GlobalName, Any], budget: Budget,
                start: int = 0, persistent_load: Optional[Callable[[Any], Any]] = None,
                limits: Limits = LIMITS) -> Tuple[Any, int]:
    """(value, end position) of the pickle at `start` in `buffer`, read as data (see `PickleReader`)."""
    return PickleReader(buffer, source, allowed, budget, persistent_load, limits).read(start)
