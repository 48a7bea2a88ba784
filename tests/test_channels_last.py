"""Channels-last (NHWC) models compute what the NCHW ones do, in dygraph, as features and once exported
(Paddle Inference; ONNX refuses them clearly); their layers are built NHWC through Paddle's public
`data_format=` argument, not by editing layers' private attributes afterwards."""
import logging
import os
import re

import numpy as np
import paddle
import pytest

import ppcls_ext
from ppcls_ext.config import ConfigError
from ppcls_ext.engine.engine import build_model
from ppcls_ext.serving.export import export_inference_model, inference_config
from ppcls_ext.inference.onnx_backend import OnnxPredictor
from ppcls_ext.inference.classifier import cpu_candidates
from ppcls_ext.inference.options import DeploymentError, InferenceOptions
from ppcls_ext.inference.paddle_backend import PaddlePredictor
from ppcls_ext.models.layers import build_format, building_in
from ppcls_ext.models.micronet import MaxGroupPooling
from ppcls_ext.weights import randomize_

FAMILIES = {"MicroNet_M0": 97, "MicroNet_M3": 64, "EfficientNetB0": 65, "EfficientNetV2_B0": 64}


def twins(name):
    reference = ppcls_ext.create_model(name)
    state = randomize_(reference.state_dict(), seed=3)
    reference.set_state_dict(state)
    channels_last = ppcls_ext.create_model(name, data_format="NHWC")
    channels_last.set_state_dict(state)
    return reference, channels_last


@pytest.mark.parametrize("name", list(FAMILIES))
def test_same_logits_and_gradients(name, rng):
    reference, channels_last = twins(name)
    size = FAMILIES[name]
    assert channels_last.data_format == "NHWC" and reference.data_format == "NCHW"
    # batch 8: training-mode batch norm over fewer samples would amplify summation-order differences
    x = paddle.to_tensor(rng.standard_normal((8, 3, size, size + 6)).astype("float32"))
    outputs = {}
    for train in (False, True):
        for model in (reference, channels_last):
            model.train() if train else model.eval()
            paddle.seed(0)  # the same dropout and drop-path draws
            outputs[model.data_format, train] = model(x)
    expected, got = outputs["NCHW", False].numpy(), outputs["NHWC", False].numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outputs["NHWC", True].numpy(), outputs["NCHW", True].numpy(), rtol=1e-4, atol=1e-4)
    outputs["NCHW", True].sum().backward()
    outputs["NHWC", True].sum().backward()
    twin = dict(channels_last.named_parameters())
    pairs = [(param.grad.numpy().ravel(), twin[key].grad.numpy().ravel())
             for key, param in reference.named_parameters() if param.grad is not None]
    expected_grads, got_grads = (np.concatenate(side) for side in zip(*pairs))
    # all gradients as one vector: single elements sum floats in different orders (and some, like a bias
    # before batch norm, are zero up to rounding)
    assert np.linalg.norm(got_grads - expected_grads) / np.linalg.norm(expected_grads) < 1e-4


def test_stage_outputs_are_channels_last(rng):
    reference, channels_last = twins("EfficientNetB0")
    reference.eval(), channels_last.eval()
    x = paddle.to_tensor(rng.standard_normal((1, 3, 64, 64)).astype("float32"))
    taps = [info for info in reference.feature_info if info.stride in (4, 8, 16, 32)]
    for nchw, nhwc, info in zip(reference.forward_stages(x), channels_last.forward_stages(x), taps, strict=True):
        assert nhwc.shape[-1] == info.channels
        np.testing.assert_allclose(nhwc.numpy(), nchw.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_max_group_pooling_on_the_last_axis(rng):
    x = rng.standard_normal((2, 8, 3, 5)).astype("float32")
    expected = MaxGroupPooling(2)(paddle.to_tensor(x)).numpy()
    with building_in("NHWC"):
        layer = MaxGroupPooling(2)
    got = layer(paddle.to_tensor(x.transpose(0, 2, 3, 1))).numpy()
    np.testing.assert_array_equal(got, expected.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("name", ["MicroNet_M0", "EfficientNetB0"])
def test_layers_are_built_channels_last(name, rng):
    """An NHWC model's own layers take NHWC tensors: its first convolution and BN, called directly on an
    NHWC batch, give the NCHW twin's output transposed."""
    reference, channels_last = twins(name)
    reference.eval(), channels_last.eval()
    first = lambda model: next(layer for layer in model.sublayers() if isinstance(layer, paddle.nn.Conv2D))  # noqa: E731
    bn = lambda model: next(layer for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D))  # noqa: E731
    x = rng.standard_normal((2, 3, 17, 20)).astype("float32")
    expected = first(reference)(paddle.to_tensor(x)).numpy()
    got = first(channels_last)(paddle.to_tensor(x.transpose(0, 2, 3, 1))).numpy()
    np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    y = paddle.to_tensor(expected)
    np.testing.assert_allclose(bn(channels_last)(paddle.to_tensor(expected.transpose(0, 2, 3, 1))).numpy(),
                               bn(reference)(y).numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_build_layout_is_scoped_and_no_private_layer_attributes_are_set():
    with pytest.raises(RuntimeError):
        with building_in("NHWC"):
            assert build_format() == "NHWC"
            raise RuntimeError("a failed build")
    assert build_format() == "NCHW"
    with pytest.raises(ValueError, match="data_format must be one of"):
        with building_in("CHWN"):
            pass
    root = os.path.dirname(ppcls_ext.__file__)
    sources = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".py")]
    writes = [path for path in sources if re.search(r"\._(data_format|channel_dim)\s*=", open(path).read())]
    assert writes == []


def test_arch_data_format_in_a_config():
    assert build_model({"name": "EfficientNetB0", "class_num": 10, "data_format": "NHWC"}).data_format == "NHWC"
    with pytest.raises(ConfigError, match="Arch: data_format must be one of .*'CHWN'"):
        build_model({"name": "MicroNet_M0", "data_format": "CHWN"})


def test_export_runs_on_paddle_inference(tmp_path, rng, caplog):
    reference, channels_last = twins("MicroNet_M0")
    reference.eval()
    directory = export_inference_model(channels_last, str(tmp_path / "nhwc"),
                                       inference_config("MicroNet_M0", [], 5, None, [3, 224, 224], False), softmax=False)
    batch = rng.standard_normal((2, 3, 80, 96)).astype("float32")
    with paddle.no_grad():
        expected = reference(paddle.to_tensor(batch)).numpy()
    with caplog.at_level(logging.WARNING, logger="ppcls_ext"):
        logging.getLogger("ppcls_ext").addHandler(caplog.handler)
        try:
            onednn = PaddlePredictor(directory, InferenceOptions(cpu_threads=1, enable_mkldnn=True))
        finally:
            logging.getLogger("ppcls_ext").removeHandler(caplog.handler)
    assert "channels-last (NHWC)" in caplog.text and "without oneDNN" in caplog.text
    for predictor in (PaddlePredictor(directory, InferenceOptions(cpu_threads=1, enable_mkldnn=False)), onednn):
        np.testing.assert_allclose(predictor.run(batch), expected, rtol=1e-4, atol=1e-5)
    # paddle2onnx cannot convert NHWC convolutions (it aborts the process): refused up front
    with pytest.raises(DeploymentError, match="channels-last .* paddle2onnx cannot convert"):
        OnnxPredictor(directory, 1)
    assert [name for name, _ in cpu_candidates(directory, InferenceOptions(cpu_threads=1))] == ["paddle-cpu"]
