"""Weights and checkpoint files are read by a restricted unpickler: every file kind we write loads exactly
as `paddle.load` loads it, and a file that asks to run code is refused before anything runs."""
import os
import pickle
import subprocess
import sys

import numpy as np
import paddle
import pytest

import ppcls_ext
from conftest import REPO
from ppcls_ext.engine.checkpoint import load_checkpoint, portable_optimizer_state
from ppcls_ext.engine.ema import ModelEMA
from ppcls_ext.engine.optim import build_lr_schedule, build_optimizer
from ppcls_ext.safe_load import load_paddle_file
from ppcls_ext.safe_pickle import UnsafePickleError
from ppcls_ext.weights import IncompatibleWeightsError


def assert_same(expected, actual, where="root"):
    """paddle.load's result and ours: same types, keys, tensor names, dtypes and values."""
    assert type(actual) is type(expected), (where, type(expected), type(actual))
    if isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{index}]")
    elif isinstance(expected, paddle.Tensor):
        assert (actual.name, actual.dtype, actual.shape) == (expected.name, expected.dtype, expected.shape), where
        np.testing.assert_array_equal(actual.numpy(), expected.numpy())
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(actual, expected)
    else:
        assert actual == expected, where


@pytest.fixture(scope="module")
def written_files(tmp_path_factory):
    """One file of every kind we write, made the way the engine makes them: weights (protocol 4 and 2),
    optimizer states with their LR schedule (Momentum, RMSProp, AdamW), EMA weights, training states with
    numpy scalars, and a nested object holding tensors."""
    folder = tmp_path_factory.mktemp("written")
    model = ppcls_ext.create_model("MicroNet_M0", class_num=10)
    files = {}
    for name, optimizer_config in (("momentum", {"name": "Momentum", "momentum": 0.9}),
                                   ("rmsprop", {"name": "RMSProp", "momentum": 0.9, "rho": 0.9, "epsilon": 0.001}),
                                   ("adamw", {"name": "AdamW"})):
        schedule = build_lr_schedule({"name": "Cosine", "learning_rate": 0.1, "warmup_epoch": 1}, 2, 5)
        optimizer = build_optimizer(optimizer_config, model, schedule)
        model.train()
        model(paddle.randn([2, 3, 32, 32])).mean().backward()
        optimizer.step(), optimizer.clear_grad(), schedule.step()
        files[f"{name}.pdopt"] = portable_optimizer_state(optimizer.state_dict(), model)
    ema = ModelEMA(model)
    ema.update(model)
    files["model.pdparams"] = model.state_dict()
    files["model.pdema"] = ema.state_dict()
    files["model.pdstates"] = {"epoch": 3, "best_metric": np.float32(0.5), "global_step": np.int64(10), "step": 3}
    files["nested.pdobj"] = {"tensors": [paddle.ones([2]), {"inner": paddle.zeros([1])}], "count": 3}
    paths = {}
    for name, obj in files.items():
        paths[name] = str(folder / name)
        paddle.save(obj, paths[name])
    paths["model_protocol2.pdparams"] = str(folder / "model_protocol2.pdparams")
    paddle.save(model.state_dict(), paths["model_protocol2.pdparams"], protocol=2)
    return paths


def test_every_file_kind_we_write_loads_as_paddle_load_loads_it(written_files):
    for name, path in written_files.items():
        assert_same(paddle.load(path), load_paddle_file(path), name)
        assert_same(paddle.load(path, return_numpy=True), load_paddle_file(path, return_numpy=True), name)
    optimizer = load_paddle_file(written_files["rmsprop.pdopt"])
    assert optimizer["LR_Scheduler"] == paddle.load(written_files["rmsprop.pdopt"])["LR_Scheduler"]


