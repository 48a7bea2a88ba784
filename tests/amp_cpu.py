"""Paddle's AMP pieces on the CPU build, for tests: the real code with only its device gates bypassed.

On a CPU, `paddle.amp.decorate` returns the model unchanged and `paddle.amp.GradScaler` disables itself,
so what they do on a GPU is reproduced from their own functions (paddle 3.3, paddle/amp/auto_cast.py and
paddle/amp/grad_scaler.py)."""
from __future__ import annotations

from unittest import mock

import paddle
import paddle.amp.grad_scaler as grad_scaler
from paddle.amp.auto_cast import StateDictHook, _set_multi_precision, amp_global_state, amp_initialize


def decorate_o2(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer) -> None:
    """What `paddle.amp.decorate(model, optimizer, level="O2", save_dtype="float32")` does past its device
    check (amp_decorate): `amp_initialize` casts every layer but the norms to float16,
    `_set_multi_precision(optimizer, True)` asks for float32 master weights (master_weight=None), and a
    `StateDictHook("float32")` on every sublayer makes `state_dict()` return float32 copies."""
    amp_initialize(models=[model], dtype="float16", excluded_layers=None)
    _set_multi_precision(optimizer, True)
    for layer in model.sublayers(include_self=True):
        layer.register_state_dict_hook(StateDictHook("float32"))


class _GpuPlace:
    def is_gpu_place(self) -> bool:
        return True

    def is_xpu_place(self) -> bool:
        return False

    def is_custom_place(self) -> bool:
        return False


class _GpuTracer:
    _expected_place = _GpuPlace()


def enabled_grad_scaler(monkeypatch, **kwargs) -> paddle.amp.GradScaler:
    """A real GradScaler, enabled on the CPU: its constructor sees a GPU place (AmpScaler.__init__ disables
    itself on other places), and the AMP dtype is float16 as `auto_cast` sets it on a GPU (`scale()`
    disables the scaler for any other dtype). Unscaling, inf checks, skipping and scale updates are
    Paddle's own code."""
    monkeypatch.setattr(amp_global_state(), "amp_dtype", "float16")
    with mock.patch.object(grad_scaler, "_dygraph_tracer", lambda: _GpuTracer()):
        scaler = paddle.amp.GradScaler(**kwargs)
    assert scaler.is_enable()
    return scaler
