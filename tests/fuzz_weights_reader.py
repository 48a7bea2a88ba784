"""Fuzz the weights readers (not part of the test suite): mutated genuine files and random opcode streams
through `read_weights_file` (every entry point's reader) and `load_paddle_file` (checkpoints).

    python tests/fuzz_weights_reader.py --seconds 300 [--seed 0]

Each batch runs in a child process under a 4 GiB address-space limit; a case is a finding when the
reader raises anything but its one-line errors, takes more than --slow seconds, or kills the child (a
crash), or when the genuine files read differently after the batch (state poisoned). Findings are printed
with the seed that reproduces them.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
TORCH_FORMATS = os.path.join(HERE, "fixtures", "torch_formats")
OPCODES = [bytes([b]) for b in b"(.0123FIJKLMNPQRSTUVXabcdeghijlopqrstu}])G\x80\x81\x82\x85\x86\x87\x88\x89\x8a\x8b"
                                  b"BC\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95"]
NAMES = [("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
         ("numpy.core.multiarray", "scalar"), ("collections", "OrderedDict"), ("builtins", "tuple"),
         ("_codecs", "encode"), ("builtins", "bytes"), ("torch._utils", "_rebuild_tensor_v2"),
         ("torch._utils", "_rebuild_parameter"), ("torch", "FloatStorage"), ("torch", "HalfStorage"),
         ("torch", "BFloat16Storage"), ("torch", "BoolStorage")]


def genuine_files(folder: str) -> dict:
    """{name: bytes} of genuine files of every kind the readers take."""
    import numpy as np
    import paddle

    files = {name: open(os.path.join(TORCH_FORMATS, name), "rb").read() for name in ("zip.pth", "legacy.pth", "wrapped.pth")}
    state = {"w": paddle.to_tensor(np.arange(6, dtype=np.float32).reshape(2, 3)), "b": paddle.ones([3], dtype="int64"),
             "h": paddle.to_tensor(np.array([1.5, -2], np.float16)), "flag": paddle.to_tensor(np.array([True, False]))}
    for protocol in (2, 4):
        path = os.path.join(folder, f"genuine{protocol}.pdparams")
        paddle.save(state, path, protocol=protocol)
        files[os.path.basename(path)] = open(path, "rb").read()
    path = os.path.join(folder, "genuine.pdstates")
    paddle.save({"epoch": 3, "best": np.float32(0.5), "step": np.int64(7), "nested": {"a": [1, 2.5, "x", None]}}, path)
    files["genuine.pdstates"] = open(path, "rb").read()
    files["fortran.pdparams"] = pickle.dumps({"w": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
                                              "be": np.arange(3, dtype=">i4"), "StructuredToParameterName@@": {}}, protocol=2)
    return files


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        kind = rng.randrange(6)
        if not data:
            break
        i = rng.randrange(len(data))
        if kind == 0:
            data[i] = rng.randrange(256)
        elif kind == 1:
            data[i:i + 1] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif kind == 2:
            del data[i:i + rng.randrange(1, 64)]
        elif kind == 3:
            j = rng.randrange(len(data))
            data[i:i] = data[j:j + rng.randrange(1, 256)]
        elif kind == 4:
            data[i:i + 8] = rng.choice((b"\xff" * 8, b"\x00" * 8, (1 << 40).to_bytes(8, "little"), b"\x7f\xff\xff\xff"))
        else:
            data = data[:i]
    return bytes(data)


def mutate_zip_pickle(data: bytes, rng: random.Random) -> bytes:
    """A torch zip whose data.pkl is mutated and re-zipped (so that the CRC still matches and the reader sees
    the mutated pickle), sometimes with a storage member cut short or dropped."""
    import io
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in source.namelist():
            member = source.read(name)
            if name.endswith("data.pkl"):
                member = mutate(member, rng)
            elif "/data/" in name and rng.random() < 0.1:
                member = member[:rng.randrange(len(member) + 1)]
                if rng.random() < 0.3:
                    continue
            archive.writestr(name, member)
    return out.getvalue()


def random_stream(rng: random.Random) -> bytes:
    """A random opcode stream over the allowed globals, with plausible arguments."""
    out = [b"\x80\x02"]
    for _ in range(rng.randrange(1, 60)):
        choice = rng.random()
        if choice < 0.2:
            module, name = rng.choice(NAMES)
            out.append(b"c" + f"{module}\n{name}\n".encode())
        elif choice < 0.35:
            value = rng.choice(["f4", "O8", "V8", "<", "latin1", "storage", "0", "cpu", "b", "punycode", "x" * 50])
            out.append(b"X" + len(value).to_bytes(4, "little") + value.encode())
        elif choice < 0.5:
            out.append(b"J" + rng.choice((0, 1, 3, -1, 1 << 30, 4)).to_bytes(4, "little", signed=True))
        elif choice < 0.6:
            payload = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 4, 8, 16))))
            out.append(b"C" + bytes([len(payload)]) + payload)
        elif choice < 0.7:
            out.append(rng.choice((b"h", b"q")) + bytes([rng.randrange(8)]))
        else:
            out.append(rng.choice(OPCODES))
    out.append(b".")
    return b"".join(out)


def run_child(seed: int, count: int, folder: str, slow: float) -> None:
    """Runs in the child: `count` cases from `seed`, one JSON line per finding."""
    import numpy as np

    from ppcls_ext.config import ConfigError
    from ppcls_ext.safe_load import load_paddle_file
    from ppcls_ext.safe_pickle import PickleDataError
    from ppcls_ext.weights import IncompatibleWeightsError, read_weights_file
    from ppcls_ext.convert.torch_file import read_foreign_state_dict

    expected_errors = (IncompatibleWeightsError, PickleDataError, ConfigError)
    genuine = genuine_files(folder)
    reference = {name: read_foreign_state_dict(os.path.join(TORCH_FORMATS, name))[1] for name in ("zip.pth", "legacy.pth")}
    names = sorted(genuine)
    for case in range(count):
        rng = random.Random(seed * 1_000_003 + case)
        choice = rng.random()
        if choice < 0.5:
            source = rng.choice(names)
            data = mutate(genuine[source], rng)
        elif choice < 0.75:
            source = rng.choice(("zip.pth", "wrapped.pth"))
            data = mutate_zip_pickle(genuine[source], rng)
        else:
            source, data = "stream", random_stream(rng)
        path = os.path.join(folder, f"case{'.pth' if source.endswith('.pth') else '.pdparams'}")
        with open(path, "wb") as f:
            f.write(data)
        for reader in (read_weights_file, load_paddle_file):
            start = time.perf_counter()
            try:
                reader(path)
            except expected_errors as error:
                if "\n" in str(error):
                    print(json.dumps({"seed": seed, "case": case, "source": source, "reader": reader.__name__,
                                      "finding": "multi-line message", "message": str(error)[:300]}), flush=True)
            except Exception as error:  # a finding: anything else escaping the reader
                print(json.dumps({"seed": seed, "case": case, "source": source, "reader": reader.__name__,
                                  "finding": type(error).__name__, "message": str(error)[:300]}), flush=True)
            elapsed = time.perf_counter() - start
            if elapsed > slow:
                print(json.dumps({"seed": seed, "case": case, "source": source, "reader": reader.__name__,
                                  "finding": f"slow {elapsed:.1f}s", "size": len(data)}), flush=True)
    for name, arrays in reference.items():
        again = read_foreign_state_dict(os.path.join(TORCH_FORMATS, name))[1]
        if sorted(again) != sorted(arrays) or any(not np.array_equal(again[k], arrays[k]) for k in arrays):
            print(json.dumps({"seed": seed, "finding": f"{name} reads differently after the batch"}), flush=True)


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument("--slow", type=float, default=2.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as folder:
            run_child(args.seed, args.batch, folder, args.slow)
        return
    deadline, seed, cases, findings = time.time() + args.seconds, args.seed, 0, 0
    while time.time() < deadline:
        result = subprocess.run([sys.executable, __file__, "--child", "--seed", str(seed), "--batch", str(args.batch),
                                 "--slow", str(args.slow)], capture_output=True, text=True, preexec_fn=limit_memory)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        findings += len(lines)
        for line in lines:
            print(line, flush=True)
        if result.returncode != 0:
            findings += 1
            print(json.dumps({"seed": seed, "finding": f"child exited {result.returncode}",
                              "stderr": result.stderr[-1500:]}), flush=True)
        cases += args.batch
        seed += 1
    print(f"{cases} cases (seeds {args.seed}..{seed - 1}), {findings} findings", flush=True)


if __name__ == "__main__":
    main()
