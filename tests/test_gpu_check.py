"""tools/gpu_check.py: on this CPU build it says what it needs (one line, exit 2); the parts that do not
need a GPU run here on CPU: training steps, throughput timing and its verdict, inference against dygraph on
the PIR and the legacy export, the table, the exit status, check selection (--only/--skip), and the Engine
row's real runs (which the CPU build reports as skipped: AMP needs a GPU)."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import REPO
from ppcls_ext import gpu_check, gpu_check_engine
from ppcls_ext.inference.options import InferenceOptions


def test_cpu_build_says_in_one_line_what_it_needs():
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gpu_check.py")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if not line.startswith(" ") and "Warning" not in line]
    assert lines == [f"gpu_check needs a CUDA build of PaddlePaddle (paddlepaddle-gpu) and an NVIDIA GPU; this is "
                     f"the CPU build {paddle.__version__}: nothing was checked"]


def test_training_steps_lower_the_loss_of_a_fixed_batch():
    images, labels = gpu_check.fixed_batch(8, 32, 10)
    losses = gpu_check.train_steps(gpu_check.build("MicroNet_M0", 10, seed=0), images, labels, 4, amp_level="O0", lr=0.05)
    # the first loss is the cross-entropy of the untouched model (numpy), and the steps lower it
    model = gpu_check.build("MicroNet_M0", 10, seed=0)
    model.train()
    logits = model(paddle.to_tensor(images)).numpy().astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    expected = np.mean(np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0] - logits[np.arange(8), labels[:, 0]])
    assert abs(losses[0] - expected) < 1e-5
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_throughput_waits_for_the_device_before_reading_the_clock():
    images, labels = gpu_check.fixed_batch(4, 32, 10)
    calls = []
    speed, losses = gpu_check.images_per_second(gpu_check.build("MicroNet_M0", 10, 0, "NHWC"), images, labels, 2, 1,
                                                lambda: calls.append(1), amp_level="O0")
    assert speed > 0 and len(calls) == 2 and len(losses) == 2 and all(np.isfinite(losses))


def test_throughput_row_fails_when_the_timed_steps_compute_nan(monkeypatch):
    """A fast step that computes NaN is no result: the row says FAIL (it used to say ok whatever happened)."""
    images, labels = gpu_check.fixed_batch(2, 32, 10)
    monkeypatch.setattr(gpu_check, "train_steps", lambda model, images, labels, steps, amp_level="O1": [float("nan")] * steps)
    rows = gpu_check.layout_rows("MicroNet_M0", images, labels, 10, 2, lambda: None)
    assert [row.result for row in rows] == ["FAIL: a timed step's loss is not finite"] * 2


def test_inference_rows_serve_the_legacy_export_too_and_the_table(tmp_path):
    """The legacy row runs: its export is written as tools/export_model.py writes `export_format: legacy`
    (inference.pdmodel), where the old check looked for inference.json and reported it skipped."""
    folder = gpu_check.photo_folder(str(tmp_path / "photos"), 2, 48, seed=1)
    images = gpu_check.photo_batch(folder, 2, 48)
    model = gpu_check.build("MicroNet_M0", 10, seed=0)
    variants = [gpu_check.Variant("paddle-cpu", "legacy", InferenceOptions(cpu_threads=1, enable_mkldnn=False)),
                gpu_check.Variant("paddle-gpu", "legacy", InferenceOptions(device="gpu"))]
    legacy, gpu = gpu_check.inference_rows("MicroNet_M0", model, images, str(tmp_path), variants)
    assert os.path.isfile(tmp_path / "legacy" / "inference.pdmodel") and not os.path.exists(tmp_path / "legacy" / "inference.json")
    assert legacy.result == "ok" and legacy.measured.startswith("rel. logit diff ") and "ms at batch 2" in legacy.measured
    assert float(legacy.measured.split()[3].rstrip(",")) < 1e-4
    assert gpu.result.startswith("FAIL: use_gpu needs a CUDA build of PaddlePaddle")
    skipped = gpu_check.Row("MicroNet_M0", "SyncBatchNorm", "1 step", "skipped: needs 2+ GPUs")
    table = gpu_check.results_table([legacy, gpu, skipped]).splitlines()
    assert table[0] == "| model | check | setting | result | measured |" and len(table) == 5
    assert table[2].startswith("| MicroNet_M0 | inference | paddle-cpu (legacy export) | ok | rel. logit diff ")
    assert table[2].count("|") == 6


def test_a_skipped_or_failed_row_makes_the_exit_status_non_zero():
    ok = gpu_check.Row("MicroNet_M0", "inference", "paddle-gpu (pir export)", "ok")
    skipped = gpu_check.Row("MicroNet_M0", "SyncBatchNorm", "1 step", "skipped: needs 2+ GPUs")
    failed = gpu_check.Row("MicroNet_M0", "inference", "trt-fp16 (pir export)", "FAIL: above 0.05")
    assert gpu_check.exit_status([ok]) == 0
    assert gpu_check.exit_status([ok, skipped]) == 3
    assert gpu_check.exit_status([ok, skipped, failed]) == 1


def test_only_and_skip_choose_the_checks_that_run(monkeypatch, tmp_path):
    assert gpu_check.selected_checks(None, None) == list(gpu_check.CHECKS)
    assert gpu_check.selected_checks("engine, trt-int8", None) == ["engine", "trt-int8"]
    assert "syncbn" not in gpu_check.selected_checks(None, "syncbn")
    with pytest.raises(ValueError, match="unknown check 'trt-int4'; the checks are amp, throughput, engine"):
        gpu_check.selected_checks("trt-int4", None)
    ran = []
    monkeypatch.setattr(gpu_check.paddle, "set_device", lambda device: None)
    for function in ("amp_rows", "layout_rows", "engine_rows", "inference_rows", "photo_folder", "photo_batch"):
        monkeypatch.setattr(gpu_check, function, lambda *args, function=function, **kwargs: ran.append(function) or [])
    monkeypatch.setattr(gpu_check, "sync_batchnorm_row", lambda workdir: ran.append("sync_batchnorm_row"))
    monkeypatch.setattr(gpu_check, "gpu_variants", lambda *args: [a for a in args[-1] if a.startswith("trt")])
    gpu_check.run_checks(["MicroNet_M0"], 2, 32, 1, str(tmp_path), ["amp", "trt-int8"])
    assert ran == ["photo_folder", "photo_folder", "amp_rows", "photo_batch", "inference_rows"]
    ran.clear()
    gpu_check.run_checks(["MicroNet_M0"], 2, 32, 1, str(tmp_path), gpu_check.selected_checks(None, "engine,trt-fp32,"
                         "trt-fp16,trt-int8,trt-int8-pir,paddle-gpu"))
    assert ran == ["amp_rows", "layout_rows", "sync_batchnorm_row"]


def test_bad_check_names_are_refused_in_one_line():
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "--skip", "synbn"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("unknown check 'synbn'; the checks are amp, throughput, engine, "
                                                         "paddle-gpu, trt-fp32, trt-fp16, trt-int8, trt-int8-pir, syncbn")


def test_engine_row_runs_real_engine_steps_and_a_resume_and_is_honest_on_cpu(digits, tmp_path):
    """On this CPU build the Engine trains float32 (AMP needs a GPU): the row is skipped, not ok, after
    the runs themselves (update_freq 2, EMA, a resume at epoch 3) went through."""
    row = gpu_check_engine.engine_row("MicroNet_M0", "O2", str(digits), str(tmp_path), device="gpu")
    assert row["result"] == "skipped: the Engine runs on cpu, where AMP is off (it trains float32)"
    losses = [float(v) for v in row["measured"].split(";")[0].removeprefix("loss ").split(" -> ")]
    assert len(losses) == 3 and all(np.isfinite(losses)) and "resumed at epoch 3" in row["measured"]
    checkpoints = tmp_path / "MicroNet_M0_O2" / "output" / "MicroNet_M0"
    assert (checkpoints / "epoch_3.pdparams").is_file() and (checkpoints / "epoch_2.pdema").is_file()


def test_engine_verdicts_on_a_gpu():
    assert gpu_check_engine.verdicts("O2", "O2", [2.3, 2.1, 2.0], 3, 512.0, 512.0) == []
    assert gpu_check_engine.verdicts("O2", None, [2.3, float("nan"), 2.0], 1, 512.0, 1024.0) == [
        "AMP ran at float32, not O2", "a loss is not finite", "resumed at epoch 1, not 3",
        "loss scale 1024.0 after the resume, 512.0 before"]

