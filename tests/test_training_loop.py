"""The training loop: no host read-back outside the log lines, log values that are the sample-weighted means
PaddleClas prints, the loader options that reach paddle.io, and EMA against a numpy recurrence."""
import collections
import multiprocessing
import re

import numpy as np
import paddle
import pytest

from conftest import quick_config
from ppcls_ext.config import ConfigError
from ppcls_ext.data.loader import build_dataloader
from ppcls_ext.engine import Engine
from ppcls_ext.engine.ema import ModelEMA

#: every way a paddle.Tensor's value reaches the host (each waits for the device on a GPU)
READBACKS = ("numpy", "item", "tolist", "cpu", "__float__", "__int__", "__index__", "__bool__", "__array__", "__format__")


class ReadbackCounter:
    """Wraps the read-back methods of paddle.Tensor and counts the outermost calls per training iteration
    (`phase` is set by the marking loader below; reads after the last batch count as "end")."""

    def __init__(self, monkeypatch):
        self.counts = collections.Counter()
        self.phase = "setup"
        self._depth = 0
        for name in READBACKS:
            monkeypatch.setattr(paddle.Tensor, name, self._wrap(getattr(paddle.Tensor, name), name))

    def _wrap(self, method, name):
        def counted(tensor, *args, **kwargs):
            if self._depth == 0:
                self.counts[(self.phase, name)] += 1
            self._depth += 1
            try:
                return method(tensor, *args, **kwargs)
            finally:
                self._depth -= 1
        return counted

    def at(self, phase):
        return {name: count for (p, name), count in self.counts.items() if p == phase}

    def mark(self, loader):
        counter = self

        class Marking:
            num_workers = loader.num_workers
            batch_sampler = loader.batch_sampler

            def __len__(self):
                return len(loader)

            def __iter__(self):
                for iteration, batch in enumerate(loader):
                    counter.phase = iteration
                    yield batch
                counter.phase = "end"

        return Marking()


def _device_copy(value):
    """A copy that leaves the value on the device (a float, as the metric returned before, is wrapped)."""
    return value.detach().clone() if isinstance(value, paddle.Tensor) else paddle.to_tensor(value, dtype="float32")


def test_training_reads_back_only_for_log_lines_and_logs_the_weighted_means(digits, tmp_path, monkeypatch, engine_log):
    """8 iterations, log lines at 0 and 4 (print_batch_step=4), with EMA and update_freq=2. Before this
    change every iteration read 3 values back (top-k `.numpy()`, two `float(loss)`). The logged values
    are compared with today's arithmetic redone in numpy: per batch `float(value) * batch_size` summed
    in float64, divided by the sample count, printed with 5 decimals."""
    engine = Engine(quick_config(digits, tmp_path, "Global.epochs=1", "Global.eval_during_train=False",
                                 "EMA.decay=0.9", "Global.update_freq=2"), "train")
    batches = []  # (batch size, {name: device tensor}) per iteration, copied on the device
    loss, metric = engine.task.loss, engine.task.metric

    def recording_loss(logits, labels):
        values = loss(logits, labels)
        batches.append((logits.shape[0], {k: _device_copy(v) for k, v in values.items()}))
        return values

    def recording_metric(logits, labels):
        values = metric(logits, labels)
        batches[-1][1].update({k: _device_copy(v) for k, v in values.items()})
        return values

    engine.task.loss, engine.task.metric = recording_loss, recording_metric
    counter = ReadbackCounter(monkeypatch)
    engine.trainer.loader = counter.mark(engine.train_loader)
    engine.train()
    monkeypatch.undo()

    assert engine.iters_per_epoch == 8 and engine.print_step == 4
    for iteration in range(8):
        if iteration % 4:
            assert counter.at(iteration) == {}, (iteration, counter.at(iteration))
        else:
            assert counter.at(iteration), iteration  # the wrapper does see the log line's read-back
    sizes = np.array([n for n, _ in batches], dtype=np.float64)
    names = ["top1", "top5", "CELoss", "loss"]  # the order of the log line
    assert sorted(batches[0][1]) == sorted(names)
    values = np.array([[float(v[k].numpy()) for k in names] for _, v in batches])
    running = np.cumsum(values * sizes[:, None], axis=0) / np.cumsum(sizes)[:, None]
    lines = [line for line in engine_log.text.splitlines() if "[Train][Epoch 1/1]" in line]
    for iteration in (0, 4):
        line = next(line for line in lines if f"[Iter: {iteration}/8]" in line)
        logged = dict(re.findall(r"(\w+): (-?[\d.]+)", line.split("lr(Cosine)")[1]))
        assert [logged[k] for k in names] == [f"{v:.5f}" for v in running[iteration]], line
    average = next(line for line in lines if "[Avg]" in line)
    assert average.endswith(", ".join(f"{k}: {v:.5f}" for k, v in zip(names, running[-1])))
    assert engine.history[-1]["train"] == pytest.approx(dict(zip(names, running[-1])), abs=1e-12)


