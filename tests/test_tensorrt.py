"""TensorRT against Paddle's real contract, on this CPU build: Paddle's GPU/TensorRT side is replaced by
the stand-ins of paddle_trt_standins.py (signatures from the installed build, file effects from Paddle's
source; see that module's docstring for the lines followed), the rest is ours, run for real. Covers the
PIR route (what `convert` writes for a save prefix, the cache entry the predictor then loads, the GPU the
conversion runs on, crash safety), the legacy route (engine settings, shape collection and int8
calibration flushed by destroying the predictor) and the cache key (GPU, TensorRT, Paddle, shapes)."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

import paddle_trt_standins as standins
from ppcls_ext.inference import paddle_backend, tensorrt, tensorrt_worker
from ppcls_ext.inference.options import DeploymentError, InferenceOptions, TensorRTOptions
from ppcls_ext.inference.paddle_backend import PaddlePredictor, warmup_batches

SHAPES = ((1, 3, 64, 64), (4, 3, 224, 224), (8, 3, 256, 256))


def fake_export(directory, kind="pir"):
    """An export's files (Paddle's side is stood in, so their content is not read)."""
    os.makedirs(directory, exist_ok=True)
    program = "inference.json" if kind == "pir" else "inference.pdmodel"
    for name in (program, "inference.pdiparams"):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(b"model")
    return str(directory)


@pytest.fixture
def gpu_build(monkeypatch, tmp_path):
    """A CUDA + TensorRT 8.6.1 build with GPUs (0: A100, 1: A100, 2: RTX 4090): stand-in Config and
    create_predictor, the worker process run in this one (with its environment) on a stand-in
    paddle.tensorrt.export. Returns the record of conversions and the device table to alter."""
    devices = {0: ("NVIDIA A100-SXM4-80GB", (8, 0)), 1: ("NVIDIA A100-SXM4-80GB", (8, 0)), 2: ("NVIDIA GeForce RTX 4090", (8, 9))}
    state = {"conversions": [], "commands": [], "trt": (8, 6, 1), "fail": False}
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.inference, "get_trt_compile_version", lambda: state["trt"])
    monkeypatch.setattr(paddle.inference, "get_trt_runtime_version", lambda: state["trt"])
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda device=None: devices[device][0])
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda device=None: devices[device][1])
    for module in (paddle_backend, tensorrt):
        monkeypatch.setattr(module, "Config", standins.StandInConfig)
        monkeypatch.setattr(module, "create_predictor", standins.StandInPredictor)
    monkeypatch.setattr(standins.StandInPredictor, "log", [])
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
    state["devices"] = devices
    return state


def gpu_options(cache, gpu_id=0, **trt):
    return InferenceOptions(device="gpu", gpu_id=gpu_id, tensorrt=TensorRTOptions(cache_dir=str(cache), **trt))


def cache_entries(cache):
    return sorted(name for name in os.listdir(cache) if not name.endswith(".lock"))


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


def test_standin_convert_writes_a_prefix_and_an_engine_directory(tmp_path):
    export = fake_export(tmp_path / "export")
    record = {"conversions": []}
    module = standins.tensorrt_export_module(record)
    inputs = [module.Input(min_input_shape=SHAPES[0], optim_input_shape=SHAPES[1], max_input_shape=SHAPES[2])]
    config = module.TensorRTConfig(inputs=inputs, save_model_dir=str(tmp_path / "out" / "model"))
    module.convert(os.path.join(export, "inference"), config)
    assert sorted(os.listdir(tmp_path / "out")) == ["model", "model.json", "model.pdiparams"]
    assert [n.rsplit("_", 2)[0] for n in os.listdir(tmp_path / "out" / "model")] == ["engine", "engine"]
    with pytest.raises(ValueError, match="cannot be the same"):
        module.convert(os.path.join(export, "inference"), module.TensorRTConfig(inputs, save_model_dir=os.path.join(export, "inference")))
    with pytest.raises(TypeError):
        module.TensorRTConfig(inputs=inputs, save_dir="x")
    with pytest.raises(ValueError, match="min/max/optim shapes must be specified"):
        module.Input(min_input_shape=SHAPES[0])


# --- PIR route ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shapes", [SHAPES, None], ids=["explicit-shapes", "warm-up"])
def test_pir_predictor_loads_the_converted_model_and_reuses_it(tmp_path, gpu_build, shapes):
    export = fake_export(tmp_path / "export")
    cache = tmp_path / "cache"
    warmup = warmup_batches([96, 160], (3, 64, 64), max_batch=4)
    predictor = PaddlePredictor(export, gpu_options(cache, precision="fp16", shapes=shapes, min_subgraph_size=7), warmup)
    (conversion,) = gpu_build["conversions"]
    config = conversion["config"]
    assert conversion["model_path"] == os.path.join(export, "inference")
    (entry,) = cache_entries(cache)
    assert config.save_model_dir == str(cache / entry / "inference")  # a prefix inside the entry
    assert (config.precision_mode, config.min_subgraph_size, config.workspace_size) == (standins.PrecisionMode.FP16, 7, 1 << 30)
    (trt_input,) = config.inputs
    if shapes:
        assert (trt_input.min_input_shape, trt_input.optim_input_shape, trt_input.max_input_shape) == SHAPES
    else:
        assert [b.shape for b in trt_input.warmup_data] == [(1, 3, 96, 96), (4, 3, 96, 96), (1, 3, 160, 160), (4, 3, 160, 160)]
    # the predictor runs the converted program, whose engine files are where it records them
    assert predictor.config.program_file == str(cache / entry / "inference.json")
    assert predictor.config.called("enable_use_gpu") == [{"memory_pool_init_size_mb": 8000, "device_id": 0}]
    assert predictor.config.called("enable_tensorrt_engine") == []  # the engines are in the program
    assert predictor.run(np.zeros((2, 3, 64, 64), np.float32)).shape == (2, 10)
    assert sorted(os.listdir(cache / entry)) == ["complete.json", "inference", "inference.json", "inference.pdiparams"]
    assert json.load(open(cache / entry / "complete.json"))["environment"]["compute_capability"] == "8.0"
    PaddlePredictor(export, gpu_options(cache, precision="fp16", shapes=shapes, min_subgraph_size=7), warmup)
    assert len(gpu_build["conversions"]) == 1  # the second start reuses the entry


def test_pir_conversion_runs_on_the_requested_gpu(tmp_path, gpu_build, monkeypatch):
    export = fake_export(tmp_path / "export")
    predictor = PaddlePredictor(export, gpu_options(tmp_path / "a", gpu_id=1, shapes=SHAPES))
    assert gpu_build["conversions"][-1]["visible_devices"] == "1"  # paddle.tensorrt's CUDAPlace(0) is GPU 1
    assert predictor.config.called("enable_use_gpu")[0]["device_id"] == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")
    PaddlePredictor(export, gpu_options(tmp_path / "b", gpu_id=1, shapes=SHAPES))
    assert gpu_build["conversions"][-1]["visible_devices"] == "6"  # index 1 of what this process sees
    with pytest.raises(DeploymentError, match=r"gpu_id 2 is not among the GPUs this process sees \(CUDA_VISIBLE_DEVICES='4, 6'\)"):
        PaddlePredictor(export, gpu_options(tmp_path / "c", gpu_id=2, shapes=SHAPES))


def test_engine_cache_key_covers_gpu_architecture_tensorrt_and_paddle(tmp_path, gpu_build, monkeypatch):
    export = fake_export(tmp_path / "export")
    cache = tmp_path / "cache"

    def start(gpu_id=0):
        PaddlePredictor(export, gpu_options(cache, gpu_id=gpu_id, shapes=SHAPES))
        return len(gpu_build["conversions"])

    assert start() == 1 and start(gpu_id=1) == 1  # another A100: the same engines serve
    assert start(gpu_id=2) == 2  # compute capability 8.9
    gpu_build["devices"][0] = ("NVIDIA A30", (8, 0))
    assert start() == 3  # same capability, another GPU model
    gpu_build["trt"] = (10, 0, 1)
    assert start() == 4
    monkeypatch.setattr(paddle, "__version__", "3.3.2")
    assert start() == 5
    assert start() == 5 and len(cache_entries(cache)) == 5


def test_failed_interrupted_or_moved_conversion_is_rebuilt(tmp_path, gpu_build):
    export = fake_export(tmp_path / "export")
    cache = tmp_path / "cache"
    gpu_build["fail"] = True
    with pytest.raises(DeploymentError, match=r"TensorRT conversion of .*inference on GPU 0 failed: RuntimeError: Failed to build engine"):
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


def test_pir_without_shapes_or_with_calibration_is_refused(tmp_path, gpu_build):
    export = fake_export(tmp_path / "export")
    with pytest.raises(DeploymentError, match="TensorRT needs the input shape range: set tensorrt.shapes"):
        PaddlePredictor(export, gpu_options(tmp_path / "cache"))
    with pytest.raises(DeploymentError, match="paddle.tensorrt.convert has no int8 calibrator"):
        PaddlePredictor(export, gpu_options(tmp_path / "cache", precision="int8", calibration=True, shapes=SHAPES))
    assert gpu_build["conversions"] == []


def test_conversion_child_on_this_cpu_build_fails_with_one_line(tmp_path, monkeypatch):
    """The real child process (no stand-in): this build has no paddle.tensorrt."""
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda device=None: (8, 0))
    export = fake_export(tmp_path / "export")
    with pytest.raises(DeploymentError, match=r"on GPU 0 failed: this PaddlePaddle has no paddle.tensorrt \(PIR TensorRT"):
        tensorrt.convert_for_tensorrt(export, TensorRTOptions(cache_dir=str(tmp_path / "cache"), shapes=SHAPES), 0, None)
    assert cache_entries(tmp_path / "cache") == []


# --- legacy route ------------------------------------------------------------------------------------------


def test_legacy_engine_settings_and_explicit_shapes(tmp_path, gpu_build):
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
    assert config.called("set_trt_dynamic_shape_info") == [{
        "min_input_shape": {"x": list(SHAPES[0])}, "max_input_shape": {"x": list(SHAPES[2])},
        "optim_input_shape": {"x": list(SHAPES[1])}}]
    assert len(standins.StandInPredictor.log) == 1  # no collection run with explicit shapes


def test_legacy_shape_ranges_are_collected_again_when_sizes_or_batch_change(tmp_path, gpu_build):
    export = fake_export(tmp_path / "export", "legacy")
    cache = tmp_path / "cache"

    def start(sizes, max_batch):
        options = gpu_options(cache, collect_sizes=sizes, max_batch_size=max_batch)
        predictor = PaddlePredictor(export, options, warmup_batches(sizes, (3, 64, 64), max_batch))
        (tuned,) = predictor.config.called("enable_tuned_tensorrt_dynamic_shape")
        return tuned["shape_range_info_path"], [log["runs"] for log in standins.StandInPredictor.log if log["runs"]]

    path, runs = start([96, 128], 4)
    assert os.path.basename(path) == "shape_range_info.pbtxt" and os.path.dirname(path).startswith(str(cache))
    assert runs == [[(1, 3, 96, 96), (4, 3, 96, 96), (1, 3, 128, 128), (4, 3, 128, 128)]]
    assert "max_shape: [4, 3, 128, 128]" in open(path).read()  # written by the destroyed collector
    assert start([96, 128], 4) == (path, runs)  # reused: no second collection
    other_size, runs = start([96, 160], 4)
    assert other_size != path and len(runs) == 2 and "max_shape: [4, 3, 160, 160]" in open(other_size).read()
    other_batch, runs = start([96, 128], 8)
    assert other_batch not in (path, other_size) and len(runs) == 3 and "max_shape: [8, 3, 128, 128]" in open(other_batch).read()


def test_legacy_int8_calibration_runs_once_before_the_serving_predictor(tmp_path, gpu_build):
    export = fake_export(tmp_path / "export", "legacy")
    options = gpu_options(tmp_path / "cache", precision="int8", calibration=True, shapes=SHAPES)
    warmup = warmup_batches([64], (3, 64, 64), 4)
    PaddlePredictor(export, options, warmup)
    calibration, serving = standins.StandInPredictor.log
    for log in (calibration, serving):
        (engine,) = log["config"].called("enable_tensorrt_engine")
        assert engine["precision_mode"] == paddle.inference.Config.Precision.Int8 and engine["use_calib_mode"] is True
    assert calibration["runs"] == [(1, 3, 64, 64), (4, 3, 64, 64)] and serving["runs"] == []
    PaddlePredictor(export, options, warmup)
    assert len(standins.StandInPredictor.log) == 3  # calibrated once per cache entry


def test_tensorrt_on_this_cpu_build_fails_with_one_clear_message(tmp_path):
    export = fake_export(tmp_path / "export", "legacy")
    with pytest.raises(DeploymentError, match=r"use_gpu needs a CUDA build of PaddlePaddle \(paddlepaddle-gpu\); this is the CPU build"):
        PaddlePredictor(export, gpu_options(tmp_path / "cache", precision="fp16", shapes=SHAPES))
    real = paddle.inference.Config(os.path.join(export, "inference.pdmodel"), os.path.join(export, "inference.pdiparams"))
    with pytest.raises(DeploymentError, match="use_tensorrt needs a PaddlePaddle GPU build compiled with TensorRT"):
        tensorrt.apply_legacy_tensorrt(real, TensorRTOptions(shapes=SHAPES), str(tmp_path), None)  # PreconditionNotMet, translated
