"""Shared helpers: PaddleClas reference models and weight randomisation."""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import paddle
import pytest

from ppcls_ext.paddleclas_plugin import PADDLECLAS_MODULES
from ppcls_ext.registry import get_model_config


paddle.set_device("cpu")

# PaddleClas's variants -> the input size its class is padded for (every V2 variant as if for 384 px)
PADDLECLAS_VARIANTS = {name: 384 if name.startswith("EfficientNetV2") else get_model_config(name).eval_size
                       for name in PADDLECLAS_MODULES}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_START = os.path.join(REPO, "configs", "quick_start", "micronet_m0_digits.yaml")


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The demo dataset, with a small train subset (256 images) and an odd-sized val subset (37)."""
    from ppcls_ext.data.demo import make_digits_dataset

    root = tmp_path_factory.mktemp("digits")
    make_digits_dataset(str(root))
    for split, count in (("train", 256), ("val", 37)):
        lines = (root / f"{split}_list.txt").read_text().splitlines()
        step = len(lines) // count
        (root / f"{split}_small.txt").write_text("\n".join(lines[::step][:count]) + "\n")
    return root


def quick_overrides(digits, output, *overrides):
    """`-o` overrides that point the quick-start config at the small digits lists and write under `output`."""
    return [
        f"Global.output_dir={output}/output",
        f"Global.save_inference_dir={output}/inference",
        f"DataLoader.Train.dataset.image_root={digits}",
        f"DataLoader.Train.dataset.cls_label_path={digits}/train_small.txt",
        f"DataLoader.Eval.dataset.image_root={digits}",
        f"DataLoader.Eval.dataset.cls_label_path={digits}/val_small.txt",
        "DataLoader.Train.sampler.batch_size=32",
        f"Infer.PostProcess.class_id_map_file={digits}/label_list.txt",
        "Global.print_batch_step=4",
        *overrides,
    ]


def quick_config(digits, output, *overrides):
    """The quick-start config on the small digits lists, writing under `output`, with `-o` overrides."""
    from ppcls_ext.config import load_config

    return load_config(QUICK_START, quick_overrides(digits, output, *overrides))


def quick_argv(digits, output, *overrides):
    """The command line of a tool (`-c` quick-start config, `-o` ...) equivalent to `quick_config`."""
    return ["-c", QUICK_START] + [arg for option in quick_overrides(digits, output, *overrides) for arg in ("-o", option)]


@pytest.fixture
def engine_log(caplog):
    """Captures the engine's log (its logger does not propagate to the root logger that caplog watches)."""
    import logging

    engine_logger = logging.getLogger("ppcls_ext")
    engine_logger.addHandler(caplog.handler)
    yield caplog
    engine_logger.removeHandler(caplog.handler)


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory):
    """A 10-class MicroNet_M0 .pdparams with random weights of a realistic scale (outputs differ per image)."""
    import ppcls_ext
    from ppcls_ext.weights import randomize_

    paddle.seed(0)
    model = ppcls_ext.create_model("MicroNet_M0", class_num=10)
    randomize_(model.state_dict(), seed=3)
    path = tmp_path_factory.mktemp("weights") / "m0_digits.pdparams"
    paddle.save(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def digits_export(digits, digits_weights, tmp_path_factory):
    """The quick-start config's export (tools/export_model.py) of `digits_weights`."""
    from ppcls_ext.engine import Engine

    output = tmp_path_factory.mktemp("digits_export")
    return Engine(quick_config(digits, output, f"Global.pretrained_model={digits_weights}"), "export").export()


def run_main(main, argv, capsys):
    """(exit status, stdout, stderr) of an in-process CLI `main(argv)`, checking that it printed no
    traceback (an exception escaping `main`, what a user would see as one, fails the test by itself)."""
    from ppcls_ext.engine.log import init_logger

    init_logger()  # log to this test's captured stdout, as a fresh process would log to its own
    status = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    return status, out, err


@pytest.fixture(scope="module")
def graph():
    """tools/module_graph.py as a module: the one reader of the import graph, for the layering and docs tests."""
    spec = importlib.util.spec_from_file_location("module_graph", os.path.join(REPO, "tools", "module_graph.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
