"""One declaration per family: a variant is one row, and the registry, the shipped configs (generated), their eval
preprocessing and PaddleClas's build_model all follow from it; a bad row fails where the family is declared."""
import importlib
import os
import types

import cv2
import numpy as np
import pytest

from conftest import REPO
from ppcls_ext import paddleclas_plugin, registry, zoo_configs
from ppcls_ext.config import ConfigError
from ppcls_ext.data.transforms import build_transforms
from ppcls_ext.engine.progressive import MODEL_PRESETS
from ppcls_ext.serving.modes import infer_transforms
from ppcls_ext.models.declaration import DeclarationError, declare_family, row
from ppcls_ext.models.efficientnet import Scaling, efficientnet, scaling_facts
from ppcls_ext.cli.make_configs import main as make_configs

COMPLETE = dict(crop_mode="resize_short", interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3, drop_path_rate=0.2,
                weights_url=None, paddleclas_module=None, progressive_preset=None, weight_decay=1e-5, batch_size=8)


def test_committed_configs_are_what_the_declarations_generate():
    stale = zoo_configs.stale(REPO)
    assert not stale, f"configs out of date with the model declarations: {stale}; run {zoo_configs.COMMAND}"


def test_the_check_command_names_a_stale_config_and_the_command_to_run(tmp_path, capsys):
    for path, text in zoo_configs.rendered().items():
        os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
        (tmp_path / path).write_text(text)
    stale = tmp_path / "configs" / "ImageNet" / "MicroNet" / "micronet_m2.yaml"
    stale.write_text(stale.read_text().replace("resize_short: 256", "resize_short: 320"))
    (tmp_path / "configs" / "ImageNet" / "MicroNet" / "micronet_m9.yaml").write_text("Arch: {name: MicroNet_M9}\n")
    assert make_configs(["--root", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "configs/ImageNet/MicroNet/micronet_m2.yaml: out of date" in err
    assert "configs/ImageNet/MicroNet/micronet_m9.yaml: no model declares it" in err
    assert "2 config(s) differ from the model declarations: run python tools/make_configs.py" in err
    assert make_configs(["--root", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "wrote configs/ImageNet/MicroNet/micronet_m2.yaml\n"
    assert "micronet_m9.yaml: no model declares it; delete it or declare its model" in err
    assert "resize_short: 256" in stale.read_text()  # rewritten; the orphan is left for the user to delete
    assert zoo_configs.stale(str(tmp_path)) == ["configs/ImageNet/MicroNet/micronet_m9.yaml"]


def test_a_row_missing_a_fact_fails_naming_the_model_and_the_fact():
    incomplete = {k: v for k, v in COMPLETE.items() if k != "batch_size"}
    with pytest.raises(DeclarationError, match=r"^EfficientNetX1: missing batch_size \(EfficientNet rows give: .*, or "
                                                 r"take the family's default\)$"):
        declare_family("EfficientNet", "EfficientNet{}", [row("X1", Scaling(1.0, 1.0, 64, 0.2), paper_top1=None)],
                       incomplete, derive=scaling_facts)


@pytest.mark.parametrize("facts, message", [
    ({"dropout": 0.3}, r"EfficientNetX1: dropout derive\(s\) from its Scaling spec; change the spec, do not restate it"),
    ({"top1": 70.0}, r"EfficientNetX1: unknown fact\(s\) \['top1'\]; missing paper_top1"),
    ({"crop_mode": "center"}, r"EfficientNetX1: crop_mode must be one of resize_short, crop_at_ratio, got 'center'"),
    ({"progressive_preset": "S"}, r"EfficientNetX1: progressive_preset must be None \(EfficientNet has no presets\), got 'S'"),
    ({"mean": (0.5, 0.5)}, r"EfficientNetX1: mean must be a tuple of 3 numbers, got \(0.5, 0.5\)"),
    ({"weights_url": "http://example.com/{name}.pdparams"}, r"EfficientNetX1: weights_url must be an https URL or None"),
])
def test_a_row_restating_or_misstating_a_fact_fails_naming_the_model(facts, message):
    facts = {"paper_top1": None, **facts} if "top1" not in facts else facts
    with pytest.raises(DeclarationError, match=message):
        declare_family("EfficientNet", "EfficientNet{}", [row("X1", Scaling(1.0, 1.0, 64, 0.2), **facts)], COMPLETE,
                       derive=scaling_facts)


def test_a_variant_declared_twice_fails():
    rows = [row("X1", Scaling(1.0, 1.0, 64, 0.2), paper_top1=None)] * 2
    with pytest.raises(DeclarationError, match="EfficientNetX1: declared twice in EfficientNet's table"):
        declare_family("EfficientNet", "EfficientNet{}", rows, COMPLETE, derive=scaling_facts)


def test_paddleclas_has_its_own_class_exactly_for_the_variants_declaring_its_module():
    """The declared module names are checked against the PaddleClas wheel itself: each declared class exists
    there, and none of our other names does (B8, L2, V2-B*, Lite)."""
    for name in registry.list_models():
        module = registry.get_declaration(name).paddleclas_module
        family_module = {"MicroNet": "micronet", "EfficientNet": "efficientnet", "EfficientNetV2": "efficientnet_v2",
                         "EfficientNetLite": "efficientnet"}[registry.get_model_config(name).family]
        theirs = importlib.import_module(f"paddleclas.ppcls.arch.backbone.model_zoo.{family_module}")
        assert hasattr(theirs, name) == (module is not None), name
        assert module in (None, family_module)
    assert paddleclas_plugin.PADDLECLAS_MODULES["EfficientNetV2_XL"] == "efficientnet_v2"
    assert MODEL_PRESETS == {"EfficientNetV2_S": "S", "EfficientNetV2_M": "M", "EfficientNetV2_L": "L", "EfficientNetV2_XL": "L"}


@pytest.fixture
def photo(rng):
    """A 300 x 200 (w x h) image with structure at every scale, as JPEG bytes (what DecodeImage reads)."""
    y, x = np.mgrid[0:200, 0:300]
    image = np.stack([(x * 255 / 299), (y * 255 / 199), (np.sin(x / 7.0) * np.cos(y / 5.0) + 1) * 127.5], -1)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    return image, cv2.imencode(".png", image[..., ::-1])[1].tobytes()


def test_declared_resize_short_preprocessing_matches_a_cv2_reference(photo):
    """MicroNet_M0: short side to 256 (bilinear), centre 224, (x / 255 - mean) / std."""
    image, data = photo
    ours = build_transforms(registry.eval_transform_ops("MicroNet_M0"), "eval")(data)
    resized = cv2.resize(image, (384, 256), interpolation=cv2.INTER_LINEAR)
    crop = resized[16:240, 80:304].astype(np.float32) / 255.0
    expected = (crop - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_declared_crop_at_ratio_preprocessing_matches_a_cv2_reference(photo):
    """EfficientNetLite0: centre crop of 224/256 of the short side (175 of 200 px), bicubic to 224, (x - 127) / 128."""
    image, data = photo
    ops = registry.eval_transform_ops("EfficientNetLite0")
    assert ops[-1] == {"NormalizeImage": {"scale": 1.0, "mean": [127.0] * 3, "std": [128.0] * 3, "order": ""}}
    ours = build_transforms(ops, "eval")(data)
    side = int(224 / 256 * 200)  # truncated, offsets floored, as PaddleClas's CropImageAtRatio (operators.py)
    top, left = (200 - side) // 2, (300 - side) // 2
    crop = cv2.resize(image[top:top + side, left:left + side], (224, 224), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_allclose(ours, (crop.astype(np.float32) - 127.0) / 128.0, atol=1e-5)


def test_export_without_any_preprocessing_takes_the_declared_one():
    bare = {"Arch": {"name": "EfficientNetV2_S"}}
    assert infer_transforms(bare, "EfficientNetV2_S") == registry.eval_transform_ops("EfficientNetV2_S") + [{"ToCHWImage": None}]
    given = {"DataLoader": {"Eval": {"dataset": {"transform_ops": [{"ResizeImage": {"size": 32}}]}}}}
    assert infer_transforms(given, "EfficientNetV2_S") == [{"ResizeImage": {"size": 32}}, {"ToCHWImage": None}]
    with pytest.raises(ConfigError, match=r"missing 'DataLoader.Eval.dataset.transform_ops' \(no 'DataLoader' under the config\)"):
        infer_transforms({"Arch": {"name": "ResNet50"}}, "ResNet50")


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry's tables as copies, so that a family registered in a test leaves with it."""
    for table in ("_FAMILIES", "_REGISTRY", "_DECLARATIONS"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    monkeypatch.setattr(zoo_configs, "RECIPES", {**zoo_configs.RECIPES, "EfficientNetWide": zoo_configs.RECIPES["EfficientNet"]})


def test_a_family_registered_from_its_declaration_is_known_everywhere(scratch_registry, monkeypatch):
    """One declared row -> list_models, get_model_config, eval_transform_ops, create_model, its config and
    PaddleClas's own build_model through the plugin."""
    wide = declare_family("EfficientNetWide", "EfficientNetWide{}", [
        row("T0", Scaling(0.25, 0.25, 64, 0.1), paper_top1=None, batch_size=256, interpolation="bicubic")],
        {**COMPLETE, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}, derive=scaling_facts)
    registry.register_family(wide, lambda variant, **options: efficientnet(*wide.specs()[variant][:2], **options), ["dropout"])
    with pytest.raises(ValueError, match="model family 'EfficientNetWide' is registered already"):
        registry.register_family(wide, efficientnet, [])
    assert registry.list_models(family="EfficientNetWide") == ["EfficientNetWideT0"]
    config = registry.get_model_config("EfficientNetWideT0")
    assert (config.eval_size, config.resize_short, config.dropout, config.interpolation) == (64, 96, 0.1, "bicubic")
    assert registry.eval_transform_ops("EfficientNetWideT0")[1] == {"ResizeImage": {"resize_short": 96, "interpolation": "bicubic"}}
    text = zoo_configs.render("EfficientNetWideT0")
    assert "  name: EfficientNetWideT0\n" in text and "image_shape: [3, 64, 64]" in text and "learning_rate: 0.128\n" in text
    assert zoo_configs.config_path("EfficientNetWideT0") == os.path.join("configs", "ImageNet", "EfficientNetWide", "efficientnet_t0.yaml")
    namespace = types.SimpleNamespace()
    paddleclas_plugin.register_models(namespace)
    arch = importlib.import_module("paddleclas.ppcls.arch")
    monkeypatch.setattr(arch, "EfficientNetWideT0", namespace.EfficientNetWideT0, raising=False)
    model = arch.build_model({"Arch": {"name": "EfficientNetWideT0", "class_num": 3}})
    assert type(model).__name__ == "EfficientNet" and model.classifier.weight.shape == [320, 3]  # 1280 x width 0.25
    assert model.dropout.p == 0.1  # the declared default reached the builder
