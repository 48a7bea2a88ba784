"""Non-finite numbers: a diverging run stops with one line naming the epoch, the iteration and the likely
cause (exit status 3) and saves nothing from non-finite weights; evaluation and inference say so instead
of printing NaN scores. The issue's repro: `-o Optimizer.lr.learning_rate=1e6` on the quick-start config
(today: NaN from about iteration 4, exit 0, a NaN best_model, `'scores': [nan, nan, nan]`)."""
import logging
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import QUICK_START, REPO, quick_config
from ppcls_ext import cli
from ppcls_ext.engine import Engine
from ppcls_ext.engine.losses import CombinedLoss
from ppcls_ext.engine.nonfinite import LossWatch, divergence_message
from ppcls_ext.errors import NonFiniteError
from test_training_loop import ReadbackCounter


@pytest.fixture
def recorded_losses(monkeypatch):
    """The training loss of every iteration, read in the test (the engine itself does not read it)."""
    losses = []
    forward = CombinedLoss.forward

    def recording(self, logits, label):
        values = forward(self, logits, label)
        if values["loss"].size == 1:  # the training loss; evaluation's is per sample
            losses.append(float(values["loss"]))
        return values

    monkeypatch.setattr(CombinedLoss, "forward", recording)
    return losses


def run_cli(mode, args, capsys):
    """`cli.main` in this process: (exit status, stdout, stderr). The log handlers it bound to the
    captured stdout are detached afterwards (they would write to a closed stream in later tests)."""
    try:
        status = cli.main(mode, args)
        captured = capsys.readouterr()
    finally:
        log = logging.getLogger("ppcls_ext")
        for handler in [h for h in log.handlers if getattr(h, "_ppcls_ext", False)]:
            log.removeHandler(handler)
    return status, captured.out, captured.err


def saved_files(tmp_path):
    out = tmp_path / "output" / "MicroNet_M0"
    return sorted(f for f in os.listdir(out) if not f.endswith(".log")) if out.is_dir() else []


def test_nan_loss_stops_the_tool_naming_the_first_bad_iteration(digits, tmp_path, recorded_losses, capsys):
    """Log lines every 8 iterations only: the loss watch is read at the end of the epoch, and still names
    the first iteration whose loss was NaN, with the learning rate applied there."""
    options = [f"Global.output_dir={tmp_path}/output", "Global.eval_during_train=False",
               f"DataLoader.Train.dataset.image_root={digits}", f"DataLoader.Train.dataset.cls_label_path={digits}/train_small.txt",
               "DataLoader.Train.sampler.batch_size=32",
               "Optimizer.lr.learning_rate=1e6", "Global.print_batch_step=8", "Global.epochs=2"]
    status, out, err = run_cli("train", ["-c", QUICK_START] + [arg for option in options for arg in ("-o", option)], capsys)
    first_bad = next(i for i, loss in enumerate(recorded_losses) if not np.isfinite(loss))
    assert 0 < first_bad < 8 and len(recorded_losses) == 8  # the epoch ran to its end, then stopped
    lr = 1e6 * first_bad / 8  # one warm-up epoch of 8 steps from 0
    assert status == 3
    assert err.strip().splitlines()[-1] == (
        f"error: training stopped: the loss is nan at epoch 1, iteration {first_bad}; the learning rate ({lr:.6g} at "
        f"that iteration; Optimizer.lr.learning_rate) is likely too high; no checkpoint was written")
    assert "nan" not in out and "[Avg]" not in out and "Traceback" not in err
    assert saved_files(tmp_path) == []


