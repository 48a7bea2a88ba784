"""TensorRT against Paddle's real contract, on this CPU build: Paddle's GPU/TensorRT side is replaced by
the stand-ins of paddle_trt_standins.py (signatures from the installed build, behaviour and messages from
Paddle's source; see that module's docstring for the lines followed), the rest is ours, run for real. Covers
the PIR route (what `convert` writes for a save prefix, the cache entry the predictor then loads, the GPU the
conversion runs on, the opt shape, int8 scales, crash safety), the legacy route (engine settings, shape ranges
for every TensorRT input, int8 calibration on real images at one shape), TensorRT's failures named as such,
the tensorrt wheel against libnvinfer, and the cache key (GPU, TensorRT, Paddle, shapes, calibration data)."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import paddle
import pytest
import yaml

import paddle_trt_standins as standins
from ppcls_ext.data.demo import photo_jpegs
from ppcls_ext.inference import classifier, paddle_backend, tensorrt, tensorrt_worker, trt_int8, trt_runtime
from ppcls_ext.inference.options import DeploymentError, InferenceOptions, TensorRTOptions, options_from_config
from ppcls_ext.inference.paddle_backend import PaddlePredictor, warmup_shapes
from ppcls_ext.inference.trt_runtime import TensorRTError
from ppcls_ext.data.calibration import calibration_batches, fingerprint

SHAPES = ((1, 3, 64, 64), (4, 3, 224, 224), (8, 3, 256, 256))
PREPROCESS = [{"ResizeImage": {"size": 64}},
              {"NormalizeImage": {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                  "order": ""}},
              {"ToCHWImage": None}]
#: a float program's ops, as a PIR export names them (dialect 1 is pd_op, "p" builtin.parameter)
FLOAT_OPS = ["p", "p", "1.data", "1.conv2d", "1.batch_norm_", "1.relu", "1.pool2d", "1.flatten", "1.matmul", "1.add",
             "1.fetch"]
QDQ_OPS = FLOAT_OPS[:3] + ["1.quantize_linear", "1.dequantize_linear"] + FLOAT_OPS[3:]


def fake_export(directory, kind="pir", ops=FLOAT_OPS):
    """An export's files: a program naming `ops` (PIR's JSON layout, or op types in the legacy file's bytes),
    the parameters, and inference.yml with its preprocessing (Paddle's side is stood in)."""
    os.makedirs(directory, exist_ok=True)
    if kind == "pir":
        program = {"base_code": {"magic": "pir", "version": 4},
                   "program": {"regions": [{"#": "region_0", "blocks": [{"#": "block_0", "ops": [{"#": op} for op in ops]}]}]}}
        with open(os.path.join(directory, "inference.json"), "w", encoding="utf-8") as f:
            json.dump(program, f)
    else:
        with open(os.path.join(directory, "inference.pdmodel"), "wb") as f:
            f.write(b"\n".join(op.split(".")[-1].encode() for op in ops))
    with open(os.path.join(directory, "inference.pdiparams"), "wb") as f:
        f.write(b"params")
    with open(os.path.join(directory, "inference.yml"), "w", encoding="utf-8") as f:
        yaml.safe_dump({"Global": {"image_shape": [3, 64, 64]}, "PreProcess": {"transform_ops": PREPROCESS},
                        "PostProcess": {"Topk": {"topk": 5}}}, f)
    return str(directory)


def photo_folder(directory, count, seed):
    """`count` real photographs (crops of scikit-learn's sample photos) as JPEG files."""
    os.makedirs(directory, exist_ok=True)
    for index, data in enumerate(photo_jpegs(count, size=(96, 72), seed=seed)):
        with open(os.path.join(directory, f"photo_{index:02d}.jpg"), "wb") as f:
            f.write(data)
    return str(directory)


@pytest.fixture
def gpu_build(monkeypatch, tmp_path):
    """A CUDA + TensorRT 8.6.1 build with GPUs (0: A100, 1: A100, 2: RTX 4090) and the tensorrt 8.6.1 wheel:
    stand-in Config and create_predictor, the worker process run in this one (with its environment) on a
    stand-in paddle.tensorrt.export. Returns the record of conversions, the device table and the build."""
    devices = {0: ("NVIDIA A100-SXM4-80GB", (8, 0)), 1: ("NVIDIA A100-SXM4-80GB", (8, 0)), 2: ("NVIDIA GeForce RTX 4090", (8, 9))}
    build = standins.GpuBuild()
    state = {"conversions": [], "commands": [], "fail": False, "build": build, "wheel": "8.6.1.6", "devices": devices}
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.inference, "get_trt_compile_version", build.compile_version)
    monkeypatch.setattr(paddle.inference, "get_trt_runtime_version", build.runtime_version)
    monkeypatch.setattr(trt_runtime, "wheel_version", lambda: state["wheel"])
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda device=None: devices[device][0])
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda device=None: devices[device][1])
    for module in (paddle_backend, tensorrt):
        monkeypatch.setattr(module, "Config", standins.StandInConfig)
        monkeypatch.setattr(module, "create_predictor", standins.StandInPredictor)
    monkeypatch.setattr(standins.StandInPredictor, "log", [])
    monkeypatch.setattr(standins.StandInPredictor, "build", build)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def run_worker(command, env):
        """The child process, in this one: its command line, its environment, its exit status and stderr."""
        state["commands"].append((command, env["CUDA_VISIBLE_DEVICES"]))
        assert command[:3] == [sys.executable, "-m", "ppcls_ext.inference.tensorrt_worker"]
        module = standins.tensorrt_export_module(state, fail_after_engines=state["fail"])
        with monkeypatch.context() as child:
            child.setattr(os, "environ", dict(env))
            child.setitem(sys.modules, "paddle.tensorrt", type(sys)("paddle.tensorrt"))
            child.setitem(sys.modules, "paddle.tensorrt.export", module)
            try:
                status, stderr = tensorrt_worker.main(command[3:]), ""
            except Exception as error:  # an uncaught exception: Python prints it and exits 1
                status, stderr = 1, f"Traceback (most recent call last):\n{type(error).__name__}: {error}\n"
        return subprocess.CompletedProcess(command, status, "", stderr)

    monkeypatch.setattr(tensorrt, "run_worker", run_worker)
    return state


