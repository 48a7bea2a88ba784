"""Training numerics against independent references, several steps each: RMSPropTF against a numpy
TensorFlow RMSProp, every LR schedule against its closed form, Paddle's scheduler and PaddleClas's,
the cross-entropy variants against paddle.nn.functional and numpy, weight-decay exemptions, global-norm
clipping and gradient accumulation against one large batch."""
import math
import os
import sys
from unittest import mock

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from conftest import REPO, quick_config
from ppcls_ext.config import ConfigError
from ppcls_ext.engine import Engine
from ppcls_ext.engine import front as front_module
from ppcls_ext.engine.losses import CELoss
from ppcls_ext.engine.optim import RMSPROP_TF_CHECKED_PADDLE, RMSPropTF, build_lr_schedule, build_optimizer

UPSTREAM = os.path.join(os.path.dirname(REPO), "shared", "upstream", "PaddleClas")


class Tiny(nn.Layer):
    """A 2-D weight, three 1-D parameters (one under a `bn` name) and BN statistics (not trained)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1D(2)


def constant(lr=0.1):
    return build_lr_schedule({"name": "Constant", "learning_rate": lr}, epochs=1, steps_per_epoch=10)


def trained(model):
    return {name: p for name, p in model.named_parameters() if not p.stop_gradient}


def apply_gradients(model, gradients):
    """Backward a loss whose gradient with respect to each trained parameter is `gradients[name]`."""
    loss = paddle.add_n([(p * paddle.to_tensor(gradients[name])).sum() for name, p in trained(model).items()])
    loss.backward()


def assert_steps_follow(model, optimizer, gradient_steps, expected, rtol=1e-5, atol=1e-7):
    """Step `optimizer` with each of `gradient_steps`; after each, the parameters are the reference's."""
    for gradients, want in zip(gradient_steps, expected):
        apply_gradients(model, gradients)
        optimizer.step()
        optimizer.clear_grad()
        for name, param in trained(model).items():
            np.testing.assert_allclose(param.numpy(), want[name], rtol=rtol, atol=atol, err_msg=name)


def random_gradients(model, rng, scale=1.0):
    return {name: (rng.normal(0, scale, p.shape)).astype("float32") for name, p in trained(model).items()}


# --- RMSProp ----------------------------------------------------------------------------------------

