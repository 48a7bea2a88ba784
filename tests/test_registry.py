"""The registry: names, per-model defaults, create_model's options and errors."""
import paddle
import pytest

import ppcls_ext
from ppcls_ext.registry import paddleclas_arch_options


def test_list_models_in_zoo_order_and_filters():
    names = ppcls_ext.list_models()
    assert len(names) == 27 and len(set(names)) == 27
    assert names[:4] == [f"MicroNet_M{i}" for i in range(4)]
    assert ppcls_ext.list_models("EfficientNetB*") == [f"EfficientNetB{i}" for i in range(9)]
    assert ppcls_ext.list_models(family="EfficientNetV2") == [f"EfficientNetV2_{v}" for v in ("S", "M", "L", "XL", "B0", "B1", "B2", "B3")]
    assert ppcls_ext.list_models(family="EfficientNet")[-1] == "EfficientNetL2"
    assert ppcls_ext.list_models(family="EfficientNetLite") == [f"EfficientNetLite{i}" for i in range(5)]
    with pytest.raises(ValueError, match=r"unknown family 'ResNet'; choose from \['MicroNet', 'EfficientNet', 'EfficientNetV2', 'EfficientNetLite'\]"):
        ppcls_ext.list_models(family="ResNet")


def test_defaults_describe_the_official_training_and_evaluation():
    b0 = ppcls_ext.get_model_config("EfficientNetB0")
    assert (b0.train_size, b0.eval_size, b0.resize_short, b0.crop_mode) == (224, 224, 256, "resize_short")
    assert (b0.dropout, b0.drop_path_rate, b0.mean, b0.interpolation) == (0.2, 0.2, (0.485, 0.456, 0.406), "bilinear")
    b7 = ppcls_ext.get_model_config("EfficientNetB7")
    assert (b7.eval_size, b7.resize_short, b7.dropout) == (600, 632, 0.5)
    assert ppcls_ext.get_model_config("EfficientNetL2").eval_size == 800
    v2s = ppcls_ext.get_model_config("EfficientNetV2_S")
    assert (v2s.train_size, v2s.eval_size, v2s.crop_mode, v2s.mean, v2s.std) == (300, 384, "crop_at_ratio", (0.5,) * 3, (0.5,) * 3)
    assert v2s.crop_pct == pytest.approx(384 / 416)
    assert [ppcls_ext.get_model_config(f"EfficientNetV2_{v}").train_size for v in ("M", "XL", "B0", "B2", "B3")] == [384, 384, 192, 208, 240]
    lite4 = ppcls_ext.get_model_config("EfficientNetLite4")  # the official lite builder and its (x - 127) / 128 input
    assert (lite4.train_size, lite4.eval_size, lite4.crop_mode, lite4.interpolation, lite4.dropout) == (300, 300, "crop_at_ratio", "bicubic", 0.3)
    assert lite4.crop_pct == pytest.approx(300 / 332) and lite4.mean == (127 / 255,) * 3 and lite4.std == (128 / 255,) * 3
    m3 = ppcls_ext.get_model_config("MicroNet_M3")
    assert (m3.eval_size, m3.resize_short, m3.dropout, m3.paper_top1) == (224, 256, 0.1, 62.5)


def test_official_weight_urls_exist_exactly_for_paddleclas_variants():
    with_weights = [n for n in ppcls_ext.list_models() if ppcls_ext.get_model_config(n).weights_url]
    assert with_weights == [f"MicroNet_M{i}" for i in range(4)] + [f"EfficientNetB{i}" for i in range(8)] + [
        f"EfficientNetV2_{v}" for v in ("S", "M", "L", "XL")]
    assert ppcls_ext.get_model_config("MicroNet_M2").weights_url == (
        "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/MicroNet_M2_pretrained.pdparams")


def test_unknown_model_lists_the_valid_names_and_suggests():
    with pytest.raises(ppcls_ext.UnknownModelError) as info:
        ppcls_ext.create_model("EfficientNetV2_SS")
    message = str(info.value)
    assert "unknown model 'EfficientNetV2_SS'" in message and "Did you mean EfficientNetV2_S" in message
    assert "MicroNet_M0" in message and "EfficientNetL2" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_options_are_checked_per_family():
    with pytest.raises(TypeError, match=r"MicroNet_M0 got unexpected option\(s\) \['drop_path_rate'\]; accepted: .*dropout"):
        ppcls_ext.create_model("MicroNet_M0", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="class_num must be a non-negative integer, got -1"):
        ppcls_ext.create_model("MicroNet_M0", class_num=-1)
    with pytest.raises(ValueError, match="EfficientNetB8 has no official pretrained weights"):
        ppcls_ext.create_model("EfficientNetB8", pretrained=True)


def test_overrides_reach_the_model():
    model = ppcls_ext.create_model("EfficientNetV2_B0", class_num=3, dropout=0.45, drop_path_rate=0.1)
    assert model.dropout.p == 0.45
    rates = [b.drop_path.rate for _, _, b in model.blocks() if b.drop_path is not None]
    assert max(rates) < 0.1 and rates == sorted(rates)
    assert ppcls_ext.create_model("MicroNet_M1").dropout.p == 0.05
    assert ppcls_ext.create_model("EfficientNetB4").dropout.p == 0.4


def test_paddleclas_arch_keywords_are_translated():
    assert paddleclas_arch_options("EfficientNetB0", {"class_num": 10, "padding_type": "DYNAMIC"}) == {"class_num": 10, "padding": "symmetric"}
    assert paddleclas_arch_options("EfficientNetV2_S", {"include_top": False}) == {"class_num": 0}
    assert paddleclas_arch_options("MicroNet_M0", {"use_ssld": False, "pretrained": False}) == {"pretrained": False}
    with pytest.raises(ValueError, match="no SSLD weights"):
        paddleclas_arch_options("MicroNet_M0", {"use_ssld": True})
    with pytest.raises(ValueError, match=r"padding_type must be one of \['SAME', 'DYNAMIC'\], got 'VALID'"):
        paddleclas_arch_options("EfficientNetB0", {"padding_type": "VALID"})


def test_create_model_returns_a_trainable_layer():
    model = ppcls_ext.create_model("MicroNet_M0", class_num=5)
    model.train()
    loss = model(paddle.randn([4, 3, 64, 64])).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if not p.stop_gradient)