def gpu_options(cache, gpu_id=0, **trt):
    return InferenceOptions(device="gpu", gpu_id=gpu_id, tensorrt=TensorRTOptions(cache_dir=str(cache), **trt))


def cache_entries(cache):
    return sorted(name for name in os.listdir(cache) if not name.endswith(".lock"))


def complete(cache, entry):
    with open(os.path.join(cache, entry, "complete.json"), encoding="utf-8") as f:
        return json.load(f)


# --- the stand-ins themselves: they refuse what Paddle refuses ---------------------------------------------


def test_standin_config_has_the_installed_builds_methods_and_signatures():
    config = standins.StandInConfig("m.json", "m.pdiparams")
    config.enable_use_gpu(100, 1)
    config.enable_tensorrt_engine(workspace_size=1 << 30, precision_mode=paddle.inference.Config.Precision.Half,
                                  use_static=True)
    assert config.called("enable_use_gpu") == [{"memory_pool_init_size_mb": 100, "device_id": 1}]
    with pytest.raises(AttributeError, match="has no method 'enable_tensorrt'"):
        config.enable_tensorrt(precision="fp16")
    with pytest.raises(TypeError, match="unknown keyword"):
        config.enable_tensorrt_engine(max_workspace_size=1 << 30)
    with pytest.raises(TypeError, match="wrong type"):
        config.enable_tensorrt_engine(precision_mode="fp16")
    with pytest.raises(TypeError):
        config.collect_shape_range_info(arg0="s.pbtxt")  # pybind's unnamed arguments are positional only
    with pytest.raises(TypeError):
        standins.StandInConfig("a", "b", "c")
    # the signature is the installed build's, read from its docstring
    names = [p for p, _, _ in standins.pybind_overloads("enable_tensorrt_engine")[0]]
    assert names[:6] == ["workspace_size", "max_batch_size", "min_subgraph_size", "precision_mode", "use_static",
                         "use_calib_mode"]