def tf_rmsprop(params, gradient_steps, lr, rho, momentum, epsilon, weight_decay, mean_square_start=1.0):
    """TensorFlow 1's ApplyRMSProp (tf.compat.v1.train.RMSPropOptimizer, mean square initialised to 1):
    ms += (g^2 - ms)(1 - rho); mom = momentum mom + lr g / sqrt(ms + eps); var -= mom, with the L2
    weight-decay gradient in g. Returns the parameters after every step."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    ms = {k: np.full_like(v, mean_square_start) for k, v in params.items()}
    mom = {k: np.zeros_like(v) for k, v in params.items()}
    history = []
    for gradients in gradient_steps:
        for k in params:
            g = gradients[k] + weight_decay * params[k]
            ms[k] += (g * g - ms[k]) * (1 - rho)
            mom[k] = momentum * mom[k] + lr * g / np.sqrt(ms[k] + epsilon)
            params[k] = params[k] - mom[k]
        history.append({k: v.copy() for k, v in params.items()})
    return history


@pytest.mark.parametrize("tf_style", [True, False])
def test_rmsprop_matches_tensorflows_update_over_several_steps(tf_style, rng):
    model = Tiny()
    cfg = {"name": "RMSProp", "momentum": 0.9, "rho": 0.9, "epsilon": 1e-3, "regularizer": {"name": "L2", "coeff": 0.01}}
    if not tf_style:
        cfg["tf_style"] = False
    optimizer = build_optimizer(cfg, model, constant(0.01))
    start = {k: p.numpy() for k, p in trained(model).items()}
    steps = [random_gradients(model, rng) for _ in range(5)]
    expected = tf_rmsprop(start, steps, 0.01, 0.9, 0.9, 1e-3, 0.01, mean_square_start=1.0 if tf_style else 0.0)
    assert_steps_follow(model, optimizer, steps, expected, rtol=2e-5, atol=1e-6)


def test_rmsprop_tf_start_comes_from_its_override_on_a_checked_paddle():
    """The mean square starts at 1 through the overridden `_add_accumulator` (a zero gradient leaves
    rho * 1); the Paddle running here is one it was checked with; a Paddle that bypassed the override
    would be caught at the first step."""
    assert ".".join(paddle.__version__.split(".")[:2]) in RMSPROP_TF_CHECKED_PADDLE, paddle.__version__
    model = Tiny()
    optimizer = RMSPropTF(learning_rate=0.1, rho=0.9, parameters=model.parameters())
    apply_gradients(model, {k: np.zeros(p.shape, "float32") for k, p in trained(model).items()})
    optimizer.step()
    mean_squares = {k: v.numpy() for k, v in optimizer.state_dict().items() if "_mean_square_" in k}
    assert len(mean_squares) == len(trained(model)) == len(optimizer.started_at_one)
    for value in mean_squares.values():
        np.testing.assert_allclose(value, 0.9, rtol=1e-6)

    bypassed = RMSPropTF(learning_rate=0.1, parameters=model.parameters())
    bypassed._add_accumulator = lambda *a, **k: paddle.optimizer.RMSProp._add_accumulator(bypassed, *a, **k)
    with pytest.raises(RuntimeError, match="without _add_accumulator"):
        bypassed.step()


@pytest.mark.parametrize("name", ["Momentum", "SGD", "RMSProp", "AdamW"])
def test_multi_precision_is_accepted_by_every_optimizer(name):
    """As PaddleClas accepts it; float32 master weights are what paddle.amp.decorate(O2) asks for the same way."""
    optimizer = build_optimizer({"name": name, "multi_precision": True}, Tiny(), constant())
    assert optimizer._multi_precision is True


# --- learning-rate schedules ------------------------------------------------------------------------

EPOCHS, SPE = 6, 5
TOTAL = EPOCHS * SPE


def trace(schedule, steps=TOTAL + 3):
    values = []
    for _ in range(steps):
        values.append(schedule.get_lr() if hasattr(schedule, "get_lr") else schedule())
        schedule.step()
    return np.array(values)


def ours(**cfg):
    return trace(build_lr_schedule(cfg, EPOCHS, SPE))


def closed_form(decay, warmup_steps=0, start=0.0, base=None):
    t = np.arange(TOTAL + 3)
    after = np.array([decay(s - warmup_steps) for s in t])
    if warmup_steps:
        return np.where(t < warmup_steps, start + (base - start) * t / warmup_steps, after)
    return after


def cosine(base, eta_min, total):
    return lambda s: eta_min + (base - eta_min) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))


SCHEDULES = {
    # name: (our config, closed form, Paddle's scheduler)
    "Cosine": ({"name": "Cosine", "learning_rate": 0.4, "eta_min": 0.01, "warmup_epoch": 1, "warmup_start_lr": 0.02},
               closed_form(cosine(0.4, 0.01, 25), 5, 0.02, 0.4),
               lambda: paddle.optimizer.lr.LinearWarmup(paddle.optimizer.lr.CosineAnnealingDecay(0.4, T_max=25, eta_min=0.01),
                                                        warmup_steps=5, start_lr=0.02, end_lr=0.4)),
    "Piecewise": ({"name": "Piecewise", "decay_epochs": [2, 4], "values": [0.1, 0.01, 0.001]},
                  closed_form(lambda s: 0.1 if s < 10 else 0.01 if s < 20 else 0.001),
                  lambda: paddle.optimizer.lr.PiecewiseDecay([10, 20], [0.1, 0.01, 0.001])),
    "Step": ({"name": "Step", "learning_rate": 0.1, "step_size": 2, "gamma": 0.5, "warmup_epoch": 1},
             closed_form(lambda s: 0.1 * 0.5 ** (s // 10), 5, 0.0, 0.1),
             lambda: paddle.optimizer.lr.LinearWarmup(paddle.optimizer.lr.StepDecay(0.1, step_size=10, gamma=0.5),
                                                      warmup_steps=5, start_lr=0.0, end_lr=0.1)),
    "Exponential": ({"name": "Exponential", "learning_rate": 0.016, "gamma": 0.97, "decay_epochs": 2.4,
                     "staircase": False},
                    closed_form(lambda s: 0.016 * 0.97 ** (s / 12.0)),
                    lambda: paddle.optimizer.lr.ExponentialDecay(0.016, gamma=0.97 ** (1 / 12.0))),
    "Exponential-staircase": ({"name": "Exponential", "learning_rate": 0.016, "gamma": 0.97, "decay_epochs": 2.4,
                               "warmup_epoch": 1},  # TF EfficientNet: 0.97 every 2.4 epochs, staircase, warmup
                              closed_form(lambda s: 0.016 * 0.97 ** math.floor(s / 12.0), 5, 0.0, 0.016), None),
    "MultiStepDecay": ({"name": "MultiStepDecay", "learning_rate": 0.2, "milestones": [1, 3], "gamma": 0.1,
                        "warmup_epoch": 1},
                       closed_form(lambda s: 0.2 * 0.1 ** (int(s >= 5) + int(s >= 15)), 5, 0.0, 0.2),
                       lambda: paddle.optimizer.lr.LinearWarmup(paddle.optimizer.lr.MultiStepDecay(0.2, [5, 15], gamma=0.1),
                                                                warmup_steps=5, start_lr=0.0, end_lr=0.2)),
    "Constant": ({"name": "Constant", "learning_rate": 0.05, "warmup_epoch": 2, "warmup_start_lr": 0.01},
                 closed_form(lambda s: 0.05, 10, 0.01, 0.05),
                 lambda: paddle.optimizer.lr.LinearWarmup(0.05, warmup_steps=10, start_lr=0.01, end_lr=0.05)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_matches_its_closed_form_and_paddles_scheduler(name):
    cfg, expected, paddle_schedule = SCHEDULES[name]
    got = ours(**cfg)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    if paddle_schedule is not None:  # up to the last step (Paddle's cosine rises again after T_max; ours holds)
        np.testing.assert_allclose(got[:TOTAL + 1], trace(paddle_schedule())[:TOTAL + 1], rtol=1e-5, atol=1e-9)


def test_epochwise_schedule_holds_each_epoch():
    got = ours(name="Cosine", learning_rate=0.4, warmup_epoch=1, by_epoch=True)
    epochs = np.arange(TOTAL + 3) // SPE
    expected = np.where(epochs < 1, 0.4 * epochs, [cosine(0.4, 0.0, 25)(e * SPE - 5) for e in epochs])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.skipif(not os.path.isdir(UPSTREAM), reason=f"needs PaddleClas's source at {UPSTREAM} (../shared/upstream/PaddleClas)")
@pytest.mark.parametrize("name", ["Cosine", "Piecewise", "Step", "Constant", "MultiStepDecay"])
def test_schedule_matches_paddleclas(name):
    """PaddleClas's own classes for the same `Optimizer.lr` section (ppcls/optimizer/learning_rate.py).
    Its `Constant` is a bare scheduler that ignores warmup keys; our Constant warms up like its `ConstLR`."""
    sys.path.insert(0, UPSTREAM)
    try:
        from ppcls.optimizer import learning_rate
    finally:
        sys.path.remove(UPSTREAM)
    cfg = dict(SCHEDULES[name][0])
    cls = getattr(learning_rate, "ConstLR" if name == "Constant" else cfg.pop("name"))
    cfg.pop("name", None)
    theirs = cls(epochs=EPOCHS, step_each_epoch=SPE, **cfg)()
    np.testing.assert_allclose(ours(**SCHEDULES[name][0])[:TOTAL + 1], trace(theirs)[:TOTAL + 1], rtol=1e-5, atol=1e-9)


# --- cross-entropy ----------------------------------------------------------------------------------

def numpy_ce(logits, target):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -(target * log_softmax).sum(axis=1)


def test_label_smoothing_and_soft_labels_match_paddle_and_numpy(rng):
    logits = rng.normal(0, 3, (6, 5)).astype("float32")
    labels = rng.integers(0, 5, 6)
    soft = rng.dirichlet(np.ones(5), 6).astype("float32")
    smoothed = np.eye(5)[labels] * 0.9 + 0.1 / 5
    x = paddle.to_tensor(logits)
    cases = [
        (CELoss(epsilon=0.1, reduction="none")(x, paddle.to_tensor(labels.reshape(-1, 1))),
         numpy_ce(logits, smoothed), F.cross_entropy(x, paddle.to_tensor(labels), label_smoothing=0.1, reduction="none")),
        (CELoss(reduction="none")(x, paddle.to_tensor(soft)), numpy_ce(logits, soft),
         F.cross_entropy(x, paddle.to_tensor(soft), soft_label=True, reduction="none")),
        (CELoss(epsilon=0.1, reduction="none")(x, paddle.to_tensor(soft)), numpy_ce(logits, soft * 0.9 + 0.02), None),
        (CELoss()(x, paddle.to_tensor(labels)), numpy_ce(logits, np.eye(5)[labels]).mean(),
         F.cross_entropy(x, paddle.to_tensor(labels))),
    ]
    for got, expected, paddles in cases:
        np.testing.assert_allclose(got.numpy().reshape(-1), np.reshape(expected, -1), rtol=1e-5)
        if paddles is not None:
            np.testing.assert_allclose(got.numpy().reshape(-1), paddles.numpy().reshape(-1), rtol=1e-5)


# --- weight decay, clipping -------------------------------------------------------------------------

def momentum_reference(params, gradient_steps, lr, momentum, coeffs, clip=None):
    """Paddle's Momentum (velocity = mu v + g + coeff p; p -= lr v), after optional global-norm clipping
    of the raw gradients (g *= clip / max(clip, ||g||), before the decay term is added)."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    history = []
    for gradients in gradient_steps:
        gradients = {k: g.astype(np.float64) for k, g in gradients.items()}
        if clip is not None:
            norm = math.sqrt(sum(float((g ** 2).sum()) for g in gradients.values()))
            gradients = {k: g * clip / max(clip, norm) for k, g in gradients.items()}
        for k in params:
            velocity[k] = momentum * velocity[k] + gradients[k] + coeffs[k] * params[k]
            params[k] = params[k] - lr * velocity[k]
        history.append({k: v.copy() for k, v in params.items()})
    return history


