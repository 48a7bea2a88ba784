"""AMP and checkpoints, on the CPU with Paddle's own AMP code (tests/amp_cpu.py): resuming into an
O2-decorated model, the loss scaler saved and restored, and overflow-skipped steps that advance nothing."""
import numpy as np
import paddle
import pytest

from amp_cpu import decorate_o2, enabled_grad_scaler
from conftest import quick_config
from ppcls_ext.engine import Engine
from ppcls_ext.engine.amp import LossScaled
from ppcls_ext.engine.checkpoint import portable_optimizer_state
from ppcls_ext.engine.optim import update_skipped

NO_EVAL = ("Global.eval_during_train=False",)


def real_tensors(model, trainable_only=False):
    """Parameters and buffers as the model holds them (not `state_dict()`, which decorate's hooks cast)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {name: t.numpy() for name, t in tensors if not (trainable_only and t.stop_gradient)}


def test_update_skipped_reports_what_the_scaler_did(monkeypatch):
    """The private GradScaler field `update_skipped` reads (checked with Paddle 3.3): True exactly when the
    scaled gradients were not finite and Paddle left the weights alone."""
    layer = paddle.nn.Linear(2, 1)
    optimizer = paddle.optimizer.SGD(0.1, parameters=layer.parameters())
    scaler = enabled_grad_scaler(monkeypatch, init_loss_scaling=1024.0)
    for inputs, skipped in (([1.0, 1.0], False), ([1e38, 1.0], True), ([2.0, 1.0], False)):
        before = layer.weight.numpy().copy()
        scaler.scale(layer(paddle.to_tensor([inputs])).sum()).backward()
        scaler.step(optimizer)
        assert update_skipped(scaler) is skipped
        assert np.array_equal(layer.weight.numpy(), before) is skipped
        scaler.update()
        optimizer.clear_grad()


def test_overflow_skipped_steps_advance_neither_schedule_nor_step_count_nor_ema(digits, tmp_path, monkeypatch):
    """One epoch of 8 steps whose first scale overflows (the loss stays finite, its scaled gradients do
    not): 7 applied steps; the scale, dropped once, is in the checkpoint and a resumed run gets it back."""
    config = quick_config(digits, tmp_path, "Global.epochs=1", "EMA.decay=0.9", *NO_EVAL)
    engine = Engine(config, "train")
    engine.amp.scaling = LossScaled(enabled_grad_scaler(monkeypatch, init_loss_scaling=3e38, decr_ratio=1e-36,
                                                           incr_every_n_steps=1000))
    engine.train()
    assert engine.iters_per_epoch == 8
    assert engine.global_step == engine.schedule.last_epoch == engine.ema.updates == 7
    assert engine.amp.scaling.scaler.state_dict()["scale"][0] == pytest.approx(300.0)
    resumed = Engine(quick_config(digits, tmp_path, "Global.epochs=2", "EMA.decay=0.9", *NO_EVAL), "train")
    resumed.amp.scaling = LossScaled(enabled_grad_scaler(monkeypatch, init_loss_scaling=65536.0, incr_every_n_steps=77))
    resumed.checkpoints.resume(str(tmp_path / "output" / "MicroNet_M0" / "latest"))
    state = resumed.amp.scaling.scaler.state_dict()
    assert state["scale"][0] == pytest.approx(300.0) and state["incr_count"] == 7 and state["decr_count"] == 0
    assert state["incr_every_n_steps"] == 77  # as configured now, not as saved
    assert resumed.global_step == resumed.schedule.last_epoch == resumed.ema.updates == 7


def test_a_skipped_step_leaves_weights_schedule_and_ema_unchanged(digits, tmp_path, monkeypatch):
    engine = Engine(quick_config(digits, tmp_path, "Global.epochs=1", "EMA.decay=0.9", "Optimizer.lr.warmup_epoch=0",
                                 *NO_EVAL), "train")
    engine.amp.scaling = LossScaled(enabled_grad_scaler(monkeypatch, init_loss_scaling=1024.0))
    images, labels = next(iter(engine.train_loader))
    for overflow in (False, True, False):
        weights, ema = real_tensors(engine.model, trainable_only=True), real_tensors(engine.ema.module)
        counters = (engine.global_step, engine.schedule.last_epoch, engine.ema.updates)
        loss = engine.train_loss(engine.net(images), labels)["loss"]
        engine.amp.scaling.scaler.scale(loss * (1e36 if overflow else 1.0)).backward()
        assert engine.trainer.optimizer_step() is not overflow
        after = (engine.global_step, engine.schedule.last_epoch, engine.ema.updates)
        assert after == tuple(c + (0 if overflow else 1) for c in counters)
        changed = [k for k in weights if not np.array_equal(real_tensors(engine.model)[k], weights[k])]  # (BN statistics
        # move in any forward pass, skipped or not, as in PaddleClas)
        ema_changed = [k for k in ema if not np.array_equal(real_tensors(engine.ema.module)[k], ema[k])]
        assert (changed == [] and ema_changed == []) if overflow else (changed and ema_changed)


def test_resume_into_an_o2_decorated_model(digits, tmp_path, monkeypatch):
    """An O2 run's checkpoint (float32 weights from decorate's save hooks, float32 master weights and the
    loss scale) resumes into a freshly decorated model: float16 parameters equal to the saved run's, BN in
    float32, master weights and optimizer state exact, scale restored. (Today's loader put float32 into
    float16 parameters: `need tensor with dtype paddle.float16 but load tensor with dtype paddle.float32`.)"""
    config = quick_config(digits, tmp_path, "Global.epochs=1", *NO_EVAL)
    saved = Engine(config, "train")
    saved.train()
    decorate_o2(saved.model, saved.optimizer)
    fp16 = [p for p in saved.model.parameters() if p.dtype == paddle.float16]
    assert fp16 and any(p.dtype == paddle.float32 for p in saved.model.parameters())  # BN stays float32
    rng = np.random.default_rng(0)
    # master weights as an O2 step leaves them: the float32 values the float16 parameters were rounded from
    masters = {p.name: paddle.to_tensor(p.astype("float32").numpy() + rng.normal(0, 1e-4, p.shape).astype("float32"))
               for p in fp16}
    saved.optimizer.set_state_dict({**saved.optimizer.state_dict(), "master_weights": masters})
    saved.amp.scaling = LossScaled(enabled_grad_scaler(monkeypatch, init_loss_scaling=2048.0))
    saved.checkpoints.save("latest", 1)

    resumed = Engine(config, "train")
    decorate_o2(resumed.model, resumed.optimizer)
    resumed.amp.scaling = LossScaled(enabled_grad_scaler(monkeypatch, init_loss_scaling=65536.0))
    resumed.checkpoints.resume(str(tmp_path / "output" / "MicroNet_M0" / "latest"))
    expected, got = real_tensors(saved.model), real_tensors(resumed.model)
    for name, param in resumed.model.named_parameters():
        assert param.dtype == dict(saved.model.named_parameters())[name].dtype
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    saved_state = portable_optimizer_state(saved.optimizer.state_dict(), saved.model)
    resumed_state = portable_optimizer_state(resumed.optimizer.state_dict(), resumed.model)
    assert saved_state["master_weights"].keys() == resumed_state["master_weights"].keys() and len(masters) == len(fp16)
    for name, value in saved_state["master_weights"].items():
        np.testing.assert_array_equal(np.asarray(resumed_state["master_weights"][name]), value.numpy(), err_msg=name)
    assert resumed.amp.scaling.scaler.state_dict()["scale"][0] == 2048.0