def test_standin_convert_writes_a_prefix_and_an_engine_directory_only_for_a_converted_subgraph(tmp_path):
    export = fake_export(tmp_path / "export")
    record = {"conversions": []}
    module = standins.tensorrt_export_module(record)
    inputs = [module.Input(min_input_shape=SHAPES[0], optim_input_shape=SHAPES[1], max_input_shape=SHAPES[2])]
    config = module.TensorRTConfig(inputs=inputs, save_model_dir=str(tmp_path / "out" / "model"))
    module.convert(os.path.join(export, "inference"), config)
    assert sorted(os.listdir(tmp_path / "out")) == ["model", "model.json", "model.pdiparams"]
    assert [n.rsplit("_", 2)[0] for n in os.listdir(tmp_path / "out" / "model")] == ["engine", "engine"]
    assert record["conversions"][0]["profile"] == tuple(list(s) for s in SHAPES)  # three feeds: sorted per dimension
    # no subgraph as large as min_subgraph_size: no engine, and no engine folder
    module.convert(os.path.join(export, "inference"), module.TensorRTConfig(inputs, 40, str(tmp_path / "few" / "model")))
    assert sorted(os.listdir(tmp_path / "few")) == ["model.json", "model.pdiparams"]
    with pytest.raises(ValueError, match="cannot be the same"):
        module.convert(os.path.join(export, "inference"), module.TensorRTConfig(inputs, save_model_dir=os.path.join(export, "inference")))
    with pytest.raises(TypeError):
        module.TensorRTConfig(inputs=inputs, save_dir="x")
    with pytest.raises(ValueError, match="min/max/optim shapes must be specified"):
        module.Input(min_input_shape=SHAPES[0])


def test_standins_fail_where_paddle_fails(tmp_path, capsys, monkeypatch):
    """int8 without scales (PIR converter and legacy engine), a missing libnvinfer, an engine that does not
    build or deserialize, an engine input without a shape range."""
    export = fake_export(tmp_path / "export")
    module = standins.tensorrt_export_module({"conversions": []})
    inputs = [module.Input(min_input_shape=SHAPES[0], optim_input_shape=SHAPES[1], max_input_shape=SHAPES[2])]
    with pytest.raises(AssertionError, match="Failed to build engine"):
        module.convert(os.path.join(export, "inference"), module.TensorRTConfig(
            inputs, save_model_dir=str(tmp_path / "int8" / "m"), precision_mode=module.PrecisionMode.INT8))
    assert "Calibration failure occurred with no scaling factors detected" in capsys.readouterr().err
    quantized = fake_export(tmp_path / "qdq", ops=QDQ_OPS)
    module.convert(os.path.join(quantized, "inference"), module.TensorRTConfig(
        inputs, save_model_dir=str(tmp_path / "int8q" / "m"), precision_mode=module.PrecisionMode.INT8))
    with pytest.raises(RuntimeError, match=r"third-party dynamic library \(libnvinfer.so\)"):
        standins.GpuBuild(libnvinfer=False).runtime_version()

    legacy = fake_export(tmp_path / "legacy", "legacy")

    def predictor(precision, calib=False, **faults):
        config = standins.StandInConfig(os.path.join(legacy, "inference.pdmodel"), os.path.join(legacy, "inference.pdiparams"))
        config.enable_tensorrt_engine(precision_mode=precision, use_static=True, use_calib_mode=calib)
        config.set_optim_cache_dir(str(tmp_path / "opt"))
        config.set_trt_dynamic_shape_info({"x": [1, 3, 64, 64]}, {"x": [8, 3, 256, 256]}, {"x": [4, 3, 224, 224]})
        monkeypatch.setattr(standins.StandInPredictor, "build", standins.GpuBuild(**faults))
        return standins.StandInPredictor(config)

    with pytest.raises(ValueError, match="some trt inputs dynamic shape info not set"):  # index_select_0.tmp_0 has none
        predictor(paddle.inference.Config.Precision.Half)
    monkeypatch.setattr(standins, "SUBGRAPH_INPUTS", {"x": standins.SUBGRAPH_INPUTS["x"]})  # a program of one engine
    with pytest.raises(SystemError, match="Build TensorRT cuda engine failed"):
        predictor(paddle.inference.Config.Precision.Int8)  # no scales, no calibration
    with pytest.raises(RuntimeError, match="libnvinfer"):
        predictor(paddle.inference.Config.Precision.Half, libnvinfer=False)
    with pytest.raises(SystemError, match="Build TensorRT cuda engine failed"):
        predictor(paddle.inference.Config.Precision.Half, build_fails=True)
    assert predictor(paddle.inference.Config.Precision.Half).mode == "engine"  # serialized now
    with pytest.raises(SystemError, match="when deserializing engine info"):
        predictor(paddle.inference.Config.Precision.Half, deserialize_fails=True)
    assert predictor(paddle.inference.Config.Precision.Int8, calib=True).mode == "calibrating"


