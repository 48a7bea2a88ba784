"""AMP O1/O2 on a CPU: the engine is made to believe it runs on a GPU (so that AMP stays on) and
`paddle.amp.decorate` applies the steps it would apply on a GPU, which do not depend on the device: float16
parameters (BN kept float32) and the `save_dtype` state-dict hooks. The float16 forward itself cannot run
on a CPU, so evaluation is checked to enter `auto_cast` at the right level before the model runs."""
import contextlib
import importlib

import numpy as np
import paddle
import pytest

from conftest import QUICK_START, quick_config
from ppcls_ext.config import ConfigError
from ppcls_ext.engine import Engine
from ppcls_ext.engine import wiring
from test_nonfinite import run_cli

amp_internals = importlib.import_module("paddle.amp.auto_cast")  # `paddle.amp.auto_cast` is also a function
# on a CPU, GradScaler and auto_cast warn that they have no effect: expected here
pytestmark = pytest.mark.filterwarnings("ignore:.*can only be enabled on CUDAPlace:UserWarning")


def decorate_on_cpu(models, optimizers=None, level="O1", dtype="float16", master_weight=None, save_dtype=None,
                    master_grad=False, excluded_layers=None):
    """`paddle.amp.decorate`'s signature and, for one model, the steps of `amp_decorate` in
    python/paddle/amp/auto_cast.py (Paddle 3.3.1) after its place check, which returns early on a CPU:
    `amp_initialize(models, dtype, excluded_layers)` (float16 parameters, BN kept float32);
    `_set_multi_precision(opt, master_weight is not False)` for each optimizer; and for `save_dtype`,
    `layer.register_state_dict_hook(StateDictHook(save_dtype))` on every sublayer. O1 returns the inputs."""
    if level == "O1":
        return models if optimizers is None else (models, optimizers)
    amp_internals.amp_initialize(models=[models], dtype=dtype, excluded_layers=excluded_layers)
    if optimizers is not None:
        amp_internals._set_multi_precision(optimizers, master_weight is not False)
    if save_dtype is not None:
        for layer in models.sublayers(include_self=True):
            layer.register_state_dict_hook(amp_internals.StateDictHook(save_dtype))
    return models if optimizers is None else (models, optimizers)


@pytest.fixture
def gpu_amp(monkeypatch):
    """Global.device resolves to "gpu" (Paddle keeps computing on the CPU) and decorate works as on a GPU."""
    monkeypatch.setattr(wiring, "set_device", lambda requested: "gpu")
    monkeypatch.setattr(paddle.amp, "decorate", decorate_on_cpu)
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda device=None: (8, 0))  # float16 capable


class AutoCastRecorder:
    """Wraps `paddle.amp.auto_cast` (same signature; the real context is still entered, a no-op on a
    CPU) and, from a forward pre-hook, reports the auto_cast contexts open when the model is called."""

    class ForwardReached(Exception):
        pass

    def __init__(self, monkeypatch, model):
        self.open = []
        real = paddle.amp.auto_cast

        @contextlib.contextmanager
        def recording(enable=True, custom_white_list=None, custom_black_list=None, level="O1", dtype="float16",
                      use_promote=True):
            self.open.append({"enable": enable, "level": level})
            try:
                with real(enable, custom_white_list, custom_black_list, level, dtype, use_promote):
                    yield
            finally:
                self.open.pop()

        def stop(layer, inputs):
            raise self.ForwardReached(list(self.open))

        monkeypatch.setattr(paddle.amp, "auto_cast", recording)
        model.register_forward_pre_hook(stop)

    def contexts_at_forward(self, run):
        with pytest.raises(self.ForwardReached) as reached:
            run()
        return reached.value.args[0]


def conv_weight(model):
    return model.state_dict(use_hook=False)["stem.conv.conv_kx1.conv.weight"]


def test_o2_training_evaluates_under_auto_cast(gpu_amp, digits, tmp_path, monkeypatch):
    """Today the first evaluation of an O2 run calls the float16 model outside auto_cast (on a GPU:
    `float32 does not match float16`); PaddleClas forces `use_fp16_test` under O2."""
    engine = Engine(quick_config(digits, tmp_path, "AMP.level=O2"), "train")
    assert engine.amp_level == "O2" and conv_weight(engine.model).dtype == paddle.float16
    recorder = AutoCastRecorder(monkeypatch, engine.model)
    assert recorder.contexts_at_forward(lambda: engine.evaluate(engine.net, 1)) == [{"enable": True, "level": "O2"}]
    assert recorder.contexts_at_forward(lambda: engine.train()) == [{"enable": True, "level": "O2"}]


def test_eval_tool_sets_up_amp(gpu_amp, digits, tmp_path, monkeypatch):
    """`AMP.use_fp16_test: True` in tools/eval.py: decorated as PaddleClas does at O2, evaluated under
    auto_cast; at O1 the weights stay float32; without use_fp16_test no auto_cast."""
    for level, fp16_test, weights, contexts in (("O2", True, paddle.float16, [{"enable": True, "level": "O2"}]),
                                                ("O1", True, paddle.float32, [{"enable": True, "level": "O1"}]),
                                                ("O2", False, paddle.float32, [])):
        engine = Engine(quick_config(digits, tmp_path, f"AMP.level={level}", f"AMP.use_fp16_test={fp16_test}"), "eval")
        assert conv_weight(engine.model).dtype == weights, (level, fp16_test)
        recorder = AutoCastRecorder(monkeypatch, engine.model)
        assert recorder.contexts_at_forward(engine.eval) == contexts, (level, fp16_test)


