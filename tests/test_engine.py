"""The engine on the demo data: training, resume (also after a kill), evaluation, inference, export,
and the errors for bad input."""
import ast
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest
import yaml

from conftest import QUICK_START, REPO, quick_config
from ppcls_ext.config import ConfigError
from ppcls_ext.data.transforms import build_transforms
from ppcls_ext.engine import Engine
from ppcls_ext.engine.checkpoint import load_checkpoint


def trainable(state):
    return {k: v.numpy() for k, v in state.items() if not k.endswith(("_mean", "_variance"))}


def test_loss_falls_and_resume_continues_exactly(digits, tmp_path):
    full = Engine(quick_config(digits, tmp_path / "full", "Global.epochs=3", "Global.save_interval=1",
                               "Global.eval_interval=1"), "train")
    full.train()
    losses = [record["train"]["loss"] for record in full.history]
    assert losses[2] < losses[0], losses
    assert [r["eval"]["top1"] >= 0 for r in full.history] == [True] * 3
    out = tmp_path / "full" / "output" / "MicroNet_M0"
    for prefix in ("latest", "epoch_1", "epoch_2", "epoch_3", "best_model"):
        assert (out / f"{prefix}.pdparams").is_file() and (out / f"{prefix}.pdstates").is_file()

    resumed = Engine(quick_config(digits, tmp_path / "full", "Global.epochs=3",
                                  f"Global.checkpoints={out}/epoch_2"), "train")
    assert resumed.start_epoch == 3
    assert resumed.schedule.last_epoch == 2 * resumed.steps_per_epoch
    assert resumed.schedule.get_lr() == pytest.approx(full.schedule.lr_at(2 * full.steps_per_epoch))
    assert resumed.best == pytest.approx(max(r["eval"]["top1"] for r in full.history[:2]))
    resumed.train()
    assert [r["epoch"] for r in resumed.history] == [3]
    final, continued = trainable(full.model.state_dict()), trainable(resumed.model.state_dict())
    for key in final:
        np.testing.assert_allclose(continued[key], final[key], atol=1e-5, err_msg=key)


def test_gradient_accumulation_steps_once_per_update_freq_batches(digits, tmp_path):
    """update_freq=2: 8 batches make 4 optimizer and schedule steps (the numerics of accumulation are
    compared with two data-parallel processes in test_distributed.py)."""
    engine = Engine(quick_config(digits, tmp_path, "Global.update_freq=2", "Global.epochs=1",
                                 "Global.eval_during_train=False"), "train")
    engine.train()
    assert engine.iters_per_epoch == 8 and engine.steps_per_epoch == 4
    assert engine.global_step == 4 and engine.schedule.last_epoch == 4


def test_ema_weights_are_evaluated_and_saved(digits, tmp_path):
    engine = Engine(quick_config(digits, tmp_path, "Global.epochs=1", "EMA.decay=0.9"), "train")
    engine.train()
    out = tmp_path / "output" / "MicroNet_M0"
    assert (out / "best_model_ema.pdparams").is_file() and (out / "latest.pdema").is_file()
    assert engine.ema.updates == engine.global_step == 8
    ema = paddle.load(str(out / "latest.pdema"))
    model = paddle.load(str(out / "latest.pdparams"))
    assert not np.allclose(ema["stem.conv.conv_kx1.conv.weight"].numpy(), model["stem.conv.conv_kx1.conv.weight"].numpy())