# --- PIR route ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit-shapes", "warm-up"])
def test_pir_predictor_loads_the_converted_model_and_reuses_it(tmp_path, gpu_build, explicit):
    export = fake_export(tmp_path / "export")
    cache = tmp_path / "cache"
    options = gpu_options(cache, precision="fp16", shapes=SHAPES if explicit else None, min_subgraph_size=7)
    predictor = PaddlePredictor(export, options, warmup_shapes([96, 160], (3, 64, 64), 4), serving_shape=(2, 3, 128, 128))
    (conversion,) = gpu_build["conversions"]
    config = conversion["config"]
    assert conversion["model_path"] == os.path.join(export, "inference")
    (entry,) = cache_entries(cache)
    assert config.save_model_dir == str(cache / entry / "inference")  # a prefix inside the entry
    assert (config.precision_mode, config.min_subgraph_size, config.workspace_size) == (standins.PrecisionMode.FP16, 7, 1 << 30)
    (trt_input,) = config.inputs
    assert trt_input.warmup_data is None  # always explicit min/opt/max: the profile is exactly ours
    expected = SHAPES if explicit else ((1, 3, 96, 96), (2, 3, 128, 128), (4, 3, 160, 160))
    assert (trt_input.min_input_shape, trt_input.optim_input_shape, trt_input.max_input_shape) == expected
    assert conversion["profile"] == tuple(list(s) for s in expected)
    # the predictor runs the converted program, whose engine files are where it records them
    assert predictor.config.program_file == str(cache / entry / "inference.json")
    assert predictor.config.called("enable_use_gpu") == [{"memory_pool_init_size_mb": 8000, "device_id": 0}]
    assert predictor.config.called("enable_tensorrt_engine") == []  # the engines are in the program
    assert predictor.run(np.zeros((2, 3, 64, 64), np.float32)).shape == (2, 10)
    assert sorted(os.listdir(cache / entry)) == ["complete.json", "inference", "inference.json", "inference.pdiparams"]
    assert complete(cache, entry)["environment"]["compute_capability"] == "8.0"
    PaddlePredictor(export, options, warmup_shapes([96, 160], (3, 64, 64), 4), serving_shape=(2, 3, 128, 128))
    assert len(gpu_build["conversions"]) == 1  # the second start reuses the entry


def test_pir_opt_shape_is_the_served_batch_not_the_first_warmup_batch(tmp_path, gpu_build):
    """classifier.create_predictor serves batch 4 at 224 px; the warm-up sizes span 96..224 at batch 1 and 8.
    Paddle's collection of warm-up data would make opt the most frequent value per dimension (ties to an
    unstable sort): here (1, 3, 96, 96)."""
    export = fake_export(tmp_path / "export")
    options = gpu_options(tmp_path / "cache", collect_sizes=[96, 224], max_batch_size=8)
    classifier.create_predictor(export, options, (3, 224, 224), batch_size=4)
    (conversion,) = gpu_build["conversions"]
    assert conversion["profile"] == ([1, 3, 96, 96], [4, 3, 224, 224], [8, 3, 224, 224])


def test_pir_conversion_runs_on_the_requested_gpu_without_the_launchers_gpu_flag(tmp_path, gpu_build, monkeypatch):
    export = fake_export(tmp_path / "export")
    monkeypatch.setenv("FLAGS_selected_gpus", "3")  # as paddle.distributed.launch sets it for rank 3
    predictor = PaddlePredictor(export, gpu_options(tmp_path / "a", gpu_id=1, shapes=SHAPES))
    assert gpu_build["conversions"][-1]["visible_devices"] == "1"  # paddle.tensorrt's CUDAPlace(0) is GPU 1
    assert gpu_build["conversions"][-1]["selected_gpus"] is None  # not an index among GPUs the child cannot see
    assert predictor.config.called("enable_use_gpu")[0]["device_id"] == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")
    PaddlePredictor(export, gpu_options(tmp_path / "b", gpu_id=1, shapes=SHAPES))
    assert gpu_build["conversions"][-1]["visible_devices"] == "6"  # index 1 of what this process sees
    with pytest.raises(DeploymentError, match=r"gpu_id 2 is not among the GPUs this process sees \(CUDA_VISIBLE_DEVICES='4, 6'\)"):
        PaddlePredictor(export, gpu_options(tmp_path / "c", gpu_id=2, shapes=SHAPES))


