"""tools/gpu_check.py: on this CPU build it says what it needs (one line, exit 2); the parts that do not
need a GPU (training steps, throughput timing, inference against dygraph, the table) run here on CPU."""
import os
import subprocess
import sys

import numpy as np
import paddle

from conftest import REPO
from ppcls_ext import gpu_check
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
    speed = gpu_check.images_per_second(gpu_check.build("MicroNet_M0", 10, 0, "NHWC"), images, labels, 2, 1,
                                        lambda: calls.append(1), amp_level="O0")
    assert speed > 0 and len(calls) == 2


def test_inference_rows_and_table(tmp_path):
    images, _ = gpu_check.fixed_batch(2, 48, 10)
    model = gpu_check.build("MicroNet_M0", 10, seed=0)
    variants = [("paddle-cpu", "pir", InferenceOptions(cpu_threads=1, enable_mkldnn=False)),
                ("paddle-gpu", "pir", InferenceOptions(device="gpu"))]
    cpu, gpu = gpu_check.inference_rows("MicroNet_M0", model, images, str(tmp_path), variants)
    assert cpu.result == "ok" and cpu.measured.startswith("rel. logit diff ") and "ms at batch 2" in cpu.measured
    assert float(cpu.measured.split()[3].rstrip(",")) < 1e-4
    assert gpu.result.startswith("FAIL: use_gpu needs a CUDA build of PaddlePaddle")
    skipped = gpu_check.Row("MicroNet_M0", "SyncBatchNorm", "1 step", "skipped: needs 2+ GPUs")
    table = gpu_check.results_table([cpu, gpu, skipped]).splitlines()
    assert table[0] == "| model | check | setting | result | measured |" and len(table) == 5
    assert table[2].startswith("| MicroNet_M0 | inference | paddle-cpu (pir export) | ok | rel. logit diff ") and table[2].count("|") == 6
    assert gpu_check.exit_status([cpu, skipped]) == 0 and gpu_check.exit_status([cpu, gpu]) == 1

