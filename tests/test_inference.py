"""Deployment: Paddle Inference (CPU, oneDNN on/off) and ONNX Runtime reproduce the dygraph model;
TensorRT is configured as asked (checked through recording stand-ins for Paddle's API, since this
Paddle is the CPU build) and refused with one clear message where it cannot run; PaddleClas's own
predictor runs our export."""
import importlib.metadata
import json
import os
import subprocess
import sys
import types

import numpy as np
import onnx
import paddle
import pytest
import yaml

import ppcls_ext
from conftest import REPO
from ppcls_ext.config import ConfigError
from ppcls_ext.engine.export import export_inference_model, inference_config
from ppcls_ext.inference import (DeployedClassifier, DeploymentError, InferenceOptions, OnnxPredictor, PaddlePredictor,
                                 TensorRTOptions, export_onnx, options_from_config)
from ppcls_ext.inference import classifier as classifier_module
from ppcls_ext.inference import paddle_backend

NORMALIZE = [{"NormalizeImage": {"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3, "order": "", "channel_num": 3}},
             {"ToCHWImage": None}]
FAMILIES = ["MicroNet_M1", "EfficientNetB0", "EfficientNetV2_B0"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (export dir, dygraph model) for one variant per family, with random weights."""
    result = {}
    for name in FAMILIES:
        paddle.seed(0)
        model = ppcls_ext.create_model(name, class_num=10)
        model.eval()
        directory = str(tmp_path_factory.mktemp(name) / "inference")
        resize = [{"ResizeImage": {"size": [64, 64]}}]
        export_inference_model(model, directory, inference_config(name, resize + NORMALIZE, 3, [f"c{i}" for i in range(10)],
                                                                  [3, 64, 64], softmax=True))
        result[name] = (directory, model)
    return result


def reference(model, batch):
    with paddle.no_grad():
        return paddle.nn.functional.softmax(model(paddle.to_tensor(batch)), axis=-1).numpy()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("backend", ["paddle-cpu", "paddle-cpu-onednn", "onnxruntime"])
def test_backends_reproduce_the_dygraph_model(exports, name, backend):
    directory, model = exports[name]
    if backend == "onnxruntime":
        predictor = OnnxPredictor(directory, threads=2)
    else:
        predictor = PaddlePredictor(directory, InferenceOptions(enable_mkldnn=backend.endswith("onednn"), cpu_threads=2))
    assert predictor.name == backend
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 64, 64), (4, 3, 64, 64), (2, 3, 97, 131)]:  # batch 1, a larger batch, non-square non-nominal
        batch = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(predictor.run(batch), reference(model, batch), rtol=1e-4, atol=1e-6, err_msg=str(shape))


def test_onnx_export_installs_nothing_prints_no_failure_and_is_cached(exports, capfd):
    directory, _ = exports["MicroNet_M1"]
    before = sorted((d.metadata["Name"], d.version) for d in importlib.metadata.distributions())
    capfd.readouterr()
    path = export_onnx(directory, force=True)
    printed = "".join(capfd.readouterr())
    after = sorted((d.metadata["Name"], d.version) for d in importlib.metadata.distributions())
    assert before == after  # paddle2onnx's Polygraphy route would pip-install numpy 2 here
    # paddle2onnx's own onnxoptimizer step fails on every model ("pass eliminate_nop_cast  is unknown");
    # ours runs its passes correctly: no failure printed, weights stored as initializers
    assert "Fail to optimize" not in printed and "Skip onnxoptimizer" not in printed, printed
    graph = onnx.load(path).graph
    assert len(graph.initializer) > 0
    assert not [node.output[0] for node in graph.node if node.op_type == "Constant" and ".w_0" in node.output[0]]
    assert path == os.path.join(directory, "inference.onnx")
    mtime = os.path.getmtime(path)
    assert export_onnx(directory) == path and os.path.getmtime(path) == mtime  # kept while newer than the weights


class RecordingConfig:
    """Stands in for paddle.inference.Config and records the TensorRT calls made on it."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_legacy_tensorrt_gets_precision_dynamic_shapes_and_engine_cache(tmp_path):
    config = RecordingConfig()
    shapes = ((1, 3, 160, 160), (8, 3, 224, 224), (16, 3, 320, 320))
    trt = TensorRTOptions(precision="fp16", shapes=shapes, cache_dir=str(tmp_path / "engines"), max_batch_size=16, min_subgraph_size=5)
    paddle_backend.apply_legacy_tensorrt(config, trt, shape_file=None)
    calls = {name: (args, kwargs) for name, args, kwargs in config.calls}
    engine = calls["enable_tensorrt_engine"][1]
    assert engine["precision_mode"] == paddle.inference.Config.Precision.Half
    assert (engine["max_batch_size"], engine["min_subgraph_size"], engine["use_static"], engine["use_calib_mode"]) == (16, 5, True, False)
    assert calls["set_optim_cache_dir"][0] == (str(tmp_path / "engines"),)
    assert calls["set_trt_dynamic_shape_info"][0] == ({"x": [1, 3, 160, 160]}, {"x": [16, 3, 320, 320]}, {"x": [8, 3, 224, 224]})
    collected = RecordingConfig()
    paddle_backend.apply_legacy_tensorrt(collected, TensorRTOptions(precision="int8", calibration=True), shape_file="s.pbtxt")
    names = [name for name, _, _ in collected.calls]
    assert names == ["enable_tensorrt_engine", "enable_tuned_tensorrt_dynamic_shape"]
    assert collected.calls[0][2]["precision_mode"] == paddle.inference.Config.Precision.Int8 and collected.calls[0][2]["use_calib_mode"]


@pytest.fixture
def fake_paddle_tensorrt(monkeypatch):
    """paddle.tensorrt (absent from CPU builds) replaced by a recorder whose convert writes a model."""
    record = {"inputs": [], "configs": [], "converted": []}
    module = types.ModuleType("paddle.tensorrt.export")

    class Input:
        def __init__(self, **kwargs):
            record["inputs"].append(kwargs)

    class TensorRTConfig:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)
            record["configs"].append(kwargs)

    def convert(model_path, config):
        os.makedirs(config.save_model_dir)
        for name in ("inference.json", "inference.pdiparams"):
            open(os.path.join(config.save_model_dir, name), "w").close()
        record["converted"].append(model_path)

    module.Input, module.TensorRTConfig, module.convert = Input, TensorRTConfig, convert
    module.PrecisionMode = {"FP32": "FP32", "FP16": "FP16", "INT8": "INT8"}  # indexed by name like the Enum
    monkeypatch.setitem(sys.modules, "paddle.tensorrt", types.ModuleType("paddle.tensorrt"))
    monkeypatch.setitem(sys.modules, "paddle.tensorrt.export", module)
    monkeypatch.setattr(paddle_backend, "require_tensorrt", lambda: None)
    return record


def test_pir_tensorrt_conversion_with_explicit_shapes_is_cached(exports, tmp_path, fake_paddle_tensorrt):
    directory, _ = exports["EfficientNetB0"]
    shapes = ((1, 3, 64, 64), (4, 3, 224, 224), (8, 3, 256, 256))
    trt = TensorRTOptions(precision="fp16", shapes=shapes, cache_dir=str(tmp_path / "trt"), min_subgraph_size=7)
    first = paddle_backend.convert_for_tensorrt(directory, trt, warmup=lambda: pytest.fail("explicit shapes need no warm-up"))
    assert fake_paddle_tensorrt["inputs"] == [{"min_input_shape": shapes[0], "optim_input_shape": shapes[1],
                                               "max_input_shape": shapes[2], "name": "x"}]
    config = fake_paddle_tensorrt["configs"][0]
    assert (config["precision_mode"], config["min_subgraph_size"], config["workspace_size"]) == ("FP16", 7, 1 << 30)
    assert fake_paddle_tensorrt["converted"] == [os.path.join(directory, "inference")]
    assert first.startswith(str(tmp_path / "trt")) and os.path.isfile(os.path.join(first, "inference.json"))
    second = paddle_backend.convert_for_tensorrt(directory, trt, warmup=None)
    assert second == first and len(fake_paddle_tensorrt["converted"]) == 1  # the second start reuses the engines
    other = paddle_backend.convert_for_tensorrt(directory, TensorRTOptions(precision="fp32", shapes=shapes, cache_dir=str(tmp_path / "trt")), None)
    assert other != first and len(fake_paddle_tensorrt["converted"]) == 2


def test_pir_tensorrt_collects_shapes_from_warmup_batches(exports, tmp_path, fake_paddle_tensorrt):
    directory, _ = exports["MicroNet_M1"]
    warmup = paddle_backend.warmup_batches([96, 160], (3, 64, 64), max_batch=4)
    paddle_backend.convert_for_tensorrt(directory, TensorRTOptions(cache_dir=str(tmp_path / "trt"), max_batch_size=4), warmup)
    (data,) = [inputs["warmup_data"] for inputs in fake_paddle_tensorrt["inputs"]]
    assert [batch.shape for batch in data] == [(1, 3, 96, 96), (4, 3, 96, 96), (1, 3, 160, 160), (4, 3, 160, 160)]


def test_gpu_and_tensorrt_on_this_cpu_build_fail_with_one_clear_message(exports):
    directory, _ = exports["MicroNet_M1"]
    with pytest.raises(DeploymentError, match=r"use_gpu needs a CUDA build of PaddlePaddle \(paddlepaddle-gpu\); this is the CPU build"):
        PaddlePredictor(directory, InferenceOptions(device="gpu"))
    with pytest.raises(DeploymentError, match="use_gpu needs a CUDA build"):
        PaddlePredictor(directory, InferenceOptions(device="gpu", tensorrt=TensorRTOptions(precision="fp16")))
    real = paddle.inference.Config(os.path.join(directory, "inference.json"), os.path.join(directory, "inference.pdiparams"))
    with pytest.raises(DeploymentError, match="use_tensorrt needs a PaddlePaddle GPU build compiled with TensorRT"):
        paddle_backend.apply_legacy_tensorrt(real, TensorRTOptions(), shape_file=None)  # Paddle's PreconditionNotMet, translated


def test_deploy_keys_map_to_options():
    options = options_from_config({"use_gpu": True, "use_tensorrt": True, "use_fp16": True, "batch_size": 8, "gpu_mem": 4000,
                                   "tensorrt": {"shapes": [[1, 3, 224, 224], [8, 3, 224, 224], [8, 3, 288, 288]]}})
    assert (options.device, options.gpu_mem, options.tensorrt.precision, options.tensorrt.max_batch_size) == ("gpu", 4000, "fp16", 8)
    assert options.tensorrt.shapes[2] == (8, 3, 288, 288)
    assert options_from_config({"use_onnx": True}).backend == "onnxruntime"
    assert options_from_config({"cpu_num_threads": 3, "enable_mkldnn": False}).cpu_threads == 3
    cases = [({"use_tensorrt": True}, "use_tensorrt needs use_gpu"),
             ({"use_fp16": True}, "use_fp16 / use_int8 need use_tensorrt"),
             ({"backend": "tvm"}, r"backend must be one of \('paddle', 'onnxruntime', 'auto'\)"),
             ({"use_gpu": True, "use_tensorrt": True, "tensorrt": {"precision": "fp8"}}, "TensorRT precision must be one of"),
             ({"use_gpu": True, "use_tensorrt": True, "tensorrt": {"shapes": [[8, 3, 224, 224], [1, 3, 224, 224], [8, 3, 224, 224]]}},
              "min <= opt <= max"),
             ({"use_gpu": True, "use_tensorrt": True, "tensorrt": {"workspace": 1}}, "Global.tensorrt: .*workspace")]
    for glob, message in cases:
        with pytest.raises(ConfigError, match=message):
            options_from_config(glob)


def test_auto_backend_measures_and_keeps_the_fastest(exports, monkeypatch, engine_log):
    directory, _ = exports["MicroNet_M1"]
    speeds = {"paddle-cpu": 0.006, "paddle-cpu-onednn": 0.030, "onnxruntime": 0.001}
    asked = []

    def fake_timing(model_dir, options, names, shape):
        asked.append((model_dir, list(names), tuple(shape)))
        return {name: [speeds[name]] * 3 for name in names}

    monkeypatch.setattr(classifier_module, "time_candidates", fake_timing)
    chosen = classifier_module.create_predictor(directory, InferenceOptions(backend="auto", cpu_threads=2), (3, 64, 64))
    assert chosen.name == "onnxruntime"
    assert asked == [(directory, ["paddle-cpu", "paddle-cpu-onednn", "onnxruntime"], (1, 3, 64, 64))]
    assert "backend selection (batch (1, 3, 64, 64), median, each backend in its own process): onnxruntime 1.00 ms, " \
           "paddle-cpu 6.00 ms, paddle-cpu-onednn 30.00 ms -> using onnxruntime" in engine_log.text


def _digit_images(tmp_path):
    import cv2

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 255, (40 + 10 * i, 50, 3), dtype=np.uint8))
    return folder


