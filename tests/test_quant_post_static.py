"""deploy/slim/quant_post_static.py end to end: MicroNet_M0 trained briefly on the demo digits is quantized (the
export made from Global.pretrained_model), its gate numbers are recomputed here with ONNX Runtime on the float and
int8 files, the predictor serves the folder, a budget that every-layer int8 cannot meet trips the gate (exit 2,
the ranking printed, nothing written) or keeps the most damaging layers float; too few held-out images and
unknown settings are one-line refusals."""
import json
import os
import re
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from conftest import QUICK_START, quick_argv, quick_config, run_main
from test_real_weights import EXPECTED, LITE0_CONFIG, lite0_weights, package_folder, photos  # noqa: F401 (fixtures)
from ppcls_ext.engine import Engine
from ppcls_ext.cli import predict_cls as predict_cli
from ppcls_ext.cli.quant_post_static import main
from ppcls_ext.quant.speed import INT8_FLAGS

DEPLOY_CONFIG = os.path.join(os.path.dirname(QUICK_START), "..", "..", "deploy", "configs", "inference_cls.yaml")


def train_briefly(digits, output, arch, epochs=3):
    """`arch` trained for a few epochs on the 256-image digits subset; returns its weights prefix."""
    config = quick_config(digits, output, f"Arch.name={arch}", f"Global.epochs={epochs}", "Global.eval_during_train=False",
                          f"Global.save_interval={epochs}")
    Engine(config, "train").train()
    return f"{output}/output/{arch}/latest"


def full_val(digits):
    """`-o` overrides that judge int8 on the full digits val list (359 images: 32 calibrate, 327 held out)."""
    return [f"DataLoader.Eval.dataset.cls_label_path={digits}/val_list.txt"]


@pytest.fixture(scope="module")
def m0(digits, tmp_path_factory):
    output = tmp_path_factory.mktemp("m0_int8")
    return output, train_briefly(digits, output, "MicroNet_M0")


def by_hand(digits, lines):
    """The quick-start eval transforms in numpy for label-file lines: RGB, (x / 255 - 0.5) / 0.5, CHW."""
    images = [cv2.imread(str(digits / line.split()[0]))[:, :, ::-1].astype(np.float32) for line in lines]
    return np.stack([((image / 255.0 - 0.5) / 0.5).transpose(2, 0, 1) for image in images]).astype(np.float32)


def onnx_outputs(path, images):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def test_micronet_m0_int8_is_within_budget_served_and_its_report_recomputes(m0, digits, capsys):
    output, weights = m0
    status, out, err = run_main(main, quick_argv(digits, output, f"Global.pretrained_model={weights}", *full_val(digits)), capsys)
    assert status == 0, err
    folder = output / "inference" / "quant_post_static_model"
    assert sorted(os.listdir(folder)) == ["inference.json", "inference.onnx", "inference.pdiparams", "inference.yml",
                                          "inference_int8.onnx", "report.json", "report.md"]
    report = json.loads((folder / "report.json").read_text())

    # the int8 file is an int8 model: every Conv reads int8 weights through DequantizeLinear
    graph = onnx.load(str(folder / "inference_int8.onnx")).graph
    int8_weights = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.INT8}
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in int8_weights}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert convs and all(node.input[1] in dequantized for node in convs) and not report["kept_in_float"]

    # the gate's numbers, recomputed from the two files on the held-out images (the 327 after the first 32)
    lines = (digits / "val_list.txt").read_text().split("\n")[32:32 + 327]
    images = by_hand(digits, lines)
    labels = np.array([int(line.split()[1]) for line in lines])
    fp32, int8 = (onnx_outputs(str(folder / name), images) for name in ("inference.onnx", "inference_int8.onnx"))
    result = report["result"]
    assert result["images"] == 327 and report["holdout"]["decisive"] and report["calibration"]["images"] == 32
    assert result["top1_agreement"] == pytest.approx(np.mean(fp32.argmax(1) == int8.argmax(1)), abs=1 / 327)
    assert result["top1_agreement"] >= 0.99
    assert result["int8_top1"] == pytest.approx(np.mean(int8.argmax(1) == labels), abs=1 / 327)
    kl = np.mean(np.sum(fp32 * np.log(np.maximum(fp32, 1e-12) / np.maximum(int8, 1e-12)), axis=1))
    assert result["mean_kl"] == pytest.approx(kl, rel=0.2, abs=1e-5)

    # honest speed: both timed, the CPU flags as /proc/cpuinfo lists them, the verdict follows the numbers
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    assert report["cpu"]["flags"] == {flag: flag in flags for flag in INT8_FLAGS}
    latency = report["latency"]
    assert latency["float_ms"] > 0 and latency["int8_ms"] > 0
    assert ("SLOWER" in report["speed_verdict"]) == (latency["int8_over_float"] >= 1.0)
    markdown = (folder / "report.md").read_text()
    assert report["speed_verdict"] in markdown and "avx512_vnni" in markdown and "327" in markdown

    # the predictor serves the folder with no other flag: the int8 model, on ONNX Runtime
    demo = digits / "demo"
    status, out, err = run_main(predict_cli.main, ["-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={folder}",
                                                   "-o", f"Global.infer_imgs={demo}", "--json", "-"], capsys)
    assert status == 0, err
    served = json.loads(out[out.index("[\n"):])
    names = sorted(os.listdir(demo))
    expected = onnx_outputs(str(folder / "inference_int8.onnx"), by_hand(demo, names)).argmax(1)
    assert [r["class_ids"][0] for r in served] == expected.tolist()
    assert "holds an int8 model" in out