@pytest.mark.parametrize("exemption, exempt", [
    ({"no_weight_decay_name": "bn"}, {"bn.weight", "bn.bias"}),
    ({"no_weight_decay_name": "bn bias"}, {"bn.weight", "bn.bias", "fc.bias"}),
    ({"one_dim_param_no_weight_decay": True}, {"bn.weight", "bn.bias", "fc.bias"}),
])
def test_exempt_parameters_get_no_weight_decay(exemption, exempt, rng):
    model = Tiny()
    coeff = 0.05
    optimizer = build_optimizer({"name": "Momentum", "momentum": 0.9, "regularizer": {"name": "L2", "coeff": coeff},
                                 **exemption}, model, constant(0.1))
    start = {k: p.numpy() for k, p in trained(model).items()}
    steps = [random_gradients(model, rng) for _ in range(4)]
    expected = momentum_reference(start, steps, 0.1, 0.9, {k: 0.0 if k in exempt else coeff for k in start})
    assert_steps_follow(model, optimizer, steps, expected)


def test_adamw_exemptions_get_no_decoupled_decay():
    """With zero gradients Adam's step is 0, so only AdamW's decay p *= 1 - lr coeff moves a parameter."""
    model = Tiny()
    optimizer = build_optimizer({"name": "AdamW", "weight_decay": 0.5, "one_dim_param_no_weight_decay": True},
                                model, constant(0.1))
    start = {k: p.numpy() for k, p in trained(model).items()}
    for _ in range(3):
        apply_gradients(model, {k: np.zeros(v.shape, "float32") for k, v in start.items()})
        optimizer.step()
        optimizer.clear_grad()
    for k, p in trained(model).items():
        np.testing.assert_allclose(p.numpy(), start[k] * (1.0 if p.ndim == 1 else 0.95 ** 3), rtol=1e-6, err_msg=k)