def test_engine_cache_key_covers_gpu_architecture_tensorrt_wheel_and_paddle(tmp_path, gpu_build, monkeypatch):
    export = fake_export(tmp_path / "export")
    cache = tmp_path / "cache"

    def start(gpu_id=0):
        PaddlePredictor(export, gpu_options(cache, gpu_id=gpu_id, shapes=SHAPES))
        return len(gpu_build["conversions"])

    assert start() == 1 and start(gpu_id=1) == 1  # another A100: the same engines serve
    assert start(gpu_id=2) == 2  # compute capability 8.9
    gpu_build["devices"][0] = ("NVIDIA A30", (8, 0))
    assert start() == 3  # same capability, another GPU model
    gpu_build["build"].trt_version, gpu_build["wheel"] = (10, 0, 1), "10.0.1"
    assert start() == 4
    gpu_build["wheel"] = "10.0.1.6"  # another build of the same TensorRT release
    assert start() == 5
    monkeypatch.setattr(paddle, "__version__", "3.3.2")
    assert start() == 6
    assert start() == 6 and len(cache_entries(cache)) == 6


def test_pir_refuses_a_tensorrt_wheel_that_is_not_pads_libnvinfer(tmp_path, gpu_build):
    export = fake_export(tmp_path / "export")
    gpu_build["wheel"] = "10.0.1.6"
    with pytest.raises(TensorRTError, match=r"tensorrt Python package is 10.0.1.6 but Paddle loads libnvinfer 8.6.1: .*"
                                            r"install tensorrt==8.6.1"):
        PaddlePredictor(export, gpu_options(tmp_path / "cache", shapes=SHAPES))
    gpu_build["wheel"] = None
    with pytest.raises(TensorRTError, match=r"tensorrt Python package, which is not installed: pip install tensorrt==8.6.1"):
        PaddlePredictor(export, gpu_options(tmp_path / "cache", shapes=SHAPES))
    assert gpu_build["conversions"] == []
    assert trt_runtime.version_numbers("8.6.1.post12") == (8, 6, 1) and trt_runtime.version_numbers("10.0.1.6") == (10, 0, 1, 6)


def test_failed_interrupted_or_moved_conversion_is_rebuilt(tmp_path, gpu_build):
    export = fake_export(tmp_path / "export")
    cache = tmp_path / "cache"
    gpu_build["fail"] = True
    with pytest.raises(TensorRTError, match=r"TensorRT conversion of .*inference on GPU 0 failed: TensorRT could not "
                                            r"build an engine \(RuntimeError: Failed to build engine"):
        PaddlePredictor(export, gpu_options(cache, shapes=SHAPES))
    assert cache_entries(cache) == []
    gpu_build["fail"] = False
    PaddlePredictor(export, gpu_options(cache, shapes=SHAPES))
    (entry,) = cache_entries(cache)
    os.remove(cache / entry / "complete.json")  # as if killed before the conversion finished
    PaddlePredictor(export, gpu_options(cache, shapes=SHAPES))
    assert len(gpu_build["conversions"]) == 3 and os.path.isfile(cache / entry / "complete.json")
    os.rename(cache, tmp_path / "moved")  # the program's engine paths point into the old place
    PaddlePredictor(export, gpu_options(tmp_path / "moved", shapes=SHAPES)).run(np.zeros((1, 3, 64, 64), np.float32))
    assert len(gpu_build["conversions"]) == 4


def test_no_converted_subgraph_leaves_no_engine_folder_and_still_serves(tmp_path, gpu_build, caplog):
    export = fake_export(tmp_path / "export")
    cache = tmp_path / "cache"
    predictor = PaddlePredictor(export, gpu_options(cache, shapes=SHAPES, min_subgraph_size=50))
    (entry,) = cache_entries(cache)
    assert not os.path.exists(cache / entry / "inference")  # the converter made no engine folder
    assert complete(cache, entry)["engines"] == []
    assert "no subgraph of" in caplog.text and predictor.run(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 10)


def test_pir_int8_refuses_a_float_export_before_building_and_takes_a_quantized_one(tmp_path, gpu_build):
    export = fake_export(tmp_path / "export")
    with pytest.raises(DeploymentError, match="TensorRT needs the input shape range: set tensorrt.shapes"):
        PaddlePredictor(export, gpu_options(tmp_path / "cache"))  # no shapes, no warm-up shapes
    with pytest.raises(DeploymentError, match=r"TensorRT int8 needs quantization scales, and .*export is a float "
                                              r"export \(no quantize/dequantize ops\)"):
        PaddlePredictor(export, gpu_options(tmp_path / "cache", precision="int8", shapes=SHAPES))
    assert gpu_build["conversions"] == [] and not os.path.exists(tmp_path / "cache")
    with pytest.raises(DeploymentError, match="paddle.tensorrt.convert has no int8 calibrator"):
        PaddlePredictor(export, gpu_options(tmp_path / "cache", precision="int8", calibration=True,
                                            calibration_data=str(tmp_path), shapes=SHAPES))
    quantized = fake_export(tmp_path / "qdq", ops=QDQ_OPS)
    PaddlePredictor(quantized, gpu_options(tmp_path / "cache", precision="int8", shapes=SHAPES))
    assert gpu_build["conversions"][0]["config"].precision_mode == standins.PrecisionMode.INT8