@pytest.mark.slow
def test_a_tight_budget_trips_the_gate_and_a_looser_one_keeps_the_most_damaging_layers_float(m0, digits, capsys):
    output, weights = m0
    base = quick_argv(digits, output, f"Global.pretrained_model={weights}", *full_val(digits),
                      "Slim.quant_post_static.timing=False", "Slim.quant_post_static.sensitivity_images=4",
                      "Slim.quant_post_static.holdout_images=120")
    folder = output / "inference" / "quant_post_static_model"
    shutil.rmtree(folder, ignore_errors=True)
    before = sorted(os.listdir(output / "inference"))
    tight = ["Slim.quant_post_static.max_float_layers=0", "Slim.quant_post_static.max_kl=1e-9",
             "Slim.quant_post_static.min_agreement=1.0"]
    status, out, err = run_main(main, base + [a for o in tight for a in ("-o", o)], capsys)
    assert status == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: int8 refused: the budget (top-1 agreement >= 100.00%, mean KL <= 1e-09) is not met on "
                           "120 held-out images: ") and "0 of " in line and "max_float_layers 0" in line
    # the ranking names every quantizable layer of the float model once
    weighted = {n.name for n in onnx.load(str(output / "inference" / "inference.onnx")).graph.node
                if n.op_type in ("Conv", "Gemm", "MatMul")}
    rows = [row for row in out.splitlines() if row.startswith("| ") and row.split("|")[1].strip().isdigit()]
    ranked = [row.split("|")[2].split()[0] for row in rows]
    assert len(ranked) == len(set(ranked)) == len(weighted)
    assert "stem" in out and "classifier" in out
    assert sorted(os.listdir(output / "inference")) == before  # no folder, no partial one

    everything = float(re.search(r"mean KL ([0-9.e+-]+) > 1e-09", line).group(1))
    status, out, err = run_main(main, base + ["-o", f"Slim.quant_post_static.max_kl={everything * 0.7}"], capsys)
    assert status == 0, err
    report = json.loads((folder / "report.json").read_text())
    kept = report["kept_in_float"]
    ranking = [row["layer"] for row in report["ranking"]]
    assert kept and kept == ranking[:len(kept)]  # the worst-ranked, in order
    assert report["result"]["mean_kl"] <= everything * 0.7 < report["every_layer_int8"]["mean_kl"]
    damages = [row["damage_mean_kl"] for row in report["ranking"]]
    assert damages == sorted(damages, reverse=True)
    names = {layer.split()[0] for layer in kept}
    assert names == set(yaml.safe_load((folder / "inference.yml").read_text())["Int8"]["kept_in_float"])
    # in the int8 file, exactly the kept layers read float weights (no DequantizeLinear in front of them)
    graph = onnx.load(str(folder / "inference_int8.onnx")).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    assert {n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
            and not set(n.input[:2]) & dequantized} == names


def test_too_few_held_out_images_and_unknown_settings_are_one_line_refusals(digits, tmp_path, capsys, digits_export):
    argv = quick_argv(digits, tmp_path, f"Global.save_inference_dir={digits_export}")
    status, out, err = run_main(main, argv, capsys)  # val_small: 37 images, 32 calibrate, 5 left
    assert status == 2
    assert err.strip().splitlines()[-1].startswith("error: ") and "leaving 5 to judge int8" in err
    assert "needs at least 100 held-out images" in err and "min_holdout_images" in err
    status, out, err = run_main(main, argv + ["-o", "Slim.quant_post_static.batch_num=2"], capsys)
    assert status == 2 and "Slim.quant_post_static.batch_num is not a setting (did you mean batch_nums?)" in err
    status, out, err = run_main(main, quick_argv(digits, tmp_path / "none"), capsys)
    assert status == 2 and "holds no export" in err and "Global.pretrained_model" in err
    assert not os.path.exists(os.path.join(digits_export, "quant_post_static_model"))


