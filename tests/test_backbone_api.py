"""PaddleClas's backbone API on our models (its TheseusLayer: stop_after, update_res / return_patterns,
return_stages, freeze_befor, upgrade_sublayer), headless models (class_num=0 / include_top False), and the
per-stage dropout PaddleClas's progressive trainer ramps. References are independent: the same weights run
through `forward_stages`, numpy pooling, or PaddleClas's own MicroNet."""
import copy

import numpy as np
import paddle
import pytest

import ppcls_ext
from ppcls_ext.serving.export import export_inference_model
from ppcls_ext.inference import InferenceOptions, PaddlePredictor
from ppcls_ext.models.base import Head, stage_dropout_rates
from ppcls_ext.paddleclas_plugin import paddleclas_original
from ppcls_ext.weights import randomize_

FAMILIES = ["MicroNet_M0", "EfficientNetB0", "EfficientNetV2_B0"]


def model_pair(name, class_num=10, **options):
    """A model built with `options` and a plain reference with the same weights, both in eval mode."""
    reference = ppcls_ext.create_model(name, class_num=class_num)
    randomize_(reference.state_dict(), seed=7)
    model = ppcls_ext.create_model(name, class_num=class_num, **options)
    model.set_state_dict({k: v for k, v in reference.state_dict().items() if k in model.state_dict()})
    reference.eval(), model.eval()
    return model, reference


@pytest.fixture
def x():
    return paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 48)).astype("float32"))


@pytest.mark.parametrize("name", FAMILIES)
def test_stop_after_returns_that_stage_and_drops_the_layers_after_it(name, x):
    model, reference = model_pair(name)
    tap = reference.feature_info[2]
    assert model.stop_after(f"stages[{tap.stage}]") is True
    np.testing.assert_array_equal(model(x).numpy(), reference.forward_stages(x, [tap.stride])[0].numpy())
    kept = {key for key in model.state_dict()}
    assert kept < set(reference.state_dict()) and not any(key.startswith(("classifier.", "embed.", "head.")) for key in kept)
    assert not any(key.startswith(f"stages.{tap.stage + 1}.") for key in kept)
    loss = model(x).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if not p.stop_gradient)