def test_eval_tool_with_fp16_test_runs_on_a_cpu(digits, capsys):
    """Today: `AttributeError: 'Engine' object has no attribute 'amp_level'` (a traceback)."""
    status, out, _ = run_cli("eval", ["-c", QUICK_START, "-o", "AMP.use_fp16_test=True", "-o", "AMP.level=O2",
                                      "-o", f"DataLoader.Eval.dataset.image_root={digits}",
                                      "-o", f"DataLoader.Eval.dataset.cls_label_path={digits}/val_small.txt"], capsys)
    assert status == 0 and "AMP (mixed precision) needs a GPU; evaluating in float32 on CPU" in out and "images: 37" in out


def test_o2_bn_statistics_average_changes_the_real_tensors(gpu_amp, digits, tmp_path, monkeypatch):
    """Under decorate's hooks `state_dict()` hands out float32 copies: averaging them, as today, leaves the
    statistics of the model and the EMA untouched. Only these entries are averaged (EMA weights are the
    same on every rank). A stand-in for `paddle.distributed.all_reduce` (its signature and
    in-place SUM, python/paddle/distributed/communication/all_reduce.py) adds a second rank's values."""
    engine = Engine(quick_config(digits, tmp_path, "AMP.level=O2", "EMA.decay=0.99"), "train")
    models = {"model": engine.model, "ema": engine.ema.module}
    statistics = {(name, key): tensor for name, model in models.items()
                  for key, tensor in model.state_dict(use_hook=False).items() if key.endswith(("_mean", "_variance"))}
    assert all(t.dtype == paddle.float32 for t in statistics.values()) and len(statistics) > 50
    rng = np.random.default_rng(0)
    other = {t.name: rng.uniform(0.5, 2.0, t.shape).astype("float32") for t in statistics.values()}
    expected = {k: (t.numpy() + other[t.name]) / 2 for k, t in statistics.items()}

    reduced = []

    def all_reduce(tensor, op=paddle.distributed.ReduceOp.SUM, group=None, sync_op=True):
        reduced.append(tensor.name)  # a tensor the second rank does not hold differently is equal there
        tensor.set_value(tensor + (paddle.to_tensor(other[tensor.name]) if tensor.name in other else tensor))

    monkeypatch.setattr(paddle.distributed, "all_reduce", all_reduce)
    engine.trainer.world_size = 2
    engine.trainer.average_running_stats()
    for (name, key), tensor in statistics.items():
        now = models[name].state_dict(use_hook=False)[key]
        np.testing.assert_allclose(now.numpy(), expected[(name, key)], rtol=1e-6, err_msg=f"{name} {key}")
    assert sorted(reduced) == sorted(other)  # the statistics only, not the EMA's weights


def test_o2_ema_reads_the_real_tensors(gpu_amp, digits, tmp_path, monkeypatch):
    """Today every EMA update runs the state-dict hooks (one per sublayer, each casting every tensor
    collected so far); the average itself must stay float32 and follow the float16 weights."""
    engine = Engine(quick_config(digits, tmp_path, "AMP.level=O2", "EMA.decay=0.99"), "train")
    calls = []
    hook_call = amp_internals.StateDictHook.__call__
    monkeypatch.setattr(amp_internals.StateDictHook, "__call__", lambda self, state: calls.append(1) or hook_call(self, state))
    assert len(engine.model.state_dict()) and calls  # the hooks are in place...
    calls.clear()
    key = "stem.conv.conv_kx1.conv.weight"
    before = engine.ema.state_dict()[key].numpy()
    conv_weight(engine.model).set_value(paddle.full_like(conv_weight(engine.model), 0.5))
    engine.ema.update(engine.model)
    assert calls == []  # ...and the EMA update does not run them
    average = engine.ema.state_dict()[key]
    assert average.dtype == paddle.float32
    np.testing.assert_allclose(average.numpy(), 0.1 * before + 0.9 * 0.5, rtol=1e-6)  # first update: decay 1/10


def test_nonfinite_loss_patience(gpu_amp, digits, tmp_path):
    """1 without AMP; 10 with AMP, whose loss scaler skips overflowing steps; configurable."""
    assert Engine(quick_config(digits, tmp_path, "AMP.level=O1"), "train").trainer.loss_watch.patience == 10
    assert Engine(quick_config(digits, tmp_path), "train").trainer.loss_watch.patience == 1
    assert Engine(quick_config(digits, tmp_path, "Global.nonfinite_loss_patience=3"), "train").trainer.loss_watch.patience == 3
    with pytest.raises(ConfigError, match=r"Global.nonfinite_loss_patience must be an integer >= 1 or null, got 0"):
        Engine(quick_config(digits, tmp_path, "Global.nonfinite_loss_patience=0"), "train")
