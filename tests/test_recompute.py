"""Activation recomputation (`Arch.recompute`): the same training step as without it - loss, every
gradient, batch norm running statistics - with drop-path and dropout active."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle.distributed.fleet.utils import recompute as paddle_recompute

import ppcls_ext
from ppcls_ext.config import ConfigError
from ppcls_ext.engine.engine import build_model
from ppcls_ext.models import recompute as recompute_module


def training_step(model, images, labels, seed):
    """Loss, gradients and batch norm statistics after one forward/backward from a fixed random state."""
    model.train()
    paddle.seed(seed)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None}
    stats = {k: v.numpy().copy() for k, v in model.state_dict().items() if k.endswith(("_mean", "_variance"))}
    model.clear_gradients()
    return float(loss), grads, stats


@pytest.mark.parametrize("name, recompute", [("EfficientNetV2_B0", True), ("EfficientNetB0", [1, 2, 5])])
def test_recompute_gives_the_normal_step(name, recompute, monkeypatch):
    calls = []
    monkeypatch.setattr(recompute_module, "recompute", lambda *a, **k: calls.append(a[0]) or paddle_recompute(*a, **k))
    paddle.seed(0)
    normal = ppcls_ext.create_model(name, class_num=10, drop_path_rate=0.3)
    recomputed = ppcls_ext.create_model(name, class_num=10, drop_path_rate=0.3, recompute=recompute)
    recomputed.set_state_dict(normal.state_dict())
    rng = np.random.default_rng(0)
    images = paddle.to_tensor(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))
    labels = paddle.to_tensor(rng.integers(0, 10, (2, 1)))
    expected_loss, expected_grads, expected_stats = training_step(normal, images, labels, seed=7)
    loss, grads, stats = training_step(recomputed, images, labels, seed=7)
    stages = recomputed.recompute_stages
    assert len(calls) == sum(len(stage) for index, stage in enumerate(recomputed.stages) if index in stages)
    assert all(function.calls == 2 for function in calls)  # forward, then once more in backward
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert grads.keys() == expected_grads.keys() and len(grads) > 100
    for key, grad in expected_grads.items():
        np.testing.assert_allclose(grads[key], grad, rtol=1e-5, atol=1e-7, err_msg=key)
    for key, value in expected_stats.items():  # updated once, not again by the recomputation
        np.testing.assert_allclose(stats[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
    variances = [value for key, value in expected_stats.items() if key.endswith("_variance")]
    assert all(not np.allclose(value, 1.0) for value in variances)  # they did move from their initial 1


def test_recompute_is_an_arch_option_and_rejects_bad_values():
    model = build_model({"name": "EfficientNetV2_B0", "class_num": 10, "recompute": [0, 1]})
    assert model.recompute_stages == {0, 1}
    assert ppcls_ext.create_model("EfficientNetB0", class_num=10, recompute=True).recompute_stages == set(range(7))
    with pytest.raises(ConfigError, match=r"Arch: recompute must be true, false or a list of stage indices in 0\.\.5, got \[6\]"):
        build_model({"name": "EfficientNetV2_B0", "recompute": [6]})
    with pytest.raises(ConfigError, match="unexpected option"):
        build_model({"name": "MicroNet_M0", "recompute": True})