def test_stop_after_inside_a_residual_block_returns_that_layer(x):
    """Stopping at a block's depthwise conv: the block's residual addition (whose result is discarded) is off."""
    model, reference = model_pair("EfficientNetB0")
    model.stop_after("stages[1][1].dw")
    block = reference.stages[1][1]
    assert block.has_residual
    expected = block.dw(block.expand(reference.stages[1][0](reference.stages[0](reference.stem(x)))))
    np.testing.assert_allclose(model(x).numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_update_res_returns_paddleclas_result_dict(x):
    model, reference = model_pair("EfficientNetV2_B0")
    patterns = model.update_res(["stages[2]", "stem"])
    out = model(x)
    assert patterns == ["stages[2]", "stem"] and list(out) == ["logits", "stages[2]", "stem"]
    np.testing.assert_array_equal(out["logits"].numpy(), reference(x).numpy())
    np.testing.assert_array_equal(out["stages[2]"].numpy(), reference.forward_stages(x, [8])[0].numpy())
    np.testing.assert_array_equal(out["stem"].numpy(), reference.stem(x).numpy())
    model.update_res("stages.5")  # Paddle's own naming works too; replaces the earlier patterns
    assert list(model(x)) == ["logits", "stages.5"]


def test_return_stages_and_return_patterns_as_build_keywords(x):
    """As PaddleClas's backbones: return_stages (True or indices into stages_pattern) wins over return_patterns."""
    model, reference = model_pair("MicroNet_M0", return_stages=True)
    assert model.stages_pattern == [f"stages[{item.stage}]" for item in reference.feature_info]
    out = model(x)
    assert list(out) == ["logits"] + model.stages_pattern
    for item, pattern in zip(reference.feature_info, model.stages_pattern):
        np.testing.assert_array_equal(out[pattern].numpy(), reference.forward_stages(x, [item.stride])[0].numpy())
    chosen, _ = model_pair("MicroNet_M0", return_stages=[1], return_patterns=["stem"])
    assert list(chosen(x)) == ["logits", chosen.stages_pattern[1]]
    with pytest.raises(ValueError, match=r"return_stages \[9\] out of range"):
        ppcls_ext.create_model("MicroNet_M0", return_stages=[9])


def test_freeze_befor_stops_gradients_at_that_layer(x):
    model, _ = model_pair("EfficientNetB0", freeze_befor="stages[2]")
    model.train()
    model(x).mean().backward()
    grads = {name: p.grad is not None for name, p in model.named_parameters() if not p.stop_gradient}
    assert not any(v for k, v in grads.items() if k.startswith(("stem.", "stages.0.", "stages.1.", "stages.2.")))
    assert all(v for k, v in grads.items() if k.startswith(("stages.3.", "head.", "classifier.")))


def test_upgrade_sublayer_replaces_the_named_layers(x):
    model, _ = model_pair("EfficientNetB0")
    hit = model.upgrade_sublayer(["classifier", "dropout"], lambda layer, pattern: paddle.nn.Identity())
    assert hit == ["classifier", "dropout"] and model(x).shape == [2, 1280]


def test_a_pattern_naming_no_layer_is_an_error_that_lists_what_exists():
    model = ppcls_ext.create_model("MicroNet_M0")
    with pytest.raises(ValueError, match=r"no layer 'stages\[99\]': stages has no '99'; it has 0, 1, 2, 3, 4, 5, 6"):
        model.stop_after("stages[99]")
    with pytest.raises(ValueError, match="it has stem, stages, pool, embed, dropout, classifier"):
        model.update_res(["flatten"])
    with pytest.raises(ValueError, match="cannot read 'stages\\[x\\]'"):
        model.freeze_befor("stages[x]")
    with pytest.raises(ValueError, match="features_only cannot be combined with stop_after"):
        ppcls_ext.create_model("MicroNet_M0", features_only=True, stop_after="stages[2]")


def test_deep_copies_keep_their_own_taps(x):
    """EMA deep-copies the model: the copy's hooks must report the copy's outputs, not the original's."""
    model, _ = model_pair("MicroNet_M0")
    model.update_res(["stages[1]"])
    twin = copy.deepcopy(model)
    for param in twin.parameters():
        param.set_value(param * 0.5)
    ours, theirs = model(x), twin(x)
    assert not np.allclose(ours["stages[1]"].numpy(), theirs["stages[1]"].numpy())
    np.testing.assert_array_equal(model(x)["stages[1]"].numpy(), ours["stages[1]"].numpy())


@pytest.mark.parametrize("export_format", ["pir", "legacy"])
def test_a_stopped_backbone_exports_its_stop_layer_output(export_format, x, tmp_path):
    model, reference = model_pair("EfficientNetV2_B0")
    model.stop_after("stages[4]")
    export_inference_model(model, str(tmp_path / "export"), {"Global": {}}, softmax=False, export_format=export_format)
    predicted = PaddlePredictor(str(tmp_path / "export"), InferenceOptions(cpu_threads=2, enable_mkldnn=False)).run(x.numpy())
    np.testing.assert_allclose(predicted, reference.forward_stages(x, [16])[0].numpy(), rtol=1e-4, atol=1e-5)


def test_headless_efficientnet_returns_the_pooled_head_features(x):
    model, reference = model_pair("EfficientNetB0", class_num=0)
    features = reference.forward_features(x).numpy()
    np.testing.assert_allclose(model(x).numpy(), features.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert model(x).shape == [2, model.num_features]


def test_headless_micronet_returns_paddleclas_micronet_embedding(x):
    """MicroNet with class_num=0 (PaddleClas's include_top False) returns its pooled, embedded features - the
    input of PaddleClas's last classifier layer - instead of an empty [N, 0] tensor."""
    ours = ppcls_ext.create_model("MicroNet_M0", class_num=0)
    randomize_(ours.state_dict(), seed=7)
    ours.eval()
    theirs = paddleclas_original("MicroNet_M0")
    theirs.set_state_dict({**theirs.state_dict(), **ours.to_paddleclas_state_dict()})
    expected = theirs.classifier[0](theirs.avgpool(theirs.features(x)).flatten(1))
    assert ours(x).shape == [2, 640]
    np.testing.assert_allclose(ours(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_per_stage_dropout_sits_where_paddleclas_ramps_it():
    """Arch.dropout as a list (PaddleClas's EfficientNetV2_S form): training starts at the first rate, and a
    sub-layer of class `Head` holds our classifier dropout with every rate, for PaddleClas's trainer and ours."""
    model = ppcls_ext.create_model("EfficientNetV2_S", dropout=[0.1, 0.2, 0.3, 0.4])
    heads = [layer for layer in model.sublayers() if type(layer).__name__ == "Head"]
    assert len(heads) == 1 and isinstance(heads[0], Head) and heads[0]._dropout is model.dropout
    assert model.dropout.p == 0.1 and stage_dropout_rates(model) == [0.1, 0.2, 0.3, 0.4]
    heads[0]._dropout.p = heads[0].dropout_rate[2]  # what PaddleClas's progressive trainer does in stage 3
    assert model.dropout.p == 0.3
    assert stage_dropout_rates(ppcls_ext.create_model("MicroNet_M0")) is None
    with pytest.raises(ValueError, match=r"per-stage rates must be in \[0, 1\)"):
        ppcls_ext.create_model("MicroNet_M0", dropout=[0.1, 1.5])
    with pytest.raises(ValueError, match="an empty list"):
        ppcls_ext.create_model("MicroNet_M0", dropout=[])


def test_our_tools_refuse_return_patterns_in_a_config():
    """A model returning PaddleClas's result dict cannot be trained by our tools: a clear config error, not a
    traceback from the loss."""
    from ppcls_ext.config import ConfigError
    from ppcls_ext.engine.engine import build_model

    with pytest.raises(ConfigError, match="Arch.return_stages: the model would return a dict of features"):
        build_model({"name": "MicroNet_M0", "return_stages": True})
    assert isinstance(build_model({"name": "MicroNet_M0", "stop_after": "stages[6]", "freeze_befor": "stages[2]"}),
                      ppcls_ext.ImageClassifier)