def test_divergence_in_a_later_epoch_keeps_the_earlier_checkpoints(digits, tmp_path, recorded_losses):
    engine = Engine(quick_config(digits, tmp_path, "Global.epochs=3", "Global.save_interval=1", "Global.eval_interval=1",
                                 "Optimizer.lr={name: Piecewise, decay_epochs: [1], values: [0.05, 1000000.0]}"), "train")
    with pytest.raises(NonFiniteError) as error:
        engine.train()
    first_bad = next(i for i, loss in enumerate(recorded_losses) if not np.isfinite(loss))
    assert first_bad >= 8  # epoch 1 (8 iterations) was finite
    assert f"the loss is nan at epoch 2, iteration {first_bad - 8}; the learning rate (1e+06 at that iteration; " \
           f"Optimizer.lr.values) is likely too high;" in str(error.value)
    assert str(error.value).endswith("nothing from epoch 2 was saved; the checkpoints up to epoch 1 are kept")
    out = tmp_path / "output" / "MicroNet_M0"
    assert saved_files(tmp_path) == sorted(f"{prefix}.{ext}" for prefix in ("best_model", "epoch_1", "latest")
                                           for ext in ("pdparams", "pdstates", "pdopt") if prefix != "best_model" or ext != "pdopt")
    assert paddle.load(str(out / "latest.pdstates"))["epoch"] == 1
    for prefix in ("latest", "best_model"):
        assert all(np.isfinite(v.numpy()).all() for v in paddle.load(str(out / f"{prefix}.pdparams")).values())


def test_weights_gone_nonfinite_are_not_saved_even_when_the_loss_watch_waits(digits, tmp_path):
    engine = Engine(quick_config(digits, tmp_path, "Global.epochs=1", "Optimizer.lr.learning_rate=1e6",
                                 "Global.nonfinite_loss_patience=100"), "train")
    with pytest.raises(NonFiniteError, match=r"^training stopped after epoch 1: \d+ of 192 model tensors hold NaN or Inf "
                                             r"\(e\.g\. .*\); the learning rate is likely too high; no checkpoint was written$"):
        engine.train()
    assert saved_files(tmp_path) == []


def test_the_loss_watch_counts_consecutive_nonfinite_losses_on_the_device(monkeypatch):
    nan, inf = float("nan"), float("inf")
    sequence = [1.0, nan, nan, 2.0, inf, nan, nan, nan, 3.0]
    for patience, expected in ((1, (1, nan)), (2, (1, nan)), (3, (4, inf)), (4, (4, inf)), (5, None)):
        watch = LossWatch(patience)
        counter = ReadbackCounter(monkeypatch)
        for value in sequence:
            watch.update(paddle.to_tensor(value, dtype="float32"))
        assert counter.counts == {}  # updates never wait for the device
        monkeypatch.undo()
        result = watch.tripped()
        if expected is None:
            assert result is None
        else:
            assert result[0] == expected[0] and (np.isnan(result[1]) if np.isnan(expected[1]) else result[1] == expected[1])
    watch.reset()
    assert watch.tripped() is None


def test_the_amp_message_names_the_streak_and_the_loss_scale():
    """Under AMP (patience 10 by default) the line names where the run of bad losses began and the scale."""
    assert divergence_message(3, 17, float("inf"), 10, 0.4, "Optimizer.lr.learning_rate", {"level": "O2", "scale": 1024.0},
                              "nothing from epoch 3 was saved; the checkpoints up to epoch 2 are kept") == (
        "training stopped: the loss has been NaN/Inf for 10 consecutive iterations from epoch 3, iteration 17 (first inf); "
        "the learning rate (0.4 at that iteration; Optimizer.lr.learning_rate) is likely too high, or float16 overflows "
        "under AMP O2 (loss scale 1024): lower the learning rate, or train with AMP.use_amp: False to check; nothing "
        "from epoch 3 was saved; the checkpoints up to epoch 2 are kept")


def _engine_with_weights(digits, tmp_path, mode, weights, *overrides):
    path = str(tmp_path / "weights.pdparams")
    paddle.save(weights, path)
    return Engine(quick_config(digits, tmp_path, f"Global.pretrained_model={path}", *overrides), mode)


