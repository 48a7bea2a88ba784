"""Crafted weights files, assembled opcode by opcode (pickletools' opcode names), for the hostile-file
tests and the fuzzer: each is what an attacker could hand a user as a `.pdparams` or `.pth`, within the
globals a weights file may name. `write_all(folder)` writes every one and returns
{file name: (path, key words its refusal must contain)}."""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from typing import Dict, Iterable, List, Tuple

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_FORMATS = os.path.join(HERE, "fixtures", "torch_formats")


#: 100 000 distinct CJK characters (300 kB): punycode encodes them in quadratic time (minutes)
DISTINCT_TEXT = "".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(100_000))


# --- opcodes --------------------------------------------------------------------------------------
PROTO2 = b"\x80\x02"
MARK, STOP, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE = b"(", b".", b"}", b"]", b")"
APPEND, SETITEM, SETITEMS, TUPLE, REDUCE, BUILD, MEMOIZE = b"a", b"s", b"u", b"t", b"R", b"b", b"\x94"
NONE, TRUE, FALSE, BINPERSID, DUP, POP = b"N", b"\x88", b"\x89", b"Q", b"2", b"0"
TUPLE1, TUPLE2, TUPLE3 = b"\x85", b"\x86", b"\x87"


def text(value: str) -> bytes:
    data = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def raw(value: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(value)) + value


def integer(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(1 << 31) <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def put(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def call(function: bytes, *args: bytes) -> bytes:
    return function + tup(*args) + REDUCE


def dtype(code: str, order: str = "<") -> bytes:
    """numpy.dtype(code, False, True) BUILT with numpy's state for plain types."""
    return call(glob("numpy", "dtype"), text(code), FALSE, TRUE) + tup(
        integer(3), text(order), NONE, NONE, NONE, integer(-1), integer(-1), integer(0)) + BUILD


def array(shape: Iterable[int], dtype_ops: bytes, data_ops: bytes, fortran: bool = False) -> bytes:
    """numpy's array pickle: _reconstruct(ndarray, (0,), b'b') BUILT with (1, shape, dtype, fortran, data)."""
    head = call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), tup(integer(0)), raw(b"b"))
    return head + tup(integer(1), tup(*(integer(d) for d in shape)), dtype_ops, TRUE if fortran else FALSE, data_ops) + BUILD


def state_dict(entries: List[Tuple[str, bytes]]) -> bytes:
    """A protocol-2 pickle of {name: value, ...}."""
    return PROTO2 + EMPTY_DICT + MARK + b"".join(text(k) + v for k, v in entries) + SETITEMS + STOP


def small_array() -> bytes:
    return array((2,), dtype("f4"), raw(struct.pack("<2f", 1.0, 2.0)))


# --- Paddle files (.pdparams) ------------------------------------------------------------------------
def paddle_cases() -> Dict[str, Tuple[bytes, Tuple[str, ...]]]:
    """{name: (file bytes, key words of the refusal)}."""
    forged_pointer = struct.pack("<Q", 0x4141414141414141)
    void_object = (call(glob("numpy", "dtype"), text("V8"), FALSE, TRUE)
                   + tup(integer(3), text("|"), NONE, tup(text("a")),
                         EMPTY_DICT + text("a") + tup(dtype("O8"), integer(0)) + SETITEM,
                         integer(8), integer(1), integer(0)) + BUILD)  # the object flag cleared: numpy trusts it
    depth = 50_000
    shared_blob = raw(b"\0" * 4096) + put(0)
    many_arrays = b"".join(text(f"w{i}") + array((1024,), dtype("f4"), get(0)) for i in range(200))
    big_text = text("a" * 200_000) + put(0)
    many_encodes = b"".join(text(f"w{i}") + array((50_000,), dtype("f4"), call(glob("_codecs", "encode"), get(0),
                                                                                 text("latin1"))) for i in range(50))
    return {
        "void_object_scalar.pdparams": (state_dict([("SourceNumerics@@", call(glob("numpy.core.multiarray", "scalar"), void_object,
                                                               raw(forged_pointer)))]), ("numpy dtype 'V8'", "plain numbers")),
        "object_array.pdparams": (state_dict([("w", array((2,), dtype("O8"), EMPTY_LIST))]), ("numpy dtype 'O8'",)),
        "zero_stride_16gib.pdparams": (state_dict([("w", array((1 << 32, 1), dtype("f4"), raw(b"\0" * 4)))]),
                                       ("needs 17179869184 bytes", "gives 4")),
        "declared_larger.pdparams": (PROTO2 + b"\x8e" + struct.pack("<Q", 1 << 40) + b"\0" * 16, ("declares 1099511627776 bytes",)),
        "punycode.pdparams": (state_dict([("w", call(glob("_codecs", "encode"), text(DISTINCT_TEXT), text("punycode")))]),
                              ("codec 'punycode'",)),
        "deep_nesting.pdparams": (PROTO2 + EMPTY_LIST * depth + APPEND * (depth - 1) + STOP, ("nested deeper than 100",)),
        "self_reference.pdparams": (PROTO2 + EMPTY_LIST + MEMOIZE + get(0) + APPEND + STOP, ("holds itself",)),
        "cycle_through_dict.pdparams": (PROTO2 + EMPTY_DICT + put(0) + EMPTY_LIST + get(0) + APPEND + put(1) + POP
                                        + text("x") + get(1) + SETITEM + STOP, ("changes a container after storing it",)),
        "shared_bytes.pdparams": (PROTO2 + shared_blob + POP + EMPTY_DICT + MARK + many_arrays + SETITEMS + STOP,
                                  ("same bytes are the data of two arrays",)),
        "repeated_encode.pdparams": (PROTO2 + big_text + POP + EMPTY_DICT + MARK + many_encodes + SETITEMS + STOP,
                                     ("more than its limit",)),
        "colliding_int_keys.pdparams": (PROTO2 + EMPTY_DICT + MARK + b"".join(integer(k * ((1 << 61) - 1)) + NONE
                                                                             for k in range(1, 20_000)) + SETITEMS + STOP,
                                        ("dict key of type int",)),
        "huge_integer.pdparams": (PROTO2 + b"\x8b" + struct.pack("<i", 1 << 20) + b"\x01" * (1 << 20) + STOP,
                                  ("integer of 1048576 bytes",)),
        "class_instance.pdparams": (PROTO2 + glob("collections", "OrderedDict") + EMPTY_TUPLE + b"\x81" + STOP,
                                    ("instance of a class",)),
        "runs_command.pdparams": (PROTO2 + call(glob("os", "system"), text("echo ran")) + STOP, ("'os.system'", "nothing was run")),
        "tuple_of_a_long_list.pdparams": (PROTO2 + call(glob("builtins", "tuple"), EMPTY_LIST + MARK + NONE * 1000 + b"e")
                                          + STOP, ("builtins.tuple of a list",)),
        "state_of_a_list.pdparams": (PROTO2 + EMPTY_LIST + EMPTY_DICT + BUILD + STOP, ("sets the state of a list",)),
        "set.pdparams": (b"\x80\x04" + b"\x8f" + STOP, ("holds a set",)),
        "many_opcodes.pdparams": (PROTO2 + NONE * 2_000_100 + STOP, ("more than 2000000 pickle opcodes",)),
        "truncated.pdparams": (state_dict([("w", small_array())])[:-20], ("not a readable",)),
        "empty.pdparams": (b"", ("not a readable",)),
    }


