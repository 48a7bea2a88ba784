"""`python -m paddle.distributed.launch --nproc_per_node 2` on CPU (gloo): data-parallel training
equals one process with the same global batch, evaluation counts every image once, the training log and
the BN running statistics are those of both ranks."""
import json
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


def run(tool, options, processes=1, log_dir=None, config=QUICK_START):
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "paddle.distributed.launch", "--nproc_per_node", str(processes), "--log_dir", str(log_dir)]
    command += [os.path.join(REPO, "tools", tool), "-c", config]
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


def test_two_processes_log_the_mean_of_both_ranks_and_average_bn_statistics(digits, data, tmp_path, monkeypatch):
    """150 images, batches of 32 per rank (32, 32, 11 each): the rank-0 `[Train]` lines equal the
    sample-weighted mean of both ranks' per-batch values, recorded in each process by distributed_probe.py
    (before this change they were rank 0's alone); and after the epoch the BN running statistics of the
    model and of the EMA, in memory and in the saved checkpoint, are the mean of the two ranks' (which
    differ, each rank having seen other images)."""
    options, _ = data
    lines = (digits / "train_list.txt").read_text().splitlines()[:150]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    log = run(os.path.join(REPO, "tests", "distributed_probe.py"), options + [
        f"DataLoader.Train.dataset.cls_label_path={tmp_path}/train.txt", "DataLoader.Train.sampler.batch_size=32",
        "Global.epochs=1", "Global.eval_during_train=False", "Global.print_batch_step=2", "EMA.decay=0.9",
        f"Global.output_dir={tmp_path}/out"], processes=2, log_dir=tmp_path / "log")

    names = ["top1", "top5", "CELoss", "loss"]
    ranks = [json.loads((tmp_path / f"rank{r}_batches.json").read_text()) for r in range(2)]
    assert [[b["n"] for b in rank] for rank in ranks] == [[32, 32, 11]] * 2
    weighted = sum(np.array([[b[k] * b["n"] for k in names] for b in rank]) for rank in ranks)
    counts = sum(np.array([b["n"] for b in rank], dtype=np.float64) for rank in ranks)
    running = np.cumsum(weighted, axis=0) / np.cumsum(counts)[:, None]
    rank0 = np.cumsum(np.array([[b[k] * b["n"] for k in names] for b in ranks[0]]), axis=0)[-1] / 75
    for iteration, tag in ((0, "[Iter: 0/3]"), (2, "[Iter: 2/3]"), (2, "[Avg]")):
        line = next(l for l in log.splitlines() if f"[Train][Epoch 1/1]{tag}" in l)
        logged = dict(re.findall(r"(\w+): (-?[\d.]+)", line.split(tag)[1]))
        assert [logged[k] for k in names] == [f"{v:.5f}" for v in running[iteration]], line
    assert abs(rank0 - running[-1]).max() > 1e-3  # rank 0's own means differ: the test can tell them apart

    stats = [np.load(tmp_path / f"rank{r}_stats.npz") for r in range(2)]
    keys = [k[len("before:"):] for k in stats[0].files if k.startswith("before:")]
    assert {k.split("/")[0] for k in keys} == {"model", "ema"} and len(keys) > 50
    # with EMA, PaddleClas's layout keeps the EMA weights in .pdparams and the trained model's in .pdema
    saved = {"model": paddle.load(f"{tmp_path}/out/MicroNet_M0/latest.pdema"),
             "ema": paddle.load(f"{tmp_path}/out/MicroNet_M0/latest.pdparams")}
    spread = max(np.abs(stats[0][f"before:{k}"] - stats[1][f"before:{k}"]).max() for k in keys)
    assert spread > 1e-3
    for key in keys:
        mean = (stats[0][f"before:{key}"].astype(np.float64) + stats[1][f"before:{key}"]) / 2
        for rank in range(2):
            np.testing.assert_allclose(stats[rank][f"after:{key}"], mean, rtol=1e-6, atol=1e-7, err_msg=key)
        model, name = key.split("/", 1)
        np.testing.assert_array_equal(saved[model][name].numpy(), stats[0][f"after:{key}"], err_msg=key)