def test_eval_and_infer_refuse_nonfinite_weights(digits, tmp_path, capsys):
    weights = Engine(quick_config(digits, tmp_path), "infer").model.state_dict()
    weights["stem.conv.conv_kx1.conv.weight"] = paddle.full_like(weights["stem.conv.conv_kx1.conv.weight"], float("nan"))
    message = (f"Global.pretrained_model={tmp_path}/weights.pdparams: 1 of 192 weight tensors hold NaN or Inf (e.g. "
               f"stem.conv.conv_kx1.conv.weight), as a diverged training run leaves them; they cannot give meaningful scores")
    for mode, run in (("eval", Engine.eval), ("infer", Engine.infer)):
        with pytest.raises(NonFiniteError) as error:
            run(_engine_with_weights(digits, tmp_path, mode, weights))
        assert str(error.value) == message
    capsys.readouterr()
    status, out, err = run_cli("eval", ["-c", QUICK_START, "-o", f"Global.pretrained_model={tmp_path}/weights.pdparams",
                                        "-o", f"DataLoader.Eval.dataset.image_root={digits}",
                                        "-o", f"DataLoader.Eval.dataset.cls_label_path={digits}/val_small.txt"], capsys)
    assert status == 3 and err.strip().splitlines() == [f"error: {message}"] and "[Eval]" not in out


def test_nonfinite_outputs_of_finite_weights_are_errors_not_scores(digits, tmp_path):
    """Finite weights whose outputs overflow: MicroNet's classifier (Linear, BatchNorm1D, Hardswish) made to
    output 3e38 by its linear layer, which the batch norm doubles beyond float32's largest number."""
    model = Engine(quick_config(digits, tmp_path), "infer").model
    model.classifier.fc.weight.set_value(paddle.zeros_like(model.classifier.fc.weight))
    model.classifier.fc.bias.set_value(paddle.full_like(model.classifier.fc.bias, 3e38))
    model.classifier.bn.weight.set_value(paddle.full_like(model.classifier.bn.weight, 2.0))
    weights = model.state_dict()
    engine = _engine_with_weights(digits, tmp_path, "eval", weights)
    with pytest.raises(NonFiniteError, match=r"^\[Eval\] epoch 0: the model's outputs hold NaN or Inf for 37 of 37 images, "
                                             r"so no scores are reported$"):
        engine.eval()
    images = [str(p) for p in sorted((digits / "images" / "val" / "4").iterdir())[:3]]
    results = _engine_with_weights(digits, tmp_path, "infer", weights, f"Infer.infer_imgs={images}").infer()
    assert results == [{"file_name": path, "error": "the model's output holds NaN or Inf; no scores"} for path in images]


def test_two_processes_stop_together(digits, tmp_path):
    """The watch is gathered across ranks where the log values are: both ranks stop at the same point with
    the same line, and the launcher's exit status says so (no rank is left waiting in a collective)."""
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "log"),
               os.path.join(REPO, "tools", "train.py"), "-c", QUICK_START]
    for option in (f"Global.output_dir={tmp_path}/output", "Global.eval_during_train=False", "Global.print_batch_step=2",
                   f"DataLoader.Train.dataset.image_root={digits}", "Optimizer.lr.learning_rate=1e6",
                   f"DataLoader.Train.dataset.cls_label_path={digits}/train_small.txt", "DataLoader.Train.sampler.batch_size=16"):
        command += ["-o", option]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    errors = [[line for line in (tmp_path / "log" / f"workerlog.{rank}").read_text().splitlines() if line.startswith("error:")]
              for rank in range(2)]
    assert proc.returncode != 0 and len(errors[0]) == 1 and errors[0] == errors[1], proc.stdout[-2000:]
    assert errors[0][0].startswith("error: training stopped: the loss is nan at epoch 1, iteration ")
    assert "Traceback" not in proc.stdout + proc.stderr and saved_files(tmp_path) == []