@pytest.mark.slow
def test_efficientnet_b0_trained_on_digits_quantizes_within_the_budget(digits, tmp_path, capsys):
    weights = train_briefly(digits, tmp_path, "EfficientNetB0", epochs=1)
    status, out, err = run_main(main, quick_argv(digits, tmp_path, "Arch.name=EfficientNetB0", f"Global.pretrained_model={weights}",
                                                 *full_val(digits), "Slim.quant_post_static.timing=False",
                                                 "Slim.quant_post_static.holdout_images=200"), capsys)
    assert status == 0, err
    report = json.loads((tmp_path / "inference" / "quant_post_static_model" / "report.json").read_text())
    assert report["result"]["top1_agreement"] >= 0.99 and report["result"]["images"] == 200
    assert report["result"]["int8_top1"] >= report["result"]["float_top1"] - 0.01
    # B0's squeeze-excite convolutions are recognised as branches on pooled features
    assert any("pooled features" in row["layer"] for row in report["ranking"] or []) or not report["kept_in_float"]


#: scikit-image / scikit-learn photos to calibrate on: none of the six photos the Lite0 tests classify, nor
#: motorcycle_right.png (the other view of the motorcycle_left.png scene)
CALIBRATION_PHOTOS = ["skimage/astronaut.png", "skimage/brick.png", "skimage/coins.png", "skimage/grass.png",
                      "skimage/gravel.png", "skimage/hubble_deep_field.jpg", "skimage/retina.jpg", "skimage/moon.png",
                      "skimage/page.png", "skimage/text.png", "skimage/color.png", "skimage/logo.png", "skimage/cell.png",
                      "skimage/ihc.png", "skimage/clock_motion.png", "sklearn/flower.jpg"]


@pytest.mark.slow
def test_lite0_imagenet_weights_int8_agrees_with_float_on_real_photos_it_never_calibrated_on(photos, lite0_weights, tmp_path, capsys):
    from ppcls_ext.cli import main as tool_main

    folders = {"skimage": package_folder("skimage", "data"), "sklearn": package_folder("sklearn", "datasets", "images")}
    # DataLoader.Eval: the 16 calibration photos first (their labels are never read: calibration uses no labels),
    # then the six test photos with an ImageNet class each (a held-out set far too small to decide a 99% budget:
    # min_holdout_images=6 accepts it, and the report says so)
    root = tmp_path / "photos"
    root.mkdir()
    lines = []
    for name in CALIBRATION_PHOTOS + list(EXPECTED):
        kind, file = name.split("/")
        os.symlink(os.path.join(folders[kind], file), root / f"{kind}_{file}")
        lines.append(f"{kind}_{file} {min(EXPECTED.get(name, {0: ''}))}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    overrides = [f"Global.pretrained_model={lite0_weights}", "Global.device=cpu", f"Global.output_dir={tmp_path}/output",
                 f"Global.save_inference_dir={tmp_path}/inference", f"DataLoader.Eval.dataset.image_root={root}",
                 f"DataLoader.Eval.dataset.cls_label_path={root}/list.txt"]
    argv = ["-c", LITE0_CONFIG] + [a for o in overrides for a in ("-o", o)]
    assert run_main(lambda args: tool_main("export", args), argv, capsys)[0] == 0  # tools/export_model.py
    slim = ["Slim.quant_post_static.batch_size=8", "Slim.quant_post_static.batch_nums=2",
            "Slim.quant_post_static.min_holdout_images=6", "Slim.quant_post_static.timing=False",
            "Slim.quant_post_static.sensitivity_images=4"]
    status, out, err = run_main(main, argv + [a for o in slim for a in ("-o", o)], capsys)
    assert status == 0, err
    folder = tmp_path / "inference" / "quant_post_static_model"
    report = json.loads((folder / "report.json").read_text())
    assert report["holdout"] == {"images": 6, "labels": True, "needed_to_decide": 6, "decisive": False}
    assert "too few to decide" in (folder / "report.md").read_text()

    files = [photos[name] for name in EXPECTED]
    top1 = {}
    for name, model_dir, backend in (("float", tmp_path / "inference", "onnxruntime"), ("int8", folder, "paddle")):
        status, out, err = run_main(predict_cli.main, ["-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={model_dir}",
                                                       "-o", f"Global.backend={backend}",
                                                       "-o", "Global.infer_imgs=" + json.dumps(files), "--json", "-"], capsys)
        assert status == 0, err
        top1[name] = [r["class_ids"][0] for r in json.loads(out[out.index("[\n"):])]
    assert "holds an int8 model" in out
    assert top1["int8"] == top1["float"]
    right = [name for name, first in zip(EXPECTED, top1["int8"]) if first in EXPECTED[name]]
    assert len(right) >= 5, (top1, right)