def test_loader_options_reach_paddle_io(digits, tmp_path):
    """PaddleClas's `num_workers` / `use_shared_memory` and paddle.io's `prefetch_factor` are passed on;
    paddle.io then stages batches in pinned memory through its buffered reader (its defaults in dygraph,
    read from paddle/io/reader.py: `use_buffer_reader=True`, `pin_memory` from `use_pinned_memory()`)."""
    config = quick_config(digits, tmp_path, "DataLoader.Train.loader.num_workers=2",
                          "DataLoader.Train.loader.use_shared_memory=False", "DataLoader.Train.loader.prefetch_factor=4")
    loader = build_dataloader(config, "Train", 10)
    assert isinstance(loader, paddle.io.DataLoader)
    assert (loader.num_workers, loader.use_shared_memory, loader.prefetch_factor) == (2, False, 4)
    assert loader.use_buffer_reader and loader.pin_memory
    batches = list(loader)  # run to the end: the workers exit (later tests count child processes)
    assert len(batches) == 8 and batches[0][0].shape == [32, 3, 32, 32] and batches[0][1].shape[0] == 32
    assert multiprocessing.active_children() == []
    for option, message in (("num_worker=2", r"DataLoader.Train.loader: unknown key\(s\) \['num_worker'\]; known: "
                                             r"normalize_on_device, num_workers, prefetch_factor, use_shared_memory"),
                            ("prefetch_factor=0", r"DataLoader.Train.loader.prefetch_factor must be an integer >= 1, got 0"),
                            ("num_workers=-1", r"num_workers must be an integer >= 0, got -1")):
        with pytest.raises(ConfigError, match=message):
            build_dataloader(quick_config(digits, tmp_path, f"DataLoader.Train.loader.{option}"), "Train", 10)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_follows_the_numpy_recurrence(warmup):
    """ema_n = d_n * ema_(n-1) + (1 - d_n) * w_n, ema_0 = w_0, with TensorFlow's warm-up
    d_n = min(decay, (1 + n) / (10 + n)) where n counts the updates before this one (decay 0.9: the
    warm-up is below it for all 30 steps); BN running statistics are averaged like the weights."""
    paddle.seed(3)
    model = paddle.nn.Sequential(paddle.nn.Conv2D(2, 3, 1), paddle.nn.BatchNorm2D(3))
    ema = ModelEMA(model, decay=0.9, warmup=warmup)
    rng = np.random.default_rng(0)
    state = {k: v.numpy().astype(np.float64) for k, v in model.state_dict().items()}
    expected = dict(state)
    for n in range(30):
        for key, tensor in model.state_dict().items():
            tensor.set_value(rng.normal(size=tensor.shape).astype("float32"))
        decay = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
        current = {k: v.numpy().astype(np.float64) for k, v in model.state_dict().items()}
        expected = {k: decay * expected[k] + (1 - decay) * current[k] for k in expected}
        ema.update(model)
        if n in (0, 1, 5, 29):
            for key, value in ema.state_dict().items():
                np.testing.assert_allclose(value.numpy(), expected[key], rtol=1e-5, atol=1e-6, err_msg=f"{key} after {n + 1}")
    assert ema.updates == 30 and ema.current_decay() == pytest.approx(31 / 40 if warmup else 0.9)