def test_deployed_classifier_uses_the_exported_preprocessing(exports, tmp_path, engine_log):
    directory, model = exports["EfficientNetV2_B0"]
    folder = _digit_images(tmp_path)
    other = [{"ResizeImage": {"size": [32, 32]}}] + NORMALIZE
    deployed = DeployedClassifier(directory, InferenceOptions(cpu_threads=2), batch_size=2, preprocess=other)
    assert "differs from the export's inference.yml; using the export's" in engine_log.text
    results = list(deployed.classify(sorted(str(p) for p in folder.iterdir())))
    assert [len(r["class_ids"]) for r in results] == [3, 3, 3] and all(r["label_names"][0].startswith("c") for r in results)
    raw = (folder / "img1.png").read_bytes()
    expected = reference(model, deployed.transform(raw)[None])[0]
    assert deployed.transform(raw).shape == (3, 64, 64)  # the export's 64x64 resize, not the config's 32x32
    assert results[1]["class_ids"][0] == int(np.argmax(expected))
    assert results[1]["scores"][0] == pytest.approx(float(expected.max()), abs=1e-4)


def test_predict_cls_tool_prints_results_and_json(exports, tmp_path):
    directory, _ = exports["MicroNet_M1"]
    folder = _digit_images(tmp_path)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    command = [sys.executable, os.path.join(REPO, "deploy", "python", "predict_cls.py"), "-c",
               os.path.join(REPO, "deploy", "configs", "inference_cls.yaml"), "-o", f"Global.inference_model_dir={directory}",
               "-o", f"Global.infer_imgs={folder}", "-o", "Global.backend=onnxruntime", "--json", str(tmp_path / "out.json")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "out.json").read_text())
    assert [os.path.basename(r["file_name"]) for r in results] == ["broken.jpg", "img0.png", "img1.png", "img2.png"]
    assert "cannot decode image" in results[0]["error"] and len(results[1]["class_ids"]) == 5  # the config's topk
    assert sum(line.startswith("{'class_ids'") for line in proc.stdout.splitlines()) == 3
    missing = subprocess.run(command[:4] + ["-o", f"Global.inference_model_dir={tmp_path}/none"], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "holds no Paddle inference model" in missing.stderr and "Traceback" not in missing.stderr


def test_paddleclas_wheel_predictor_runs_our_export_and_agrees(exports, tmp_path):
    """PaddleClas 2.6's deploy/python/predict_cls.py, run as is. Its Predictor always calls
    Config.enable_memory_optim, which Paddle 3 rejects for every PIR export (PaddlePaddle/Paddle#75496,
    PaddleClas's own exports included); a sitecustomize shim turns only that call into a no-op."""
    import paddleclas

    directory, model = exports["EfficientNetB0"]
    folder = _digit_images(tmp_path)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import paddle.inference\n"
                                           "paddle.inference.Config.enable_memory_optim = lambda self, *args: None\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i} c{i}\n" for i in range(10)))
    deploy = os.path.join(os.path.dirname(paddleclas.__file__), "deploy")
    their_config = yaml.safe_load(open(os.path.join(deploy, "configs", "inference_cls.yaml")))
    their_config["Global"].update(infer_imgs=str(folder / "img2.png"), inference_model_dir=directory, use_gpu=False,
                                  enable_mkldnn=False, enable_benchmark=False, cpu_num_threads=2)
    their_config["PreProcess"]["transform_ops"] = [{"ResizeImage": {"size": [64, 64]}}] + NORMALIZE
    their_config["PostProcess"] = {"main_indicator": "Topk", "Topk": {"topk": 3, "class_id_map_file": str(labels)}}
    (tmp_path / "theirs.yaml").write_text(yaml.safe_dump(their_config))
    proc = subprocess.run([sys.executable, os.path.join(deploy, "python", "predict_cls.py"), "-c", str(tmp_path / "theirs.yaml")],
                          capture_output=True, text=True, timeout=300, cwd=deploy,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), REPO])))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("img2.png:"))
    their_ids = [int(v) for v in line.split("class id(s): [")[1].split("]")[0].split(",")]
    their_scores = [float(v) for v in line.split("score(s): [")[1].split("]")[0].split(",")]
    ours = next(iter(DeployedClassifier(directory, InferenceOptions(cpu_threads=2)).classify([str(folder / "img2.png")])))
    assert their_ids == ours["class_ids"]
    assert their_scores == pytest.approx(ours["scores"], abs=0.006)  # PaddleClas prints two decimals


def test_export_leaves_the_model_a_dygraph_layer(tmp_path):
    """paddle.jit.to_static replaces a layer's forward for good; the export converts a wrapper instead, so
    the caller's model keeps training and running eagerly after being exported."""
    model = ppcls_ext.create_model("MicroNet_M0")
    forward = model.forward
    for softmax in (False, True):
        export_inference_model(model, str(tmp_path / f"export_{softmax}"),
                               inference_config("MicroNet_M0", [], 5, None, [3, 64, 64], softmax), softmax=softmax)
        assert model.forward == forward, type(model.forward)
    model.train()
    loss = model(paddle.randn([2, 3, 64, 64])).sum()
    loss.backward()
    assert model.classifier.fc.weight.grad is not None
