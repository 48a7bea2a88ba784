"""Every variant of the zoo: forward at small and odd sizes, sizes against the papers, stochastic depth,
feature extraction, export with dynamic shapes."""
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle.static import InputSpec

import ppcls_ext
from ppcls_ext.models import EfficientNet, FeatureExtractor, compound_scaling, efficientnet, efficientnet_variant


def learnable_params(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


# Paper / official-repository sizes of the variants PaddleClas does not have (millions of parameters)
PAPER_PARAMS = {"EfficientNetB8": 87.4, "EfficientNetL2": 480.3, "EfficientNetV2_B0": 7.1,
                "EfficientNetV2_B1": 8.1, "EfficientNetV2_B2": 10.1, "EfficientNetV2_B3": 14.4,
                # EfficientNet-Lite: timm's tf_efficientnet_lite0-4 (the official README rounds: 4.7, 5.4, 6.1, 8.2, 13.0)
                "EfficientNetLite0": 4.652, "EfficientNetLite1": 5.417, "EfficientNetLite2": 6.092,
                "EfficientNetLite3": 8.197, "EfficientNetLite4": 13.007}
# PaddleClas's counts for the shared variants (DESIGN.md; the parity tests compare with its classes too)
PADDLECLAS_PARAMS = {"MicroNet_M0": 1.02, "MicroNet_M1": 1.78, "MicroNet_M2": 2.39, "MicroNet_M3": 2.62,
                     "EfficientNetB0": 5.29, "EfficientNetV2_S": 21.46, "EfficientNetV2_M": 54.14,
                     "EfficientNetV2_L": 118.5, "EfficientNetV2_XL": 208.1}
SMALL = [n for n in ppcls_ext.list_models() if n.startswith("MicroNet") or n in ("EfficientNetB0", "EfficientNetV2_B0")]


@pytest.mark.parametrize("name", ppcls_ext.list_models())
def test_every_variant_runs_at_small_and_odd_sizes_and_has_the_published_size(name):
    model = ppcls_ext.create_model(name)
    model.eval()
    sizes = [(64, 64), (97, 97)] + ([(225, 225), (97, 131)] if name in SMALL else [])
    with paddle.no_grad():
        for h, w in sizes:
            out = model(paddle.randn([2, 3, h, w]))
            assert out.shape == [2, 1000], (name, h, w)
            assert np.isfinite(out.numpy()).all()
    expected = PAPER_PARAMS.get(name) or PADDLECLAS_PARAMS.get(name)
    if expected is not None:
        assert learnable_params(model) / 1e6 == pytest.approx(expected, abs=0.051 if expected < 100 else 0.5)


def test_class_num_sets_the_output_width_and_zero_drops_the_classifier():
    assert ppcls_ext.create_model("MicroNet_M0", class_num=7)(paddle.randn([2, 3, 64, 64])).shape == [2, 7]
    headless = ppcls_ext.create_model("EfficientNetV2_B0", class_num=0)
    headless.eval()
    assert headless(paddle.randn([2, 3, 64, 64])).shape == [2, 1280]
    assert not [k for k in headless.state_dict() if k.startswith("classifier.")]


@pytest.mark.parametrize("name", ["EfficientNetB3", "EfficientNetV2_S"])
def test_drop_path_rate_grows_linearly_with_block_index(name):
    model = ppcls_ext.create_model(name, drop_path_rate=0.3)
    blocks = [block for _, _, block in model.blocks()]
    for index, block in enumerate(blocks):
        expected = 0.3 * index / len(blocks)
        if block.has_residual and expected > 0:
            assert block.drop_path.rate == pytest.approx(expected)
        else:
            assert block.drop_path is None
    assert blocks[-1].drop_path is None or blocks[-1].drop_path.rate < 0.3


def test_two_models_of_every_family_in_one_process():
    """PaddleClas's EfficientNet uses fixed parameter names and cannot be built twice; ours can."""
    names = ["EfficientNetB0", "EfficientNetB0", "EfficientNetV2_B0", "EfficientNetV2_B0", "MicroNet_M0", "MicroNet_M0"]
    models = [ppcls_ext.create_model(name) for name in names]
    first, second = models[0], models[1]
    assert {p.name for p in first.parameters()}.isdisjoint(p.name for p in second.parameters())
    second.set_state_dict(first.state_dict())
    first.eval(), second.eval()
    x = paddle.randn([1, 3, 64, 64])
    np.testing.assert_array_equal(first(x).numpy(), second(x).numpy())


def test_symmetric_padding_option_changes_only_the_padding():
    same = ppcls_ext.create_model("EfficientNetB0", padding="same")
    symmetric = ppcls_ext.create_model("EfficientNetB0", padding="symmetric")
    symmetric.set_state_dict(same.state_dict())
    same.eval(), symmetric.eval()
    x = paddle.randn([1, 3, 64, 64])
    assert same(x).shape == symmetric(x).shape
    assert not np.allclose(same(x).numpy(), symmetric(x).numpy())
    stem_weight = same.stem.conv.weight
    np.testing.assert_allclose(symmetric.stem.conv(x).numpy(), F.conv2d(x, stem_weight, stride=2, padding=1).numpy(), atol=1e-5)
    np.testing.assert_allclose(same.stem.conv(x).numpy(), F.conv2d(F.pad(x, [0, 1, 0, 1]), stem_weight, stride=2).numpy(), atol=1e-5)


def test_named_variants_follow_the_official_scaling_table():
    b1 = efficientnet_variant("B1")
    assert [s.repeats for s in b1.stage_specs] == [2, 3, 3, 4, 4, 5, 2]  # ceil(1.1 * [1, 2, 2, 3, 3, 4, 1])
    b4 = efficientnet_variant("B4")
    assert b4.stem.conv.weight.shape[0] == 48 and b4.num_features == 1792
    assert [s.out_channels for s in b4.stage_specs] == [24, 32, 56, 112, 160, 272, 448]


def test_custom_efficientnet_from_phi_or_multipliers():
    assert compound_scaling(0) == (1.0, 1.0, 224, 0.2)
    scaling = compound_scaling(2)
    assert scaling.width == pytest.approx(1.21) and scaling.depth == pytest.approx(1.44) and scaling.resolution == 296
    from_phi = efficientnet(phi=2, class_num=10)
    from_multipliers = efficientnet(1.21, 1.44, class_num=10)
    assert [s.out_channels for s in from_phi.stage_specs] == [s.out_channels for s in from_multipliers.stage_specs]
    assert learnable_params(efficientnet(1.0, 1.1)) == learnable_params(efficientnet_variant("B1"))
    assert isinstance(from_phi, EfficientNet) and from_phi(paddle.randn([1, 3, 64, 64])).shape == [1, 10]
    with pytest.raises(ValueError, match="width and depth multipliers must be positive"):
        efficientnet(0.0, 1.0)


# stride -> channels of the multi-scale outputs
FEATURES = {
    "MicroNet_M0": {4: 8, 8: 12, 16: 32, 32: 384},
    "MicroNet_M3": {4: 16, 8: 24, 16: 80, 32: 864},
    "EfficientNetB0": {2: 16, 4: 24, 8: 40, 16: 112, 32: 320},
    "EfficientNetV2_S": {2: 24, 4: 48, 8: 64, 16: 160, 32: 256},
}


@pytest.mark.parametrize("name", list(FEATURES))
def test_multi_scale_features(name):
    model = ppcls_ext.create_model(name)
    model.eval()
    assert {f.stride: f.channels for f in model.feature_info} == FEATURES[name]
    x = paddle.randn([2, 3, 128, 96])
    features = model.forward_stages(x, strides=(4, 8, 16, 32))
    for feature, stride in zip(features, (4, 8, 16, 32)):
        assert feature.shape == [2, FEATURES[name][stride], 128 // stride, 96 // stride]
    backbone = ppcls_ext.create_model(name, features_only=True, out_strides=(8, 32))
    assert isinstance(backbone, FeatureExtractor)
    assert [(f.stride, f.channels) for f in backbone.feature_info] == [(8, FEATURES[name][8]), (32, FEATURES[name][32])]
    assert not [k for k in backbone.state_dict() if k.startswith(("classifier", "head", "embed"))]
    backbone.set_state_dict({k: v for k, v in model.state_dict().items() if k in backbone.state_dict()})
    backbone.eval()
    outputs = backbone(x)
    np.testing.assert_allclose(outputs[0].numpy(), features[1].numpy(), atol=1e-6)
    np.testing.assert_allclose(outputs[1].numpy(), features[3].numpy(), atol=1e-6)
    assert model.forward_features(x).shape[1] == model.num_features


def test_unavailable_stride_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no stage has stride 64; available strides: \[4, 8, 16, 32\]"):
        ppcls_ext.create_model("MicroNet_M0", features_only=True, out_strides=(4, 64))


@pytest.mark.parametrize("name", ["MicroNet_M1", "EfficientNetB0", "EfficientNetV2_B0"])
def test_export_with_dynamic_shapes_keeps_the_outputs(name, tmp_path):
    model = ppcls_ext.create_model(name)
    model.eval()
    static = paddle.jit.to_static(model, input_spec=[InputSpec([None, 3, None, None], "float32")], full_graph=True)
    prefix = os.path.join(tmp_path, "inference")
    paddle.jit.save(static, prefix)
    loaded = paddle.jit.load(prefix)
    for shape in ([1, 3, 96, 96], [3, 3, 97, 131]):
        x = paddle.randn(shape)
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-5)


def test_weights_follow_the_official_initialisers():
    """Each family's own initialiser is what the parameters hold (they are initialised once, lazily)."""
    b0 = ppcls_ext.create_model("EfficientNetB3")
    expand = b0.stages[5][0].expand.conv.weight.numpy()  # 1x1: fan_out = out_channels
    assert expand.std() == pytest.approx(np.sqrt(2.0 / expand.shape[0]), rel=0.05)
    depthwise = b0.stages[5][0].dw.conv.weight.numpy()  # 5x5 depthwise: fan_out = 25
    assert depthwise.std() == pytest.approx(np.sqrt(2.0 / 25), rel=0.05)
    bound = 1 / np.sqrt(1000)
    classifier = b0.classifier.weight.numpy()
    assert classifier.min() >= -bound and classifier.max() <= bound and classifier.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    assert (b0.classifier.bias.numpy() == 0).all()
    m3 = ppcls_ext.create_model("MicroNet_M3")
    assert m3.embed.fc.weight.numpy().std() == pytest.approx(0.01, rel=0.05)
    conv = m3.stages[8].expand.conv.weight.numpy()
    assert conv.std() == pytest.approx(np.sqrt(2.0 / conv.shape[0]), rel=0.05)
