"""MicroNet's deploy form (`ppcls_ext.models.micronet_deploy`, what tools/export_model.py exports) computes the
training form's outputs for every variant, on random and on trained weights, at several batch and image
sizes; its exports (both program formats, and ONNX) keep every channel count static and stay small after ONNX
Runtime's optimisations; and Paddle Inference's oneDNN kernels run it without their reference fallback."""
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import paddle
import paddle.nn.functional as F
import pytest

import ppcls_ext
from conftest import REPO
from ppcls_ext.serving.export import export_inference_model
from ppcls_ext.inference import InferenceOptions, PaddlePredictor, export_onnx
from ppcls_ext.inference.onnx_backend import GRAPH_OPTIMIZATION_LEVEL
from ppcls_ext.models.deploy import deploy_form
from ppcls_ext.models.micronet_deploy import MicroNetDeploy
from ppcls_ext.weights import randomize_

VARIANTS = ("MicroNet_M0", "MicroNet_M1", "MicroNet_M2", "MicroNet_M3")
#: the issue's bound on the difference between the deploy form's outputs and the training form's
TOLERANCE = 1e-5
#: nodes of the graph ONNX Runtime runs after its optimisations (at 224 px; the old export had 381 for M0,
#: 376 for M3: every Shape/Slice/Concat chain and two of every three shuffle gathers are gone)
OPTIMIZED_NODE_CEILING = {"MicroNet_M0": 290, "MicroNet_M1": 290, "MicroNet_M2": 390, "MicroNet_M3": 290}
#: operators the exported graph must not contain: dynamic-shape chains and do-nothing nodes
FORBIDDEN_OPS = {"Shape", "Slice", "Concat", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Expand", "ConstantOfShape"}


def random_model(name: str, seed: int = 3):
    """A MicroNet with random weights of a realistic scale (BN statistics away from 0/1)."""
    model = ppcls_ext.create_model(name)
    randomize_(model.state_dict(), seed=seed)
    model.eval()
    return model


def trained_model(name: str, steps: int = 3):
    """A MicroNet after a few Momentum steps on random images: weights moved by gradients, batch-norm
    statistics gathered from batches."""
    paddle.seed(0)
    model = ppcls_ext.create_model(name, class_num=10)
    rng = np.random.default_rng(7)
    optimizer = paddle.optimizer.Momentum(learning_rate=0.2, momentum=0.9, parameters=model.parameters())
    model.train()
    for _ in range(steps):
        images = paddle.to_tensor(rng.standard_normal((8, 3, 32, 32)).astype("float32"))
        labels = paddle.to_tensor(rng.integers(0, 10, (8, 1)))
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.clear_grad()
    model.eval()
    return model


def outputs(model, batch: np.ndarray) -> np.ndarray:
    with paddle.no_grad():
        return model(paddle.to_tensor(batch)).numpy()


@pytest.mark.parametrize("name", VARIANTS)
def test_outputs_equal_the_training_form_on_random_and_trained_weights(name, rng):
    for model, shapes in ((random_model(name), [(1, 3, 64, 64), (3, 3, 45, 33)]),
                          (trained_model(name), [(2, 3, 57, 57)])):
        deployed = deploy_form(model)
        assert isinstance(deployed, MicroNetDeploy) and not deployed.training
        for shape in shapes:
            batch = rng.standard_normal(shape).astype("float32")
            expected, got = outputs(model, batch), outputs(deployed, batch)
            assert got.shape == expected.shape
            assert np.ptp(expected) > 1e-2  # outputs that tell models apart
            assert np.abs(got - expected).max() <= TOLERANCE, (shape, np.abs(got - expected).max())


def test_the_model_it_was_made_from_is_left_alone_and_other_forms_fall_back(rng):
    model = random_model("MicroNet_M0")
    model.train()
    before = {key: value.numpy().copy() for key, value in model.state_dict().items()}
    deploy_form(model)
    assert model.training
    assert all(np.array_equal(value.numpy(), before[key]) for key, value in model.state_dict().items())
    # what the deploy form cannot express keeps the batch-norm folding: channels-last, backbone taps
    nhwc = ppcls_ext.create_model("MicroNet_M0", data_format="NHWC")
    randomize_(nhwc.state_dict(), seed=3)
    tapped = random_model("MicroNet_M0")
    tapped.update_res(["stages[2]"])
    for other in (nhwc, tapped):
        other.eval()
        folded = deploy_form(other)
        assert not isinstance(folded, MicroNetDeploy)
        batch = paddle.to_tensor(rng.standard_normal((1, 3, 64, 64)).astype("float32"))
        with paddle.no_grad():
            expected, got = other(batch), folded(batch)
        if isinstance(expected, dict):
            expected, got = expected["stages[2]"], got["stages[2]"]
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def export(model, directory: str, export_format: str = "pir") -> str:
    """As tools/export_model.py does: the deploy form, logits out."""
    return export_inference_model(deploy_form(model), directory, {"Global": {}}, softmax=False,
                                  export_format=export_format)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (training-form model, its PIR export with inference.onnx)."""
    result = {}
    for name in VARIANTS:
        model = random_model(name)
        directory = export(model, str(tmp_path_factory.mktemp(name) / "inference"))
        export_onnx(directory)
        result[name] = (model, directory)
    return result


def optimized_graph(onnx_path: str, tmp_path) -> onnx.GraphProto:
    """The graph ONNX Runtime runs: the export after the optimisations our ONNX predictor asks for."""
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVEL)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath).graph


@pytest.mark.parametrize("name", VARIANTS)
def test_onnx_export_has_static_channel_counts_few_nodes_and_the_same_outputs(name, exports, tmp_path, rng):
    model, directory = exports[name]
    onnx_path = os.path.join(directory, "inference.onnx")
    graph = onnx.load(onnx_path).graph
    assert not {node.op_type for node in graph.node} & FORBIDDEN_OPS
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
    data_reshapes = [node for node in graph.node if node.op_type == "Reshape" and node.input[0] not in initializers]
    assert data_reshapes
    for node in data_reshapes:  # a constant target shape: only the batch size is left to infer
        shape = initializers[node.input[1]]
        assert (shape[1:] > 0).all(), (node.name, shape)
    optimized = optimized_graph(onnx_path, tmp_path)
    assert len(optimized.node) <= OPTIMIZED_NODE_CEILING[name], len(optimized.node)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    batch = rng.standard_normal((2, 3, 80, 64)).astype("float32")
    got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    assert np.abs(got - outputs(model, batch)).max() <= TOLERANCE


def test_legacy_program_gives_the_training_form_outputs_with_and_without_onednn(tmp_path, rng):
    model = random_model("MicroNet_M3")  # residual blocks, two-branch Shift-Max, the widest shifts
    directory = export(model, str(tmp_path / "inference"), export_format="legacy")
    assert os.path.isfile(os.path.join(directory, "inference.pdmodel"))
    batch = rng.standard_normal((2, 3, 64, 72)).astype("float32")
    expected = outputs(model, batch)
    for onednn in (False, True):
        got = PaddlePredictor(directory, InferenceOptions(cpu_threads=1, enable_mkldnn=onednn)).run(batch)
        assert np.abs(got - expected).max() <= TOLERANCE, onednn


ONEDNN_RUN = """
import sys
import numpy as np
from ppcls_ext.inference import InferenceOptions, PaddlePredictor
predictor = PaddlePredictor(sys.argv[1], InferenceOptions(cpu_threads=1, enable_mkldnn=True))
predictor.run(np.zeros((1, 3, 64, 64), np.float32))
"""


def test_onednn_runs_every_binary_operator_with_its_optimised_kernel(exports):
    """oneDNN falls back to its reference kernel (`ref:any`, 50-100x slower) for an element-wise operator
    whose two inputs come in different memory formats: a convolution's blocked output (aBcd8b) times an
    index_select's plain one. The old export ran 22 of MicroNet_M0's binary operators that way (15 of its 18 ms)."""
    env = dict(os.environ, ONEDNN_VERBOSE="1", PYTHONPATH=REPO)
    for name in ("MicroNet_M0", "MicroNet_M3"):
        out = subprocess.run([sys.executable, "-c", ONEDNN_RUN, exports[name][1]], capture_output=True, text=True,
                             env=env, timeout=300, check=True).stdout
        # onednn_verbose,[v1,primitive,]exec,cpu,<primitive kind>,<implementation>,...
        executed = [line.split(",") for line in out.splitlines() if line.startswith("onednn_verbose,") and ",exec,cpu," in line]
        kernels = [fields[fields.index("cpu") + 1:fields.index("cpu") + 3] for fields in executed]
        binaries = [implementation for kind, implementation in kernels if kind == "binary"]
        assert binaries, out[-2000:]  # the verbose log was read
        assert not [implementation for implementation in binaries if implementation.startswith("ref")], (name, binaries)