def test_clip_norm_is_one_global_norm_across_parameter_groups():
    """Gradients (3, 4) in two groups (the bias exempt from decay), clip 1: the update is (0.6, 0.8),
    whose norm is the clip, not (1, 1) as clipping each group alone gives."""
    model = nn.Linear(1, 1)
    optimizer = build_optimizer({"name": "SGD", "clip_norm": 1.0, "regularizer": {"name": "L2", "coeff": 0.0},
                                 "no_weight_decay_name": "bias"}, model, constant(1.0))
    before = np.array([model.weight.numpy().item(), model.bias.numpy().item()])
    (model.weight * 3.0 + model.bias * 4.0).sum().backward()
    optimizer.step()
    update = before - np.array([model.weight.numpy().item(), model.bias.numpy().item()])
    np.testing.assert_allclose(update, [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(update), 1.0, rtol=1e-6)


def test_clip_norm_with_momentum_and_decay_over_several_steps(rng):
    model = Tiny()
    optimizer = build_optimizer({"name": "Momentum", "momentum": 0.9, "clip_norm": 0.5, "no_weight_decay_name": "bn",
                                 "regularizer": {"name": "L2", "coeff": 0.01}}, model, constant(0.1))
    start = {k: p.numpy() for k, p in trained(model).items()}
    steps = [random_gradients(model, rng, scale) for scale in (0.01, 2.0, 5.0, 0.1)]  # some under, some over the clip
    coeffs = {k: 0.0 if k.startswith("bn") else 0.01 for k in start}
    assert_steps_follow(model, optimizer, steps, momentum_reference(start, steps, 0.1, 0.9, coeffs, clip=0.5))


@pytest.mark.parametrize("value", [-1, "abc", float("nan")])
def test_a_bad_clip_norm_is_a_config_error(value):
    with pytest.raises(ConfigError, match="Optimizer.clip_norm must be a positive number"):
        build_optimizer({"name": "SGD", "clip_norm": value}, Tiny(), constant())


# --- gradient accumulation --------------------------------------------------------------------------

class NoBatchNorm(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 15 * 15, 10)

    def forward(self, x):
        return self.fc(paddle.flatten(F.relu(self.conv(x)), 1))


def train_without_batch_norm(digits, output, batch_size, update_freq):
    config = quick_config(digits, output, "Global.epochs=1", "Global.eval_during_train=False", f"Global.update_freq={update_freq}",
                          f"DataLoader.Train.sampler.batch_size={batch_size}", "DataLoader.Train.sampler.shuffle=False")
    config["DataLoader"]["Train"]["dataset"]["transform_ops"] = config["DataLoader"]["Eval"]["dataset"]["transform_ops"]

    def seeded_model(arch, source_numerics=None):
        paddle.seed(7)
        return NoBatchNorm()

    with mock.patch.object(front_module, "build_model", seeded_model):  # the engine trains this model instead
        engine = Engine(config, "train")
    engine.train()
    return engine


def test_update_freq_k_at_batch_b_equals_one_step_at_batch_k_times_b(digits, tmp_path):
    """256 images: 8 steps of batch 32, or 8 steps of two accumulated batches of 16 (Momentum, weight decay,
    label smoothing, warmup + cosine), give the same weights."""
    large = train_without_batch_norm(digits, tmp_path / "large", 32, 1)
    accumulated = train_without_batch_norm(digits, tmp_path / "accumulated", 16, 2)
    assert large.global_step == accumulated.global_step == 8 and accumulated.iters_per_epoch == 16
    paddle.seed(7)
    start = NoBatchNorm()  # the weights both runs started from
    for (name, a), (_, b), (_, s) in zip(large.model.named_parameters(), accumulated.model.named_parameters(),
                                         start.named_parameters()):
        assert not np.allclose(a.numpy(), s.numpy()), name  # training moved it
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
