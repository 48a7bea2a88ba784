"""The deploy form (batch norms folded into the layer before them) computes what the model computes,
leaves the model it was made from alone, and is what tools/export_model.py writes by default."""
import numpy as np
import paddle
import paddle.nn as nn
import pytest

import ppcls_ext
from conftest import quick_config
from ppcls_ext.engine import Engine
from ppcls_ext.inference.options import InferenceOptions
from ppcls_ext.inference.paddle_backend import PaddlePredictor
from ppcls_ext.models.deploy import deploy_form
from ppcls_ext.models.micronet import DYShiftMax
from ppcls_ext.weights import randomize_

BATCH_NORMS = (nn.BatchNorm1D, nn.BatchNorm2D)


def count_batch_norms(model):
    return sum(isinstance(layer, BATCH_NORMS) for layer in model.sublayers())


@pytest.mark.parametrize("name,size", [("MicroNet_M0", 97), ("MicroNet_M1", 64), ("MicroNet_M2", 64), ("MicroNet_M3", 64),
                                       ("EfficientNetB0", 65), ("EfficientNetV2_B0", 64)])
def test_same_logits_without_batch_norms(name, size, rng):
    model = ppcls_ext.create_model(name)
    model.set_state_dict(randomize_(model.state_dict(), seed=5))  # non-trivial BN statistics
    model.train()
    before = {key: value.numpy().copy() for key, value in model.state_dict().items()}
    folded = deploy_form(model)
    assert count_batch_norms(folded) == 0 and count_batch_norms(model) > 0
    assert model.training and not folded.training
    assert all(np.array_equal(value.numpy(), before[key]) for key, value in model.state_dict().items())
    model.eval()
    x = paddle.to_tensor(rng.standard_normal((2, 3, size, size)).astype("float32"))
    with paddle.no_grad():
        expected, got = model(x).numpy(), folded(x).numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_export_writes_the_deploy_form_unless_asked_not_to(digits, tmp_path, rng):
    batch = rng.standard_normal((2, 3, 32, 32)).astype("float32")
    outputs = {}
    for folded in (True, False):
        engine = Engine(quick_config(digits, tmp_path / str(folded), f"Global.export_deploy_form={folded}",
                                     "Global.infer_add_softmax=False"), "export")
        engine.model.set_state_dict(randomize_(engine.model.state_dict(), seed=1))
        path = engine.export()
        outputs[folded] = PaddlePredictor(path, InferenceOptions(cpu_threads=1)).run(batch)
        engine.model.eval()
        with paddle.no_grad():
            expected = engine.model(paddle.to_tensor(batch)).numpy()
        np.testing.assert_allclose(outputs[folded], expected, rtol=1e-4, atol=1e-5)
        program = open(f"{path}/inference.json", encoding="utf-8").read()
        assert ("batch_norm" in program) is not folded


@pytest.mark.parametrize("branches", [1, 2])
def test_dynamic_shift_max_deploy_form_matches_where_coefficients_saturate(branches, rng):
    """The folded coefficients clip exactly where hardsigmoid saturates: large weights push many of them
    to init +- act_max, small ones leave the rest in the linear range."""
    layer = DYShiftMax(16, 4, branches, reduction=4, act_max=2.0, init_a=(1.0, 0.5), init_b=(0.0, 0.5))
    layer.expand.weight.set_value(paddle.to_tensor(rng.standard_normal(layer.expand.weight.shape).astype("float32") * 40))
    layer.expand.bias.set_value(paddle.to_tensor(rng.standard_normal(layer.expand.bias.shape).astype("float32")))
    layer.eval()
    x = paddle.to_tensor(rng.standard_normal((3, 16, 5, 7)).astype("float32"))
    with paddle.no_grad():
        coefficients = paddle.concat(layer.coefficients(x), axis=1).numpy()
        expected = layer(x).numpy()
        folded = deploy_form(layer)
        got = folded(x).numpy()
        folded_coefficients = paddle.concat(folded.coefficients(x), axis=1).numpy()
    inits = np.repeat(np.array([1.0, 0.0, 0.5, 0.5][:2 * branches]), 16).reshape(1, -1, 1, 1)
    saturated = np.isclose(np.abs(coefficients - inits), 2.0)
    assert 0.1 < saturated.mean() < 0.9  # both regimes are exercised
    np.testing.assert_allclose(folded_coefficients, coefficients, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert folded.deploy_form and not layer.deploy_form
