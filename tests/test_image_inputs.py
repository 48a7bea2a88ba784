"""Bad and unusual image inputs through the tools (tools/infer.py, tools/eval.py, tools/train.py,
deploy/python/predict_cls.py): each case checks the exit status, that no traceback is printed and the key
words of the message. Decoding of single files is tested in test_image_decoding.py."""
import ast
import json
import multiprocessing
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import QUICK_START, REPO, quick_argv, run_main
from ppcls_ext import cli
from ppcls_ext.cli import predict_cls as deploy_cli

DEPLOY_CONFIG = os.path.join(REPO, "deploy", "configs", "inference_cls.yaml")
# the quick-start Infer.transforms without their ResizeImage
NO_RESIZE = ("Infer.transforms=[{DecodeImage: {to_rgb: True, channel_first: False}}, {NormalizeImage: {scale: 1.0/255.0, "
             "mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], order: ''}}, {ToCHWImage: null}]")


def infer(digits, tmp_path, weights, capsys, *overrides, json_path=None):
    argv = quick_argv(digits, tmp_path, f"Global.pretrained_model={weights}", *overrides)
    status, out, err = run_main(lambda a: cli.main("infer", a), argv + (["--json", json_path] if json_path else []), capsys)
    return status, [ast.literal_eval(line) for line in out.splitlines() if line.startswith("{")], err


def predict(export, capsys, *overrides, json_path=None):
    argv = ["-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={export}", "-o", "Global.enable_mkldnn=False"]
    argv += [arg for option in overrides for arg in ("-o", option)] + (["--json", json_path] if json_path else [])
    status, out, err = run_main(deploy_cli.main, argv, capsys)
    return status, [ast.literal_eval(line) for line in out.splitlines() if line.startswith("{")], err


