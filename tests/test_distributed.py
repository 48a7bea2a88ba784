"""`python -m paddle.distributed.launch --nproc_per_node 2` on CPU (gloo): data-parallel training
equals one process with the same global batch, and evaluation counts every image once."""
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest

import ppcls_ext

from conftest import QUICK_START, REPO

# deterministic data (no random augmentation) and no dropout, so that the two runs can be compared
DETERMINISTIC = [
    "Arch.dropout=0.0", "Global.seed=0", "Global.epochs=1", "Global.eval_during_train=False",
    "DataLoader.Train.dataset.transform_ops=[{DecodeImage: {to_rgb: True}}, "
    "{NormalizeImage: {scale: 1.0/255.0, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], order: ''}}]",
    "DataLoader.Train.sampler.batch_size=32",
]


def run(tool, options, processes=1, log_dir=None):
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "paddle.distributed.launch", "--nproc_per_node", str(processes), "--log_dir", str(log_dir)]
    command += [os.path.join(REPO, "tools", tool), "-c", QUICK_START]
    for option in options:
        command += ["-o", option]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    if processes > 1:
        log += "".join(open(os.path.join(log_dir, f"workerlog.{rank}")).read() for rank in range(processes))
    assert proc.returncode == 0, log[-4000:]
    return log


@pytest.fixture(scope="module")
def data(digits, tmp_path_factory):
    """128 training images (two global batches of 64) and the 37-image val list."""
    root = tmp_path_factory.mktemp("dist")
    lines = (digits / "train_small.txt").read_text().splitlines()[:128]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return [f"DataLoader.Train.dataset.image_root={digits}", f"DataLoader.Train.dataset.cls_label_path={root}/train.txt",
            f"DataLoader.Eval.dataset.image_root={digits}", f"DataLoader.Eval.dataset.cls_label_path={digits}/val_small.txt"], root


def trainable(path):
    return {k: v.numpy() for k, v in paddle.load(path).items() if not k.endswith(("_mean", "_variance"))}


def test_two_processes_train_like_one_with_the_same_global_batch(data, tmp_path):
    options, _ = data
    # one process: batches of 32, two per optimizer step; two processes: 32 each, one step per batch
    run("train.py", options + DETERMINISTIC + [f"Global.output_dir={tmp_path}/one", "Global.update_freq=2"])
    log = run("train.py", options + DETERMINISTIC + [f"Global.output_dir={tmp_path}/two"], processes=2, log_dir=tmp_path / "log")
    assert "[Train][Epoch 1/1][Iter: 0/2]" in log  # each rank saw half of the 4 batches
    one = trainable(f"{tmp_path}/one/MicroNet_M0/latest.pdparams")
    two = trainable(f"{tmp_path}/two/MicroNet_M0/latest.pdparams")
    for key in one:
        np.testing.assert_allclose(two[key], one[key], atol=2e-5, rtol=1e-4, err_msg=key)
    paddle.seed(0)  # the engine's initialisation for Global.seed=0 on rank 0
    initial = {k: v.numpy() for k, v in ppcls_ext.create_model("MicroNet_M0", class_num=10, dropout=0.0).state_dict().items()}
    movement = max(np.abs(one[k] - initial[k]).max() for k in one)
    assert movement > 1e-2  # the two steps changed the weights far beyond the tolerance above


def test_two_process_evaluation_counts_every_image_once(data, tmp_path):
    options, _ = data
    run("train.py", options + DETERMINISTIC + [f"Global.output_dir={tmp_path}/w"])
    weights = [f"Global.pretrained_model={tmp_path}/w/MicroNet_M0/latest", "DataLoader.Eval.sampler.batch_size=4"]
    single = run("eval.py", options + weights)
    double = run("eval.py", options + weights, processes=2, log_dir=tmp_path / "log")

    def summary(log):
        return re.findall(r"\[Eval\]\[Epoch 0\]\[Avg\](.*)", log)[0]

    assert summary(single).endswith("images: 37")  # 37 images; the sampler pads to 38 for two ranks
    assert summary(double) == summary(single)
