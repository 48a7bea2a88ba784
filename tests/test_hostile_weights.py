"""Weights files crafted by an attacker (tests/hostile_files.py, assembled opcode by opcode within the globals
a weights file may name) are refused by every entry point in one line naming the file and the reason, in
bounded time and memory (the files run in a child process under a 4 GiB address-space limit), and change
nothing: a genuine file read after them gives the same arrays. Genuine layouts (Fortran order, the other
byte order, odd bool bytes) still load as the standard unpickler loads them."""
import json
import os
import pickle
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

import hostile_files
import ppcls_ext
from conftest import REPO, run_main, quick_argv
from ppcls_ext import cli
from ppcls_ext.config import ConfigError
from ppcls_ext.cli import convert_weights as convert_cli
from ppcls_ext.convert.torch_file import TORCH_GLOBALS, read_foreign_state_dict
from ppcls_ext.engine.checkpoint import recover_checkpoints
from ppcls_ext.safe_load import PADDLE_GLOBALS, load_paddle_file
from ppcls_ext.safe_pickle import Budget, Limits, UnsafePickleError, read_pickle
from ppcls_ext.weights import IncompatibleWeightsError

TESTS = os.path.dirname(os.path.abspath(__file__))
ADDRESS_SPACE = 4 << 30  # what a hostile file may make the reading process map, Paddle (~0.9 GiB) included


def limited_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_limited(args, timeout):
    """(completed process, seconds) of `args` under the address-space limit, from the repository root."""
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, preexec_fn=limited_address_space,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS])})
    return result, time.perf_counter() - start


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """{name: (path, key words)} of every crafted file."""
    return hostile_files.write_all(str(tmp_path_factory.mktemp("crafted")))


