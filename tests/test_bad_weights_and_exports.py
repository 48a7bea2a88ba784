"""Weights and exports that do not fit or cannot be read: evaluation, inference and export refuse a
classifier of another class count (only training may replace one) and say when the weights are random;
a damaged export is one line naming its folder. Each case: exit status, no traceback, the message.
Checkpoints under crash injection are tested in their own module."""
import os
import shutil

import paddle
import pytest

import ppcls_ext
from conftest import REPO, quick_argv, run_main
from ppcls_ext import cli
from ppcls_ext.cli import predict_cls as deploy_cli
from ppcls_ext.weights import IncompatibleWeightsError, load_weights

DEPLOY_CONFIG = os.path.join(REPO, "deploy", "configs", "inference_cls.yaml")


def tool(mode, digits, tmp_path, capsys, *overrides):
    return run_main(lambda argv: cli.main(mode, argv), quick_argv(digits, tmp_path, *overrides), capsys)


def test_classifier_of_another_class_count_is_skipped_only_when_allowed(digits_weights):
    state = paddle.load(str(digits_weights))
    model = ppcls_ext.create_model("MicroNet_M0", class_num=12)
    head = {k: v.numpy().copy() for k, v in model.state_dict().items() if k.startswith("classifier.")}
    with pytest.raises(IncompatibleWeightsError, match=r"^w: its classifier is for 10 classes, the model has 12 "
                                                      r"\(Arch.class_num\); only training may leave a classifier"):
        load_weights(model, state, source="w", allow_classifier_mismatch=False)
    skipped = load_weights(model, state, source="w")
    assert skipped and all(k.startswith("classifier.") for k in skipped)
    assert all((model.state_dict()[k].numpy() == v).all() for k, v in head.items())  # left as initialised
    stem = "stem.conv.conv_kx1.conv.weight"
    assert (model.state_dict()[stem].numpy() == state[stem].numpy()).all()


@pytest.mark.parametrize("mode", ["eval", "infer", "export"])
def test_eval_infer_export_refuse_a_classifier_of_another_class_count(digits, tmp_path, digits_weights, capsys, mode):
    status, out, err = tool(mode, digits, tmp_path, capsys, f"Global.pretrained_model={digits_weights}", "Arch.class_num=12")
    assert status == 2 and err == (f"error: {digits_weights}: its classifier is for 10 classes, the model has 12 "
                                   "(Arch.class_num); only training may leave a classifier randomly initialised\n")
    assert not os.path.exists(tmp_path / "inference")


def test_training_may_replace_the_classifier(digits, tmp_path, digits_weights, capsys):
    from ppcls_ext.engine import Engine
    from conftest import quick_config

    Engine(quick_config(digits, tmp_path, f"Global.pretrained_model={digits_weights}", "Arch.class_num=12"), "train")
    assert "classifier does not match the model's class_num; left as initialised" in capsys.readouterr().out


@pytest.mark.parametrize("mode,verb", [("eval", "evaluating"), ("infer", "classifying with"), ("export", "exporting")])
def test_no_weights_is_said(digits, tmp_path, capsys, mode, verb):
    status, out, _ = tool(mode, digits, tmp_path, capsys, f"Infer.infer_imgs={digits}/demo/one.png")
    assert status == 0 and (f"WARNING: Global.pretrained_model is not set: {verb} a randomly initialised model (its "
                            "outputs mean nothing); give -o Global.pretrained_model=PATH") in out


@pytest.mark.parametrize("make,message", [
    (lambda path, good: path.write_bytes(good.read_bytes()[:5000]), "is not a readable Paddle state dict (.pdparams)"),
    (lambda path, good: path.write_bytes(b"hello"), "is not a readable Paddle state dict (.pdparams)"),
    (lambda path, good: path.mkdir(), "weights file not found"),
], ids=["cut-short", "not-pdparams", "a-folder"])
def test_unreadable_weights_are_one_line(digits, tmp_path, digits_weights, capsys, make, message):
    path = tmp_path / "bad.pdparams"
    make(path, digits_weights)
    status, _, err = tool("eval", digits, tmp_path, capsys, f"Global.pretrained_model={path}")
    assert status == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage,extra,message", [
    (lambda d: _cut(d / "inference.pdiparams"), [], "the exported model cannot be loaded; a file is damaged, cut short or "
                                                    "not from tools/export_model.py (RuntimeError: "),
    (lambda d: (d / "inference.pdiparams").write_bytes(b""), [], "the exported model cannot be loaded"),
    (lambda d: _cut(d / "inference.json"), [], "the exported model cannot be loaded"),
    (lambda d: (d / "inference.onnx").write_bytes(b"garbage"), ["Global.backend=onnxruntime"],
     "the exported model cannot be loaded"),
    (lambda d: (d / "inference.yml").write_text("Global: [unclosed\n"), [], "inference.yml is not valid YAML: "),
    (lambda d: shutil.rmtree(d), [], "holds no Paddle inference model: no such directory"),
], ids=["pdiparams-cut", "pdiparams-empty", "json-cut", "onnx-garbage", "yml-not-yaml", "folder-missing"])
def test_damaged_exports_are_one_line_naming_the_folder(digits, tmp_path, digits_export, capsys, damage, extra, message):
    export = tmp_path / "export"
    shutil.copytree(digits_export, export)
    damage(export)
    argv = ["-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={export}", "-o", f"Global.infer_imgs={digits}/demo"]
    status, out, err = run_main(deploy_cli.main, argv + [a for option in extra for a in ("-o", option)], capsys)
    assert status == 2 and err.startswith(f"error: {export}") and message in err and len(err.strip().splitlines()) == 1
    assert "class_ids" not in out