# --- PyTorch zip files ---------------------------------------------------------------------------------
def torch_pid(key: str, numel: int, storage: str = "FloatStorage") -> bytes:
    return tup(text("storage"), glob("torch", storage), text(key), text("cpu"), integer(numel)) + BINPERSID


def rebuild(pid_ops: bytes, offset: int, size: Iterable[int], stride: Iterable[int]) -> bytes:
    return call(glob("torch._utils", "_rebuild_tensor_v2"), pid_ops, integer(offset), tup(*(integer(s) for s in size)),
                tup(*(integer(s) for s in stride)), FALSE, call(glob("collections", "OrderedDict")))


def torch_zip(data_pkl: bytes, storages: Dict[str, bytes], compress: bool = False) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", "3\n")
    return out.getvalue()


def zip_bomb(size: int = 64 << 20) -> bytes:
    """A torch zip whose one storage inflates to `size` bytes of zeros (a few kB in the file)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", state_dict([("w", rebuild(torch_pid("0", size // 4), 0, (size // 4,), (1,)))]))
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                member.write(chunk)
    return out.getvalue()


def storage_poisoning() -> bytes:
    """A data.pkl that sets the `name` of the torch.FloatStorage stand-in to IntStorage (the state of a
    module-level object: every later file would read float32 as int32)."""
    return torch_zip(PROTO2 + glob("torch", "FloatStorage") + EMPTY_DICT + text("name") + text("IntStorage")
                     + SETITEM + BUILD + STOP, {})


def torch_cases() -> Dict[str, Tuple[bytes, Tuple[str, ...]]]:
    one_mib = bytes(1 << 20)
    views = [(f"v{i}", rebuild(get(0), 0, (1 << 18,), (1,))) for i in range(2000)]
    return {
        "zip_bomb.pth": (zip_bomb(), ("declares 67108864 bytes", "zip bomb")),
        "storage_poisoning.pth": (storage_poisoning(), ("sets the state of a _StorageType",)),
        "calls_storage_type.pth": (torch_zip(PROTO2 + call(glob("torch", "FloatStorage"), integer(5)) + STOP, {}),
                                   ("calls a _StorageType",)),
        "zero_stride.pth": (torch_zip(state_dict([("w", rebuild(torch_pid("0", 1), 0, (1 << 20, 1 << 14), (0, 0)))]),
                                      {"0": bytes(4)}), ("more than its limit",)),
        "beyond_storage.pth": (torch_zip(state_dict([("w", rebuild(torch_pid("0", 4), 2, (4,), (1,)))]), {"0": bytes(16)}),
                               ("reaches element 5 of a storage of 4",)),
        "storage_smaller_than_declared.pth": (torch_zip(state_dict([("w", rebuild(torch_pid("0", 1 << 30), 0, (4,), (1,)))]),
                                                        {"0": bytes(16)}), ("has only 16 bytes",)),
        "views_of_one_storage.pth": (torch_zip(PROTO2 + torch_pid("0", 1 << 18) + put(0) + POP + EMPTY_DICT + MARK
                                               + b"".join(text(k) + v for k, v in views) + SETITEMS + STOP,
                                               {"0": one_mib}), ("more than its limit",)),
        "deep_nesting.pth": (torch_zip(PROTO2 + EMPTY_LIST * 20_000 + APPEND * 19_999 + STOP, {}), ("nested deeper",)),
        "not_a_storage.pth": (torch_zip(PROTO2 + tup(text("module"), text("os")) + BINPERSID + STOP, {}),
                              ("not a storage",)),
        "string_as_storage.pth": (torch_zip(state_dict([("w", call(glob("torch._utils", "_rebuild_tensor_v2"), text("x"),
                                                                    integer(0), tup(integer(1)), tup(integer(1))))]), {}),
                                  ("rebuilt from a str",)),
        "runs_command.pth": (torch_zip(PROTO2 + call(glob("posix", "system"), text("echo ran")) + STOP, {}),
                             ("'posix.system'",)),
        "punycode.pth": (torch_zip(state_dict([("w", call(glob("_codecs", "encode"), text(DISTINCT_TEXT),
                                                          text("punycode")))]), {}), ("codec 'punycode'",)),
    }


# --- PyTorch legacy files --------------------------------------------------------------------------
def legacy(main: bytes, keys: List[str], storages: bytes) -> bytes:
    header = pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2) + pickle.dumps(
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    return header + main + pickle.dumps(keys, protocol=2) + storages


def legacy_pid(key: str, numel: int, view: bytes = NONE) -> bytes:
    return tup(text("storage"), glob("torch", "FloatStorage"), text(key), text("cpu"), integer(numel), view) + BINPERSID


def legacy_cases() -> Dict[str, Tuple[bytes, Tuple[str, ...]]]:
    tensor = rebuild(legacy_pid("0", 4), 0, (4,), (1,))
    return {
        "legacy_count_1tib.pth": (legacy(state_dict([("w", tensor)]), ["0"], struct.pack("<Q", 1 << 38) + bytes(16)),
                                  ("ends inside storage '0'", "274877906944 elements")),
        "legacy_count_overflow.pth": (legacy(state_dict([("w", tensor)]), ["0"], struct.pack("<Q", (1 << 64) - 1) + bytes(16)),
                                      ("ends inside storage '0'",)),
        "legacy_self_reference.pth": (legacy(PROTO2 + EMPTY_DICT + MEMOIZE + text("me") + get(0) + SETITEM + STOP, [], b""),
                                      ("holds itself",)),
        "legacy_view_beyond_root.pth": (legacy(state_dict([("w", rebuild(legacy_pid("0", 4, tup(text("1"), integer(2), integer(8))),
                                                                          0, (8,), (1,)))]), ["0"],
                                               struct.pack("<Q", 4) + bytes(16)), ("a view",)),
        "legacy_deep_nesting.pth": (legacy(PROTO2 + EMPTY_LIST * 20_000 + APPEND * 19_999 + STOP, [], b""), ("nested deeper",)),
    }


def write_all(folder: str) -> Dict[str, Tuple[str, Tuple[str, ...]]]:
    """Write every crafted file into `folder`: {name: (path, key words of its refusal)}."""
    written = {}
    for name, (data, words) in {**paddle_cases(), **torch_cases(), **legacy_cases()}.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        written[name] = (path, words)
    return written


def model_for(name: str) -> str:
    """A model whose loader reads the file: MicroNet for Paddle files, EfficientNet for PyTorch ones."""
    return "EfficientNetB0" if name.endswith(".pth") else "MicroNet_M0"


def refusals(folder: str) -> dict:
    """Runs in a child process (under an address-space limit): every crafted file through
    `create_model(pretrained=...)`, with the genuine torch fixtures read before and after. Returns
    {"cases": {name: {"error", "message", "seconds"}}, "genuine_unchanged": bool, "peak_rss_mib": float}."""
    import resource
    import time

    import numpy as np

    import ppcls_ext
    from ppcls_ext.convert.torch_file import read_foreign_state_dict

    genuine = [os.path.join(TORCH_FORMATS, name) for name in ("zip.pth", "legacy.pth")]
    before = [read_foreign_state_dict(path)[1] for path in genuine]
    cases = {}
    for name, (path, _) in write_all(folder).items():
        start = time.perf_counter()
        try:
            ppcls_ext.create_model(model_for(name), pretrained=path)
            error, message = None, "loaded"
        except Exception as caught:  # reported to the test, which requires IncompatibleWeightsError
            error, message = type(caught).__name__, str(caught)
        cases[name] = {"error": error, "message": message, "seconds": time.perf_counter() - start}
    after = [read_foreign_state_dict(path)[1] for path in genuine]
    unchanged = all(sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
                    for a, b in zip(before, after))
    return {"cases": cases, "genuine_unchanged": unchanged,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
