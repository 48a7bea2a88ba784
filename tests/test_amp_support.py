"""AMP on a GPU without float16 (compute capability < 7.0): Paddle's `amp_decorate` returns the model
untouched there and auto_cast switches itself off, so O2 would silently train float32. The Engine's AMP
set-up refuses O2 and says O1 runs float32; the GPU's capability and name are stood in (this is a CPU build)."""
import logging

import paddle
import pytest

from ppcls_ext.config import ConfigError
from ppcls_ext.engine import amp_support
from ppcls_ext.engine.engine import Engine
from ppcls_ext.registry import create_model


@pytest.fixture
def gpu(monkeypatch):
    """A GPU whose capability the test sets: `gpu["capability"] = (6, 1)`."""
    state = {"capability": (8, 0), "name": "Tesla P100-PCIE-16GB"}
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda device=None: state["capability"])
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda device=None: state["name"])
    return state


def engine_at(level):
    """An Engine as far as `_setup_amp` reads it: training mode on a GPU, with a model and an optimizer."""
    engine = Engine.__new__(Engine)
    engine.config, engine.mode, engine.device, engine.eval_loader = {"AMP": {"level": level}}, "train", "gpu", None
    engine.model = create_model("MicroNet_M0", class_num=10)
    engine.optimizer = paddle.optimizer.Momentum(parameters=engine.model.parameters())
    return engine


def test_o2_below_compute_capability_7_is_refused_by_the_engine(gpu):
    gpu["capability"] = (6, 1)
    engine = engine_at("O2")
    with pytest.raises(ConfigError, match=r"AMP.level O2 needs float16 support \(compute capability 7.0 or higher\); "
                                          r"Tesla P100-PCIE-16GB \(compute capability 6.1\) has none"):
        engine._setup_amp()
    assert engine.model.parameters()[0].dtype == paddle.float32  # nothing was decorated


def test_o1_below_compute_capability_7_runs_float32_and_says_so(gpu, caplog):
    gpu["capability"] = (6, 0)
    logger = logging.getLogger("ppcls_ext")
    logger.addHandler(caplog.handler)
    try:
        engine = engine_at("O1")
        engine._setup_amp()
    finally:
        logger.removeHandler(caplog.handler)
    assert engine.amp_level is None and engine.scaler is None
    assert "has no float16 support (compute capability < 7.0); training in float32" in caplog.text


def test_levels_that_run_are_left_alone(gpu):
    assert amp_support.supported_level("O2", "gpu") == "O2"  # capability 8.0
    gpu["capability"] = (7, 0)
    assert amp_support.supported_level("O1", "gpu") == "O1"
    gpu["capability"] = (5, 2)
    assert amp_support.supported_level("O2", "cpu") == "O2" and amp_support.supported_level(None, "gpu") is None
