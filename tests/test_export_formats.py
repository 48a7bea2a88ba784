"""Global.export_format: "pir" (Paddle 3's inference.json, the default) or "legacy" (inference.pdmodel, what
PaddleClas's own predictor serves under Paddle 3). Both give the dygraph model's outputs in our predictor, an
unknown format is refused before anything is written, and a failed export keeps the previous one."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

import ppcls_ext
from conftest import QUICK_START, REPO
from ppcls_ext.serving.export import export_inference_model
from ppcls_ext.inference import InferenceOptions, PaddlePredictor
from ppcls_ext.models.deploy import deploy_form
from ppcls_ext.weights import randomize_

PROGRAM_FILES = {"pir": {"inference.json", "inference.pdiparams", "inference.yml"},
                 "legacy": {"inference.pdmodel", "inference.pdiparams", "inference.pdiparams.info", "inference.yml"}}


@pytest.mark.parametrize("name", ["MicroNet_M0", "EfficientNetB0", "EfficientNetV2_B0"])
def test_both_formats_give_the_dygraph_outputs_in_our_predictor(name, tmp_path):
    """One model per family: MicroNet's Shift-Max maximum and the EfficientNets' squeeze-excite sigmoid are
    operators Paddle 3.3.1 cannot record in a legacy program through its public API."""
    model = ppcls_ext.create_model(name, class_num=10)
    randomize_(model.state_dict(), seed=1)
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 80)).astype("float32")
    expected = paddle.nn.functional.softmax(model(paddle.to_tensor(x)), -1).numpy()
    for export_format, files in PROGRAM_FILES.items():
        directory = str(tmp_path / export_format)
        export_inference_model(deploy_form(model), directory, {"Global": {}}, export_format=export_format)
        assert set(os.listdir(directory)) == files
        predicted = PaddlePredictor(directory, InferenceOptions(cpu_threads=2, enable_mkldnn=False)).run(x)
        np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-6)
    assert paddle.framework.use_pir_api()  # the legacy format was switched on for the save only


def test_an_unknown_export_format_is_refused_before_anything_is_written(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "export_model.py"), "-c", QUICK_START,
                           "-o", "Global.export_format=onnx", "-o", f"Global.save_inference_dir={tmp_path}/export",
                           "-o", f"Global.output_dir={tmp_path}/out"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "error: Global.export_format: must be one of pir, legacy, got 'onnx'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "export").exists()


class _FailsToConvert(paddle.nn.Layer):
    def forward(self, x):
        raise RuntimeError("cannot convert")


def test_a_failed_legacy_export_keeps_the_previous_export(tmp_path):
    directory = str(tmp_path / "export")
    export_inference_model(ppcls_ext.create_model("MicroNet_M0", class_num=10), directory, {"Global": {}})
    before = {name: os.path.getmtime(os.path.join(directory, name)) for name in os.listdir(directory)}
    with pytest.raises(Exception, match="cannot convert"):
        export_inference_model(_FailsToConvert(), directory, {"Global": {}}, export_format="legacy")
    assert {name: os.path.getmtime(os.path.join(directory, name)) for name in os.listdir(directory)} == before
    assert os.listdir(tmp_path) == ["export"] and paddle.framework.use_pir_api()