def test_interrupted_checkpoint_write_leaves_a_loadable_checkpoint(digits, tmp_path, monkeypatch):
    engine = Engine(quick_config(digits, tmp_path, "Global.epochs=2", "Global.eval_during_train=False"), "train")
    engine.train()
    prefix = str(tmp_path / "output" / "MicroNet_M0" / "latest")
    before = paddle.load(prefix + ".pdstates")
    real_save = paddle.save

    def crash_on_optimizer(obj, path, *args, **kwargs):
        if ".pdopt" in path:
            real_save({"partial": 1}, path)  # a torn temporary file...
            raise KeyboardInterrupt("killed while writing the optimizer state")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(paddle, "save", crash_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        engine.checkpoints.save("latest", 3)
    monkeypatch.setattr(paddle, "save", real_save)
    files = load_checkpoint(prefix)  # ...never replaced the complete one
    assert files["states"]["epoch"] == before["epoch"] == 2
    assert "partial" not in files["optimizer"]
    assert not [f for f in os.listdir(os.path.dirname(prefix)) if f.startswith(".")]  # nor stayed behind


def test_killed_training_resumes_from_its_latest_checkpoint(digits, tmp_path):
    """SIGKILL a real training process at several moments; every time `latest` loads and resumes."""
    output = tmp_path / "run"
    base = ["-c", QUICK_START, "-o", f"Global.output_dir={output}", "-o", f"DataLoader.Train.dataset.image_root={digits}",
            "-o", f"DataLoader.Train.dataset.cls_label_path={digits}/train_small.txt",
            "-o", "DataLoader.Train.sampler.batch_size=16", "-o", "Global.eval_during_train=False",
            "-o", "Global.epochs=200", "-o", "Global.save_interval=1000"]
    latest = output / "MicroNet_M0" / "latest"
    rng = np.random.default_rng(0)
    resumed_from = []
    for attempt in range(3):
        args = base + (["-o", f"Global.checkpoints={latest}"] if attempt else [])
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "train.py"), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:  # run until this process has written a checkpoint of its own
            lines.append(line)
            if "saved latest" in line:
                break
        time.sleep(float(rng.uniform(0.0, 2.0)))
        proc.send_signal(signal.SIGKILL)
        log = "".join(lines) + proc.communicate()[0]
        if attempt:
            assert "resumed from" in log, log[-2000:]
            resumed_from.append(int(log.split("continuing at epoch ")[1].split()[0]))
        files = load_checkpoint(str(latest))
        assert files["states"]["epoch"] >= 1 and "stem.conv.conv_kx1.conv.weight" in files["model"]
    assert resumed_from == sorted(resumed_from) and resumed_from[0] >= 2


def test_evaluation_reports_every_image_once(digits, tmp_path, engine_log):
    engine = Engine(quick_config(digits, tmp_path, "DataLoader.Eval.sampler.batch_size=8"), "eval")
    result = engine.eval()
    assert set(result) == {"CELoss", "loss", "top1", "top5"}
    assert "images: 37" in engine_log.text and "[Eval][Epoch 0][Avg]CELoss:" in engine_log.text


def test_training_log_lines_follow_paddleclas(digits, tmp_path):
    Engine(quick_config(digits, tmp_path, "Global.epochs=1", "Global.use_visualdl=True"), "train").train()
    log = (tmp_path / "output" / "MicroNet_M0" / "train.log").read_text()
    line = next(l for l in log.splitlines() if "[Train][Epoch 1/1][Iter: 4/8]" in l)
    for field in ("lr(Cosine): ", "top1: ", "top5: ", "CELoss: ", "loss: ", "batch_cost: ", "reader_cost: ",
                  "ips: ", " samples/s, eta: "):
        assert field in line, (field, line)
    assert line.split("] ", 1)[1].startswith("ppcls_ext INFO: [Train]")
    assert "[Train][Epoch 1/1][Avg]top1: " in log and "[Eval][Epoch 1][best metric: " in log
    assert any(name.startswith("vdlrecords") for name in os.listdir(tmp_path / "output" / "MicroNet_M0" / "vdl"))


