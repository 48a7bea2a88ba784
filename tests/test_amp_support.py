"""AMP on a GPU without float16 (compute capability < 7.0): Paddle's `amp_decorate` returns the model
untouched there and auto_cast switches itself off, so O2 would silently train float32. The Engine's AMP
set-up refuses O2 and says O1 runs float32; the GPU's capability and name are stood in (this is a CPU build)."""
import paddle
import pytest

from conftest import quick_config
from ppcls_ext.config import ConfigError
from ppcls_ext.engine import Engine, amp_support


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA build with one GPU whose capability the test sets (`gpu["capability"] = (6, 1)`); tensors stay
    on the CPU (Paddle's set_device is not called through)."""
    state = {"capability": (8, 0), "name": "Tesla P100-PCIE-16GB"}
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(paddle.base.core, "get_cuda_device_count", lambda: 0, raising=False)  # paddle.seed's CUDA generators
    monkeypatch.setattr(paddle, "set_device", lambda device: None)
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda device=None: state["capability"])
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda device=None: state["name"])
    return state


def training_config(digits, tmp_path, level):
    config = quick_config(digits, tmp_path, "Global.device=gpu", "Global.epochs=1")
    config["AMP"] = {"level": level}
    return config


def test_o2_below_compute_capability_7_is_refused_by_the_engine(gpu, digits, tmp_path):
    gpu["capability"] = (6, 1)
    with pytest.raises(ConfigError, match=r"AMP.level O2 needs float16 support \(compute capability 7.0 or higher\); "
                                          r"Tesla P100-PCIE-16GB \(compute capability 6.1\) has none"):
        Engine(training_config(digits, tmp_path, "O2"), "train")


def test_o1_below_compute_capability_7_runs_float32_and_says_so(gpu, digits, tmp_path, engine_log):
    gpu["capability"] = (6, 0)
    engine = Engine(training_config(digits, tmp_path, "O1"), "train")
    assert engine.amp_level is None and engine.amp.scaling.scaler is None
    assert "has no float16 support (compute capability < 7.0); training in float32" in engine_log.text


def test_levels_that_run_are_left_alone(gpu):
    assert amp_support.supported_level("O2", "gpu") == "O2"  # capability 8.0
    gpu["capability"] = (7, 0)
    assert amp_support.supported_level("O1", "gpu") == "O1"
    gpu["capability"] = (5, 2)
    assert amp_support.supported_level("O2", "cpu") == "O2" and amp_support.supported_level(None, "gpu") is None