@pytest.mark.slow
def test_every_crafted_file_is_refused_in_one_line_in_bounded_time_and_memory(tmp_path):
    code = f"import json, hostile_files; print(json.dumps(hostile_files.refusals({str(tmp_path)!r})))"
    result, seconds = run_limited([sys.executable, "-c", code], timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {**hostile_files.paddle_cases(), **hostile_files.torch_cases(), **hostile_files.legacy_cases()}
    assert sorted(report["cases"]) == sorted(expected)
    for name, case in report["cases"].items():
        message = case["message"]
        assert case["error"] == "IncompatibleWeightsError", (name, case)
        assert "\n" not in message and name in message, (name, message)
        assert all(word in message for word in expected[name][1]), (name, message, expected[name][1])
        assert case["seconds"] < 10, (name, case["seconds"])
    assert report["genuine_unchanged"], "a genuine .pth reads differently after the crafted files"
    assert seconds < 60 and report["peak_rss_mib"] < 2048, (seconds, report["peak_rss_mib"])


def tool(mode, digits, tmp_path, capsys, *overrides):
    return run_main(lambda argv: cli.main(mode, argv), quick_argv(digits, tmp_path, *overrides), capsys)


@pytest.mark.parametrize("mode,name,arch", [
    ("infer", "void_object_scalar.pdparams", "MicroNet_M0"), ("eval", "deep_nesting.pdparams", "MicroNet_M0"),
    ("export", "shared_bytes.pdparams", "MicroNet_M0"), ("train", "zip_bomb.pth", "EfficientNetB0"),
    ("infer", "storage_poisoning.pth", "EfficientNetB0"), ("eval", "legacy_count_1tib.pth", "EfficientNetB0")])
def test_every_tool_refuses_a_crafted_pretrained_model_in_one_line(digits, tmp_path, capsys, crafted, mode, name, arch):
    path, words = crafted[name]
    status, out, err = tool(mode, digits, tmp_path, capsys, f"Arch.name={arch}", f"Global.pretrained_model={path}")
    assert status == 2 and err.startswith(f"error: {path}") and err.count("\n") == 1, err
    assert all(word in err for word in words), err
    assert not os.path.exists(tmp_path / "inference")


def test_resuming_from_a_crafted_checkpoint_is_refused_in_one_line(digits, tmp_path, capsys, crafted):
    prefix = tmp_path / "ckpt" / "latest"
    prefix.parent.mkdir()
    with open(crafted["colliding_int_keys.pdparams"][0], "rb") as f:
        (prefix.parent / "latest.pdstates").write_bytes(f.read())
    status, _, err = tool("train", digits, tmp_path, capsys, f"Global.checkpoints={prefix}")
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: Global.checkpoints: {prefix}.pdstates is not readable: ") and "dict key of type int" in err


def test_convert_weights_refuses_a_crafted_file_in_one_line(tmp_path, capsys, crafted):
    path, words = crafted["views_of_one_storage.pth"]
    status = convert_cli.main([path, "-m", "EfficientNetB0", "-o", str(tmp_path / "out.pdparams")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(f"error: {path}: refused to load") and err.count("\n") == 1, err
    assert all(word in err for word in words) and not (tmp_path / "out.pdparams").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tool_argv,name", [
    (["tools/infer.py", "-c", "configs/quick_start/micronet_m0_digits.yaml", "-o", "Global.pretrained_model={path}"],
     "void_object_scalar.pdparams"),
    (["tools/convert_weights.py", "{path}", "-m", "EfficientNetB0", "-o", "{out}"], "zip_bomb.pth")])
def test_the_command_lines_refuse_in_one_line_under_a_memory_limit(tmp_path, crafted, tool_argv, name):
    path, words = crafted[name]
    argv = [arg.format(path=path, out=tmp_path / "out.pdparams") for arg in tool_argv]
    result, seconds = run_limited([sys.executable] + argv, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: refused to load") and all(word in last for word in words), last
    assert seconds < 60


def test_limits_on_opcodes_and_depth_are_refusals():
    source = "limits.pdparams"
    for data, limits, words in ((b"\x80\x02" + b"N" * 200 + b".", Limits(opcodes=150), "more than 150 pickle opcodes"),
                                (b"\x80\x02" + b"]" * 12 + b"a" * 11 + b".", Limits(depth=10), "nested deeper than 10")):
        with pytest.raises(UnsafePickleError, match=words):
            read_pickle(data, source, PADDLE_GLOBALS, Budget(1 << 20, source), limits=limits)


def test_genuine_layouts_load_as_the_standard_unpickler_loads_them(tmp_path):
    """Fortran order, the other byte order, numpy scalars, empty arrays, OrderedDicts, protocols 2 and 4: the
    same values as `pickle.load` of the same (trusted) bytes; arrays are writable, C-contiguous, native."""
    import collections

    state = {"fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
             "big_endian": np.arange(5, dtype=">i8"), "half": np.array([1.5, -2.0], np.float16),
             "complex": np.array([1 + 2j], np.complex64), "empty": np.zeros((0, 3), np.float32),
             "scalar": np.float64(0.25), "count": np.int64(7), "flags": np.array([True, False]),
             "ordered": collections.OrderedDict(a=1, b=[2.5, "x", None, b"raw"]), "StructuredToParameterName@@": {}}
    for protocol in (2, 4):
        path = tmp_path / f"p{protocol}.pdparams"
        path.write_bytes(pickle.dumps(state, protocol=protocol))
        ours, reference = load_paddle_file(path, return_numpy=True), pickle.loads(path.read_bytes())
        reference.pop("StructuredToParameterName@@")
        assert list(ours) == list(reference)
        for key, value in reference.items():
            if isinstance(value, np.ndarray):
                got = ours[key]
                assert got.dtype == value.dtype.newbyteorder("=") and got.shape == value.shape, key
                np.testing.assert_array_equal(got, value)
                assert got.flags.c_contiguous and got.flags.writeable and got.dtype.isnative, key
            else:
                assert ours[key] == value and type(ours[key]) is type(value), key


def test_a_bool_byte_other_than_0_or_1_is_read_as_true(tmp_path):
    data = hostile_files.state_dict([("flags", hostile_files.array((3,), hostile_files.dtype("b1", "|"),
                                                                   hostile_files.raw(b"\x00\x02\xff")))])
    (tmp_path / "b.pdparams").write_bytes(data)
    flags = load_paddle_file(tmp_path / "b.pdparams", return_numpy=True)["flags"]
    assert flags.tolist() == [False, True, True] and flags.view(np.uint8).tolist() == [0, 1, 1]


def test_a_refused_file_changes_no_shared_state(crafted):
    """The storage-type stand-ins are immutable tokens, and a genuine file read after every refused one in
    this process gives the arrays torch saved (tests/fixtures/torch_formats/expected.npz)."""
    tokens = {key: (value, getattr(value, "name", None)) for key, value in TORCH_GLOBALS.items()}
    for name, (path, _) in crafted.items():
        if name.endswith(".pth"):
            with pytest.raises(IncompatibleWeightsError):
                ppcls_ext.create_model("EfficientNetB0", pretrained=path)
    assert {key: (value, getattr(value, "name", None)) for key, value in TORCH_GLOBALS.items()} == tokens
    with pytest.raises(AttributeError):
        TORCH_GLOBALS[("torch", "FloatStorage")].name = "IntStorage"
    expected = np.load(os.path.join(hostile_files.TORCH_FORMATS, "expected.npz"))
    for file in ("zip.pth", "legacy.pth"):
        _, state = read_foreign_state_dict(os.path.join(hostile_files.TORCH_FORMATS, file))
        for key in expected.files:
            assert state[key].dtype == expected[key].dtype
            np.testing.assert_array_equal(state[key], expected[key])


@pytest.mark.parametrize("entry", [".latest.committed", ".latest.saving"])
def test_a_symlinked_save_folder_is_refused_and_nothing_is_moved(tmp_path, entry):
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    for member in ("pdparams", "pdopt", "pdstates"):
        (victim / f"latest.{member}").write_bytes(member.encode())
    output = tmp_path / "output"
    output.mkdir()
    os.symlink(victim, output / entry)
    with pytest.raises(ConfigError, match=rf"{entry} is a symbolic link \(to {victim}\).*nothing was moved"):
        recover_checkpoints(str(output))
    assert sorted(p.name for p in victim.iterdir()) == ["latest.pdopt", "latest.pdparams", "latest.pdstates"]
    assert sorted(p.name for p in output.iterdir()) == [entry]


def test_weights_of_another_float_width_are_cast_and_other_types_refused(tmp_path):
    """A state dict saved in float16 or float64 gives the float32 model's logits (to float16 rounding);
    integers, bools or complex numbers where weights are float32 are one line naming the keys (Paddle's own
    set_state_dict would stop with an AssertionError traceback)."""
    import paddle

    model = ppcls_ext.create_model("MicroNet_M0", class_num=10)
    model.eval()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    reference = model(x).numpy()
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    for dtype, tolerance in (("float64", 1e-6), ("float16", 5e-2), ("int64", None), ("bool", None), ("complex64", None)):
        path = tmp_path / f"{dtype}.pdparams"
        path.write_bytes(pickle.dumps({**{k: v.astype(dtype) for k, v in arrays.items()},
                                       "StructuredToParameterName@@": {}}, protocol=4))
        if tolerance is None:
            with pytest.raises(IncompatibleWeightsError, match=rf"{dtype}\.pdparams does not fit MicroNet: wrong type \d+: "
                                                               rf"stem\.conv\.conv_kx1\.conv\.weight {dtype} vs float32"):
                ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=str(path))
            continue
        loaded = ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=str(path))
        loaded.eval()
        assert all(str(v.dtype) == "paddle.float32" for v in loaded.state_dict().values())
        np.testing.assert_allclose(loaded(x).numpy(), reference, atol=tolerance, rtol=tolerance)