def test_infer_prints_paddleclas_results_and_json(digits, tmp_path, capsys):
    train = Engine(quick_config(digits, tmp_path, "Global.epochs=1", "Global.eval_during_train=False"), "train")
    train.train()
    weights = tmp_path / "output" / "MicroNet_M0" / "latest"
    images = [f"{digits}/images/val/3/{name}" for name in sorted(os.listdir(digits / "images" / "val" / "3"))[:3]]
    engine = Engine(quick_config(digits, tmp_path, f"Global.pretrained_model={weights}",
                                 f"Infer.infer_imgs={images}", "Infer.batch_size=2"), "infer")
    results = engine.infer(str(tmp_path / "results.json"))
    printed = [ast.literal_eval(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed == results == json.loads((tmp_path / "results.json").read_text())
    for result, path in zip(results, images):
        assert set(result) == {"class_ids", "scores", "file_name", "label_names"} and result["file_name"] == path
        assert len(result["class_ids"]) == 3 and result["scores"] == sorted(result["scores"], reverse=True)
        names = dict(line.split() for line in (digits / "label_list.txt").read_text().splitlines())
        assert result["label_names"] == [names[str(i)] for i in result["class_ids"]]


def test_infer_walks_folders_and_reports_broken_files(digits, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    source = sorted((digits / "images" / "val" / "5").iterdir())
    (folder / "a.png").write_bytes(source[0].read_bytes())
    (folder / "sub" / "b.png").write_bytes(source[1].read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either, and skipped by extension")
    engine = Engine(quick_config(digits, tmp_path, f"Infer.infer_imgs={folder}"), "infer")
    results = engine.infer()
    assert [os.path.relpath(r["file_name"], folder) for r in results] == ["a.png", "broken.jpg", "sub/b.png"]
    assert "cannot decode image" in results[1]["error"] and "class_ids" in results[0] and "class_ids" in results[2]


def test_export_round_trip_and_description(digits, tmp_path):
    engine = Engine(quick_config(digits, tmp_path), "export")
    path = engine.export()
    assert sorted(os.listdir(path)) == ["inference.json", "inference.pdiparams", "inference.yml"]
    description = yaml.safe_load(open(os.path.join(path, "inference.yml")))
    assert description["Global"]["model_name"] == "MicroNet_M0" and description["PostProcess"]["Topk"]["topk"] == 3
    assert description["PostProcess"]["Topk"]["label_list"][7] == "seven"
    ops = description["PreProcess"]["transform_ops"]
    assert [next(iter(op)) for op in ops] == ["ResizeImage", "NormalizeImage", "ToCHWImage"]
    assert ops[1]["NormalizeImage"]["scale"] == pytest.approx(1 / 255)
    # the description reproduces the evaluation preprocessing; the exported model reproduces dygraph
    data = (sorted((digits / "images" / "val" / "2").iterdir())[0]).read_bytes()
    from_description = build_transforms([{"DecodeImage": {"to_rgb": True}}] + ops, "inference.yml")(data)
    from_config = build_transforms(engine.infer_transforms(), "Infer.transforms")(data)
    np.testing.assert_array_equal(from_description, from_config)
    config = paddle.inference.Config(os.path.join(path, "inference.json"), os.path.join(path, "inference.pdiparams"))
    predictor = paddle.inference.create_predictor(config)
    batch = np.stack([from_config] * 3).astype("float32")
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(batch.shape)
    handle.copy_from_cpu(batch)
    predictor.run()
    exported = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    engine.model.eval()
    expected = paddle.nn.functional.softmax(engine.model(paddle.to_tensor(batch)), axis=-1).numpy()
    np.testing.assert_allclose(exported, expected, rtol=1e-4, atol=1e-6)
    assert exported.sum(axis=1) == pytest.approx(np.ones(3), abs=1e-5)


def test_failed_export_keeps_the_previous_one(digits, tmp_path, monkeypatch):
    engine = Engine(quick_config(digits, tmp_path), "export")
    path = engine.export()
    before = {name: os.path.getmtime(os.path.join(path, name)) for name in os.listdir(path)}

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(paddle.jit, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        engine.export()
    assert {name: os.path.getmtime(os.path.join(path, name)) for name in os.listdir(path)} == before
    assert [d for d in os.listdir(os.path.dirname(path)) if ".partial-" in d] == []


# --- bad input ------------------------------------------------------------------------------------

def _with_label_file(digits, tmp_path, lines):
    label_file = tmp_path / "labels.txt"
    label_file.write_text("\n".join(lines) + "\n")
    return quick_config(digits, tmp_path, f"DataLoader.Eval.dataset.cls_label_path={label_file}")


def test_label_file_problems_name_the_line(digits, tmp_path):
    good = (digits / "val_small.txt").read_text().splitlines()[0]
    cases = [
        ([good, "images/val/0/missing.png 0"], r"labels\.txt, line 2: image not found: .*missing\.png"),
        ([good, good.split()[0]], r"labels\.txt, line 2: expected '<image path> <label>'"),
        ([good, good.split()[0] + " seven"], r"labels\.txt, line 2: label must be a non-negative integer, got 'seven'"),
        ([good, good.split()[0] + " 10"], r"labels\.txt, line 2: label 10 is not below Arch.class_num=10"),
    ]
    for lines, message in cases:
        with pytest.raises(ConfigError, match=message):
            Engine(_with_label_file(digits, tmp_path, lines), "eval")


def test_missing_image_root_and_unknown_names_are_config_errors(digits, tmp_path):
    with pytest.raises(ConfigError, match=r"image_root does not exist or is not a directory: .*nowhere"):
        Engine(quick_config(digits, tmp_path, f"DataLoader.Eval.dataset.image_root={tmp_path}/nowhere"), "eval")
    cases = [
        ("Arch.name=MicroNet_M9", r"Arch.name: unknown model 'MicroNet_M9'. Did you mean MicroNet_M3.*Available models: MicroNet_M0"),
        ("DataLoader.Train.dataset.transform_ops.1=RandCrop", r"unknown transform op 'RandCrop'; valid: .*RandCropImage"),
        ("Optimizer.name=Adam", r"Optimizer.name: unknown optimizer 'Adam'; valid: Momentum, SGD, RMSProp, AdamW"),
        ("Optimizer.lr.name=Cosin", r"Optimizer.lr.name: unknown learning-rate schedule 'Cosin'; valid: .*Cosine"),
        ("Loss.Train.0={FocalLoss: {weight: 1.0}}", r"Loss.Train\[0\]: unknown loss 'FocalLoss'; valid: CELoss"),
        ("DataLoader.Train.sampler.name=RandomSampler", r"unknown sampler 'RandomSampler'; valid: DistributedBatchSampler"),
    ]
    for option, message in cases:
        with pytest.raises(ConfigError, match=message):
            Engine(quick_config(digits, tmp_path, option), "train")


def test_corrupt_images_are_skipped_in_training_and_named_in_evaluation(digits, tmp_path, engine_log):
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "empty.png").write_bytes(b"")
    (broken_dir / "garbage.png").write_bytes(b"\x89PNG but not really")
    train_lines = (digits / "train_small.txt").read_text().splitlines()[:62]
    label_file = tmp_path / "train.txt"
    label_file.write_text("\n".join(train_lines + [f"{broken_dir}/empty.png 1", f"{broken_dir}/garbage.png 2"]) + "\n")
    engine = Engine(quick_config(digits, tmp_path, f"DataLoader.Train.dataset.cls_label_path={label_file}",
                                 "DataLoader.Train.sampler.shuffle=False", "Global.epochs=1", "Global.eval_during_train=False"), "train")
    engine.train()
    assert "skipping unreadable training image" in engine_log.text and "empty.png: the file is empty" in engine_log.text
    assert "garbage.png: cannot decode image" in engine_log.text
    eval_config = quick_config(digits, tmp_path, f"DataLoader.Eval.dataset.cls_label_path={label_file}")
    with pytest.raises(ValueError, match=r"empty\.png: the file is empty"):
        Engine(eval_config, "eval").eval()


def run_tool(tool, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *args], capture_output=True, text=True, timeout=300)


def test_tools_report_user_errors_in_one_line(digits, tmp_path):
    proc = run_tool("train.py", "-c", QUICK_START, "-o", "Global.epochs")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: -o 'Global.epochs': expected KEY.PATH=VALUE, e.g. Global.epochs=10")
    proc = run_tool("eval.py", "-c", QUICK_START, "-o", f"Global.pretrained_model={tmp_path}/none.pdparams")
    assert proc.returncode == 2 and "error: weights file not found:" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool("infer.py", "-c", str(tmp_path / "absent.yaml"))
    assert proc.returncode == 2 and "error: config file not found:" in proc.stderr


def test_demo_dataset_layout(digits):
    train = (digits / "train_list.txt").read_text().splitlines()
    val = (digits / "val_list.txt").read_text().splitlines()
    assert len(train) + len(val) == 1797 and len(val) == 359  # scikit-learn's digits, 20% stratified
    assert {line.split()[1] for line in val} == {str(i) for i in range(10)}
    assert not {line.split()[0] for line in train} & {line.split()[0] for line in val}
    assert sorted(os.listdir(digits / "demo")) == sorted(f"{name}.png" for name in (
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))
    image = build_transforms([{"DecodeImage": {"to_rgb": True}}], "decode")((digits / "demo" / "seven.png").read_bytes())
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.max() > 200