class _Quantizable(paddle.nn.Layer):
    """A conv + linear net for paddle.quantization.PTQ (dy2static needs its source file: this one)."""

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3)
        self.fc = paddle.nn.Linear(4, 2)

    def forward(self, x):
        features = paddle.nn.functional.relu(self.conv(x))
        return self.fc(paddle.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1))


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # inside paddle.quantization's observers
def test_quantization_scales_are_found_in_a_real_qdq_export_and_not_in_a_float_one(tmp_path):
    """The scale detection on real PIR programs: Paddle's own PTQ (QDQ) export and the float export."""
    from paddle.quantization import PTQ, QuantConfig
    from paddle.quantization.observers import AbsmaxObserver
    from paddle.static import InputSpec

    paddle.seed(0)
    net, float_net = _Quantizable(), _Quantizable()
    net.eval()
    float_net.eval()
    spec = [InputSpec([2, 3, 16, 16], "float32", "x")]
    paddle.jit.save(paddle.jit.to_static(float_net, input_spec=spec, full_graph=True), str(tmp_path / "float" / "inference"))
    ptq = PTQ(QuantConfig(activation=AbsmaxObserver(), weight=AbsmaxObserver()))
    observed = ptq.quantize(net, inplace=False)
    observed(paddle.rand([2, 3, 16, 16]))
    converted = ptq.convert(observed, inplace=False)
    paddle.jit.save(paddle.jit.to_static(converted, input_spec=spec, full_graph=True), str(tmp_path / "qdq" / "inference"))
    assert trt_int8.has_quantization_scales(str(tmp_path / "qdq"))
    assert not trt_int8.has_quantization_scales(str(tmp_path / "float"))
    assert not trt_int8.has_quantization_scales(fake_export(tmp_path / "legacy", "legacy"))
    assert trt_int8.has_quantization_scales(fake_export(tmp_path / "legacy_q", "legacy", QDQ_OPS))


def test_conversion_child_on_this_cpu_build_fails_with_one_line(tmp_path, monkeypatch):
    """The real child process (no stand-in): this build has no paddle.tensorrt."""
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(paddle.inference, "get_trt_runtime_version", lambda: (8, 6, 1))
    monkeypatch.setattr(trt_runtime, "wheel_version", lambda: "8.6.1")
    export = fake_export(tmp_path / "export")
    with pytest.raises(DeploymentError, match=r"on GPU 0 failed: this PaddlePaddle has no paddle.tensorrt \(PIR TensorRT"):
        tensorrt.convert_for_tensorrt(export, TensorRTOptions(cache_dir=str(tmp_path / "cache"), shapes=SHAPES), 0, SHAPES)
    assert cache_entries(tmp_path / "cache") == []


# --- legacy route ------------------------------------------------------------------------------------------


def test_legacy_engine_settings_and_explicit_shapes_give_every_tensorrt_input_a_range(tmp_path, gpu_build):
    """The stand-in program's second engine starts at an intermediate tensor (index_select_0.tmp_0):
    `set_trt_dynamic_shape_info` for `x` alone fails there as Paddle does; the collected ranges cover it."""
    export = fake_export(tmp_path / "export", "legacy")
    cache = tmp_path / "cache"
    options = gpu_options(cache, gpu_id=1, precision="fp16", shapes=SHAPES, max_batch_size=16, min_subgraph_size=5)
    config = PaddlePredictor(export, options).config
    (entry,) = cache_entries(cache)
    assert config.program_file == os.path.join(export, "inference.pdmodel")
    assert [name for name, _ in config.calls][:1] == ["enable_use_gpu"]  # before enable_tensorrt_engine, as Paddle asks
    assert config.called("enable_use_gpu")[0]["device_id"] == 1
    assert config.called("enable_tensorrt_engine") == [{
        "workspace_size": 1 << 30, "max_batch_size": 16, "min_subgraph_size": 5,
        "precision_mode": paddle.inference.Config.Precision.Half, "use_static": True, "use_calib_mode": False}]
    assert config.called("set_optim_cache_dir") == [{"arg0": str(cache / entry)}]
    (tuned,) = config.called("enable_tuned_tensorrt_dynamic_shape")
    ranges = standins.read_shape_ranges(tuned["shape_range_info_path"])
    assert ranges["x"] == {"min_shape": list(SHAPES[0]), "max_shape": list(SHAPES[2]), "opt_shape": list(SHAPES[1])}
    assert ranges["index_select_0.tmp_0"]["opt_shape"] == [4, 16, 112, 112]
    collector, serving = standins.StandInPredictor.log
    assert collector["mode"] == "gpu" and serving["mode"] == "engine"