@pytest.fixture(scope="module")
def images(digits, tmp_path_factory):
    """Image files made from the demo 'seven': 32 px, 128 px (each pixel 4x4), 64x48, broken ones."""
    folder = tmp_path_factory.mktemp("images")
    seven = cv2.imread(str(digits / "demo" / "seven.png"))
    cv2.imwrite(str(folder / "seven32.png"), seven)
    cv2.imwrite(str(folder / "seven128.png"), cv2.resize(seven, (128, 128), interpolation=cv2.INTER_NEAREST))
    cv2.imwrite(str(folder / "seven64x48.png"), cv2.resize(seven, (64, 48)))
    jpeg = cv2.imencode(".jpg", cv2.resize(seven, (256, 256)))[1].tobytes()
    (folder / "half_grey.jpg").write_bytes(jpeg[: len(jpeg) // 2] + b"\xff\xd9")  # cut, closed by an end marker
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"not an image" * 20)
    return folder


def subset(folder, target, *names):
    target.mkdir()
    for name in names:
        shutil.copy(folder / name, target / name)
    return target


def test_infer_batches_images_of_different_sizes(digits, tmp_path, digits_weights, images, capsys):
    mixed = subset(images, tmp_path / "mixed", "seven32.png", "seven64x48.png", "seven128.png")
    status, together, _ = infer(digits, tmp_path, digits_weights, capsys, NO_RESIZE, f"Infer.infer_imgs={mixed}")
    assert status == 0 and [len(r["class_ids"]) for r in together] == [3, 3, 3]
    for result in together:  # the same as each image alone
        _, alone, _ = infer(digits, tmp_path, digits_weights, capsys, NO_RESIZE, f"Infer.infer_imgs={result['file_name']}")
        assert alone[0]["class_ids"] == result["class_ids"]
        np.testing.assert_allclose(alone[0]["scores"], result["scores"], atol=2e-5)


def test_quick_start_inference_resizes_any_image_to_32_px(digits, tmp_path, digits_weights, images, capsys):
    status, results, _ = infer(digits, tmp_path, digits_weights, capsys,
                               f"Infer.infer_imgs=['{images}/seven32.png', '{images}/seven128.png']")
    assert status == 0
    # a 4x nearest-neighbour enlargement, shrunk back bilinearly, is the 32 px image again
    assert results[0]["class_ids"] == results[1]["class_ids"] and results[0]["scores"] == results[1]["scores"]
    from ppcls_ext.config import load_config
    from ppcls_ext.data.transforms import build_transforms

    transform = build_transforms(load_config(QUICK_START)["Infer"]["transforms"], "Infer.transforms")
    photo = cv2.imencode(".jpg", np.zeros((3000, 4000, 3), np.uint8))[1].tobytes()
    assert transform(photo).shape == (3, 32, 32)


def test_every_image_failing_exits_2_with_a_summary(digits, tmp_path, digits_weights, images, capsys):
    broken = subset(images, tmp_path / "broken", "empty.png", "garbage.jpg", "half_grey.jpg")
    status, results, err = infer(digits, tmp_path, digits_weights, capsys, f"Infer.infer_imgs={broken}")
    assert status == 2 and err.strip() == "error: 3 of 3 images failed (see their 'error' entries)"
    assert [sorted(r) for r in results] == [["error", "file_name"]] * 3
    assert "corrupt JPEG data" in results[2]["error"] and "premature end of data segment" in results[2]["error"]
    (broken / "seven32.png").write_bytes((images / "seven32.png").read_bytes())
    status, results, err = infer(digits, tmp_path, digits_weights, capsys, f"Infer.infer_imgs={broken}")
    assert status == 0 and err.strip() == "warning: 3 of 4 images failed (see their 'error' entries)"
    assert "class_ids" in results[3]


@pytest.mark.parametrize("where,message", [
    ("missing/r.json", "cannot write there (No such file or directory)"),
    ("", "is a directory, expected a file path"),
    ("file.txt/r.json", "cannot write there (Not a directory)"),
])
def test_unwritable_json_path_fails_before_any_work(digits, tmp_path, digits_weights, digits_export, capsys, where, message):
    (tmp_path / "file.txt").write_text("x")
    target = str(tmp_path / where)
    status, results, err = infer(digits, tmp_path, digits_weights, capsys, json_path=target)
    assert status == 2 and results == [] and err.strip() == f"error: --json {target}: {message}"
    status, results, err = predict(digits_export, capsys, f"Global.infer_imgs={digits}/demo", json_path=target)
    assert status == 2 and results == [] and err.strip() == f"error: --json {target}: {message}"


def test_predict_cls_batches_by_size_and_reports_failures(digits, tmp_path, digits_export, images, capsys):
    export = tmp_path / "export_without_resize"  # as PaddleClas's own exports: no inference.yml, the config's PreProcess
    shutil.copytree(digits_export, export)
    (export / "inference.yml").unlink()
    mixed = subset(images, tmp_path / "mixed", "seven32.png", "seven64x48.png", "seven128.png", "garbage.jpg")
    preprocess = ("PreProcess.transform_ops=[{NormalizeImage: {scale: 0.00392157, mean: [0.5, 0.5, 0.5], "
                  "std: [0.5, 0.5, 0.5], order: ''}}, {ToCHWImage: null}]")
    status, results, err = predict(str(export), capsys, f"Global.infer_imgs={mixed}", "Global.batch_size=4", preprocess,
                                   json_path=str(tmp_path / "r.json"))
    assert status == 0 and "warning: 1 of 4 images failed" in err
    assert [sorted(r)[0] for r in results] == ["error", "class_ids", "class_ids", "class_ids"]
    assert json.loads((tmp_path / "r.json").read_text()) == results
    status, results, err = predict(digits_export, capsys, f"Global.infer_imgs={images}/half_grey.jpg")
    assert status == 2 and err.strip().endswith("error: 1 of 1 images failed (see their 'error' entries)")
    assert "corrupt JPEG data" in results[0]["error"]


def _label_file(digits, path, extra):
    lines = (digits / "val_small.txt").read_text().splitlines()[:5]
    path.write_text("\n".join(lines + extra) + "\n")
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_in_evaluation_is_one_line_naming_file_and_line(digits, tmp_path, digits_weights, images, capsys, workers):
    labels = _label_file(digits, tmp_path / "val.txt", [f"{images}/half_grey.jpg 7"])
    argv = quick_argv(digits, tmp_path, f"Global.pretrained_model={digits_weights}",
                      f"DataLoader.Eval.dataset.cls_label_path={labels}", f"DataLoader.Eval.loader.num_workers={workers}")
    status, _, err = run_main(lambda a: cli.main("eval", a), argv, capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {labels}, line 6: unreadable image {images}/half_grey.jpg: cannot decode image: corrupt JPEG")
    assert "evaluation does not skip images" in err
    assert multiprocessing.active_children() == []  # the loader's workers stopped with the error


def test_eval_images_of_different_sizes_without_resize_are_a_clear_error(digits, tmp_path, digits_weights, images, capsys):
    labels = _label_file(digits, tmp_path / "val.txt", [f"{images}/seven128.png 7"])
    argv = quick_argv(digits, tmp_path, f"Global.pretrained_model={digits_weights}",
                      f"DataLoader.Eval.dataset.cls_label_path={labels}",
                      "DataLoader.Eval.dataset.transform_ops=[DecodeImage, {NormalizeImage: {scale: 0.00392157}}]")
    status, _, err = run_main(lambda a: cli.main("eval", a), argv, capsys)
    assert status == 2 and "DataLoader.Eval.dataset.transform_ops give images of different sizes in one batch" in err
    assert "(3x32x32, 3x128x128)" in err and "ResizeImage" in err


@pytest.mark.parametrize("workers", [0, 2])
def test_training_on_unreadable_images_stops_with_one_line(digits, tmp_path, images, workers):
    """In a real process: with loader workers, Paddle's DataLoader loses a worker's exception (its reader
    thread prints a traceback and the main process hangs); the error must still arrive, as one line."""
    labels = tmp_path / "train.txt"
    labels.write_text("".join(f"{images}/garbage.jpg {i % 10}\n" for i in range(40)))
    argv = quick_argv(digits, tmp_path, f"DataLoader.Train.dataset.cls_label_path={labels}", "Global.epochs=1",
                      f"DataLoader.Train.loader.num_workers={workers}")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train.py"), *argv], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {labels}: 10 unreadable training images in a row, the last (line ")
    assert "garbage.jpg: cannot decode image: not a recognised image format" in proc.stderr
    assert not os.path.exists(tmp_path / "output" / "MicroNet_M0" / "latest.pdparams")


@pytest.mark.slow
def test_unreadable_image_seen_by_one_process_stops_every_process_with_one_line(digits, tmp_path, digits_weights, images):
    """Two evaluation processes: only one of them reads the broken image. Both stop with the same error
    line (the other one names the process that read it) and exit 2, instead of one exiting and the other
    waiting in the final gather until gloo times out with a traceback."""
    labels = _label_file(digits, tmp_path / "val.txt", [f"{images}/half_grey.jpg 7"])
    argv = quick_argv(digits, tmp_path, f"Global.pretrained_model={digits_weights}",
                      f"DataLoader.Eval.dataset.cls_label_path={labels}", "DataLoader.Eval.sampler.batch_size=2")
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                           str(tmp_path / "log"), os.path.join(REPO, "tools", "eval.py"), *argv],
                          capture_output=True, text=True, timeout=240)
    logs = [(tmp_path / "log" / f"workerlog.{rank}").read_text() for rank in range(2)]
    errors = [[line for line in log.splitlines() if line.startswith("error:")] for log in logs]
    assert proc.returncode != 0 and [len(e) for e in errors] == [1, 1], proc.stdout[-3000:]
    expected = f"error: {labels}, line 6: unreadable image {images}/half_grey.jpg: cannot decode image: corrupt JPEG"
    assert all(e[0].startswith(expected) for e in errors)
    assert sum("(read by process " in e[0] for e in errors) == 1  # exactly one process read it itself
    assert all("Traceback" not in log for log in logs) and "Traceback" not in proc.stdout + proc.stderr