def test_a_split_big_array_is_joined_again(tmp_path):
    """Protocol 2-3 saves split arrays over 1 GiB into slices; a hand-made split file stands in for one."""
    whole = np.arange(12, dtype=np.float32).reshape(3, 4)
    split = {"w@@.0": whole.ravel()[:8], "w@@.1": whole.ravel()[8:], "b": np.ones(2, np.float32),
             "UnpackBigParamInfor@@": {"w": {"OriginShape": (3, 4), "slices": ["w@@.0", "w@@.1"]}},
             "StructuredToParameterName@@": {"w": "linear_0.w_0", "b": "linear_0.b_0"}}
    with open(tmp_path / "split.pdparams", "wb") as f:
        pickle.dump(split, f, protocol=2)
    loaded = load_paddle_file(tmp_path / "split.pdparams")
    assert list(loaded) == ["b", "w"] and loaded["w"].name == "linear_0.w_0"
    np.testing.assert_array_equal(loaded["w"].numpy(), whole)
    assert_same(paddle.load(str(tmp_path / "split.pdparams")), loaded)


class _RunsCommand:
    """Pickles to `os.system(command)`: what a malicious weights file does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def malicious_file(path, marker, protocol=4):
    """A state dict whose unpickling would create `marker` (one tensor, so that it looks like weights)."""
    with open(path, "wb") as f:
        pickle.dump({"stem.weight": np.zeros(2, np.float32), "x": _RunsCommand(f"touch {marker}")}, f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_file_that_runs_code_is_refused_before_it_runs(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = malicious_file(tmp_path / "evil.pdparams", marker, protocol)
    with pytest.raises(UnsafePickleError) as info:
        load_paddle_file(path)
    assert str(info.value).startswith(f"{path}: refused to load: it asks for the Python global 'posix.system'")
    with pytest.raises(IncompatibleWeightsError, match=r"evil\.pdparams: refused to load: .*'posix\.system'.*nothing was run"):
        ppcls_ext.create_model("MicroNet_M0", pretrained=str(path))
    assert not marker.exists()
    # the file really is harmful: plain pickle (paddle.load) runs its command
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_other_globals_and_persistent_ids_are_refused(tmp_path):
    for payload, refused in ((eval, "builtins.eval"), (getattr, "builtins.getattr"), (subprocess.Popen, "subprocess.Popen")):
        with open(tmp_path / "f.pdparams", "wb") as f:
            pickle.dump({"w": payload}, f)
        with pytest.raises(UnsafePickleError, match=rf"global '{refused}'"):
            load_paddle_file(tmp_path / "f.pdparams")

    class WithPersistentId(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage" if isinstance(obj, np.ndarray) else None

    with open(tmp_path / "p.pdparams", "wb") as f:
        WithPersistentId(f).dump({"w": np.zeros(2)})
    with pytest.raises(UnsafePickleError, match="persistent object"):
        load_paddle_file(tmp_path / "p.pdparams")


def test_resuming_from_a_malicious_checkpoint_is_a_config_error_naming_the_file(tmp_path, written_files):
    marker = tmp_path / "ran"
    prefix = str(tmp_path / "latest")
    for suffix, source in ((".pdparams", "model.pdparams"), (".pdopt", "momentum.pdopt")):
        with open(written_files[source], "rb") as f, open(prefix + suffix, "wb") as out:
            out.write(f.read())
    malicious_file(prefix + ".pdstates", marker)
    with pytest.raises(ppcls_ext.config.ConfigError, match=r"latest\.pdstates is not readable: .*refused to load.*posix\.system"):
        load_checkpoint(prefix)
    assert not marker.exists()


def test_eval_tool_stops_with_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = malicious_file(tmp_path / "evil.pdparams", marker)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "eval.py"), "-c", os.path.join(REPO, "configs", "quick_start", "micronet_m0_digits.yaml"),
         "-o", f"Global.pretrained_model={path}", "-o", f"Global.output_dir={tmp_path}/out", "-o", "DataLoader.Eval.dataset.image_root=/nonexistent"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not marker.exists()
    assert f"error: {path}: refused to load: it asks for the Python global 'posix.system'" in result.stderr