def test_legacy_shape_ranges_are_collected_again_when_sizes_or_batch_change(tmp_path, gpu_build):
    export = fake_export(tmp_path / "export", "legacy")
    cache = tmp_path / "cache"

    def start(sizes, max_batch):
        options = gpu_options(cache, collect_sizes=sizes, max_batch_size=max_batch)
        predictor = PaddlePredictor(export, options, warmup_shapes(sizes, (3, 64, 64), max_batch), serving_shape=(1, 3, 96, 96))
        (tuned,) = predictor.config.called("enable_tuned_tensorrt_dynamic_shape")
        return tuned["shape_range_info_path"], [log["runs"] for log in standins.StandInPredictor.log if log["runs"]]

    path, runs = start([96, 128], 4)
    assert os.path.basename(path) == "shape_range_info.pbtxt" and os.path.dirname(path).startswith(str(cache))
    assert sorted(set(runs[0])) == [(1, 3, 96, 96), (4, 3, 128, 128)]  # min, max and opt (the served shape)
    assert standins.read_shape_ranges(path)["x"]["max_shape"] == [4, 3, 128, 128]  # written by the destroyed collector
    assert start([96, 128], 4) == (path, runs)  # reused: no second collection
    other_size, runs = start([96, 160], 4)
    assert other_size != path and len(runs) == 2 and standins.read_shape_ranges(other_size)["x"]["max_shape"] == [4, 3, 160, 160]
    other_batch, runs = start([96, 128], 8)
    assert other_batch not in (path, other_size) and len(runs) == 3
    assert standins.read_shape_ranges(other_batch)["x"]["max_shape"] == [8, 3, 128, 128]


def test_legacy_int8_calibrates_on_real_images_at_the_opt_shape(tmp_path, gpu_build):
    """Calibration reads tensorrt.calibration_data with the export's preprocessing, every batch at the opt
    shape (Paddle sizes its buffers from the first), once per cache entry; the table it writes under the
    model folder moves into the entry, where the serving predictor reads it and builds int8."""
    export = fake_export(tmp_path / "export", "legacy")
    photos = photo_folder(tmp_path / "photos", 12, seed=0)
    cache = tmp_path / "cache"
    options = gpu_options(cache, precision="int8", calibration=True, calibration_data=photos, calibration_batches=3,
                          shapes=((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)))
    PaddlePredictor(export, options)
    collector, calibrating, serving = standins.StandInPredictor.log
    assert calibrating["mode"] == "calibrating" and calibrating["runs"] == [(4, 3, 64, 64)] * 3
    expected = calibration_batches(photos, batch_size=4, num_batches=3, image_shape=[3, 64, 64], transforms=PREPROCESS)
    for fed, image in zip(calibrating["fed"], expected):
        np.testing.assert_array_equal(fed, image)
    # the photos through an independent numpy pipeline: decode, resize, normalize, CHW
    first = cv2.cvtColor(cv2.imread(os.path.join(photos, "photo_00.jpg")), cv2.COLOR_BGR2RGB)
    first = (cv2.resize(first, (64, 64)).astype(np.float32) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(calibrating["fed"][0][0], first.transpose(2, 0, 1), atol=0.05)
    (entry,) = cache_entries(cache)
    tables = [name for name in os.listdir(cache / entry) if name.startswith("trt_calib_")]
    assert len(tables) == 1 and not os.path.exists(os.path.join(export, "_opt_cache"))
    table = json.loads(open(cache / entry / tables[0]).read())
    assert table["mismatched_batches"] == [] and table["shapes"] == [[4, 3, 64, 64]] * 3
    assert serving["mode"] == "int8" and json.loads(serving["table"]) == table  # the serving engine has the table
    record = complete(cache, entry)
    assert record["calibration"]["fingerprint"] == fingerprint(expected)
    assert record["calibration_tables"] == tables and record["environment"]["tensorrt_wheel"] == "8.6.1.6"
    PaddlePredictor(export, options)
    assert [log["mode"] for log in standins.StandInPredictor.log[3:]] == ["int8"]  # calibrated once per entry


def test_legacy_calibration_table_is_keyed_by_the_calibration_data(tmp_path, gpu_build):
    export = fake_export(tmp_path / "export", "legacy")
    cache = tmp_path / "cache"
    shapes = ((1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64))

    def start(folder):
        options = gpu_options(cache, precision="int8", calibration=True, calibration_data=folder,
                              calibration_batches=2, shapes=shapes)
        PaddlePredictor(export, options)
        return sum(log["mode"] == "calibrating" for log in standins.StandInPredictor.log)

    first, second = photo_folder(tmp_path / "a", 4, seed=0), photo_folder(tmp_path / "b", 4, seed=1)
    assert start(first) == 1 and start(first) == 1
    assert start(second) == 2 and len(cache_entries(cache)) == 2  # other images: another table
    gpu_build["wheel"] = "8.6.1.7"
    assert start(first) == 3  # the wheel is part of the key


def test_legacy_int8_without_calibration_needs_a_quantized_export_and_calibration_needs_data(tmp_path, gpu_build):
    export = fake_export(tmp_path / "export", "legacy")
    with pytest.raises(DeploymentError, match="TensorRT int8 needs quantization scales, and .* is a float export"):
        PaddlePredictor(export, gpu_options(tmp_path / "cache", precision="int8", shapes=SHAPES))
    assert standins.StandInPredictor.log == []
    quantized = fake_export(tmp_path / "qdq", "legacy", QDQ_OPS)
    assert PaddlePredictor(quantized, gpu_options(tmp_path / "cache", precision="int8", shapes=SHAPES)).name == "paddle-gpu-trt-int8"
    with pytest.raises(Exception, match="tensorrt.calibration needs tensorrt.calibration_data"):
        options_from_config({"use_gpu": True, "use_tensorrt": True, "use_int8": True, "tensorrt": {"calibration": True}})
    glob = {"use_gpu": True, "use_tensorrt": True, "use_int8": True,
            "tensorrt": {"calibration": True, "calibration_data": str(tmp_path), "calibration_batches": 2}}
    assert options_from_config(glob).tensorrt.calibration_batches == 2


# --- TensorRT's failures, named -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault, message", [
    ("libnvinfer", r"TensorRT's library libnvinfer cannot be loaded \(libnvinfer.so: cannot open shared object file: No "
                   r"such file or directory\): this Paddle was compiled with TensorRT 8.6.1"),
    ("build_fails", r"TensorRT could not build an engine \(\(Fatal\) Build TensorRT cuda engine failed!"),
    ("deserialize_fails", r"a cached TensorRT engine cannot be deserialized .* delete .*cache and start again"),
])
def test_tensorrt_failures_are_named_not_reported_as_a_damaged_export(tmp_path, gpu_build, fault, message):
    export = fake_export(tmp_path / "export", "legacy")
    options = gpu_options(tmp_path / "cache", precision="fp16", shapes=SHAPES)
    if fault == "deserialize_fails":
        classifier.load_predictor(export, options, (3, 64, 64), 1)  # builds and serializes the engine
    setattr(gpu_build["build"], fault, fault != "libnvinfer")
    with pytest.raises(TensorRTError, match=message) as raised:
        classifier.load_predictor(export, options, (3, 64, 64), 1)
    assert "damaged" not in str(raised.value)


def test_tensorrt_on_this_cpu_build_fails_with_one_clear_message(tmp_path):
    export = fake_export(tmp_path / "export", "legacy")
    with pytest.raises(DeploymentError, match=r"use_gpu needs a CUDA build of PaddlePaddle \(paddlepaddle-gpu\); this is the CPU build"):
        PaddlePredictor(export, gpu_options(tmp_path / "cache", precision="fp16", shapes=SHAPES))
    real = paddle.inference.Config(os.path.join(export, "inference.pdmodel"), os.path.join(export, "inference.pdiparams"))
    with pytest.raises(DeploymentError, match="use_tensorrt needs a PaddlePaddle GPU build compiled with TensorRT"):
        tensorrt.apply_legacy_tensorrt(real, TensorRTOptions(shapes=SHAPES), str(tmp_path), "s.pbtxt")  # PreconditionNotMet, translated
