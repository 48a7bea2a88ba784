"""Fine-tuning knobs with PaddleClas's names: `Arch.lr_mult_list` (a learning-rate multiplier for the stem
and each stage), Paddle's `ParamAttr(learning_rate=...)` multipliers kept by our optimizer's parameter
groups, and `Arch.freeze_befor` as a real freeze. Checked against closed forms: one SGD step moves a weight
by exactly m * lr * grad, one Momentum step with L2 decay by m * lr * (grad + coeff * w); frozen parameters
get no gradient, no optimizer state and no change, and frozen batch norms keep their statistics."""
import numpy as np
import paddle
import paddle.nn as nn
import pytest

import ppcls_ext
from ppcls_ext.config import ConfigError
from ppcls_ext.engine.engine import build_model
from ppcls_ext.engine.optim import build_lr_schedule, build_optimizer

LR = 0.1
#: MicroNet_M0's stem, then its seven stages
MULTIPLIERS = [0.5, 1.0, 2.0, 0.25, 0.0, 1.0, 3.0, 0.125]


def constant(lr=LR):
    return build_lr_schedule({"name": "Constant", "learning_rate": lr}, epochs=1, steps_per_epoch=10)


def part_of(name):
    """The lr_mult_list entry a MicroNet parameter falls under, or None (head and classifier)."""
    if name.startswith("stem."):
        return 0
    if name.startswith("stages."):
        return 1 + int(name.split(".")[1])
    return None


def backward_once(model, seed=0):
    """One backward pass of a fixed loss on a fixed batch; returns {name: (weight, gradient)} before any
    step (None as the gradient of a parameter that got none)."""
    paddle.seed(seed)
    x = paddle.to_tensor(np.random.default_rng(seed).standard_normal((4, 3, 32, 32)).astype("float32"))
    (model(x) ** 2).mean().backward()
    return {name: (p.numpy().copy(), None if p.grad is None else p.grad.numpy().copy())
            for name, p in model.named_parameters()}


def test_one_sgd_step_moves_each_weight_by_its_multiplier_times_lr_times_grad():
    model = ppcls_ext.create_model("MicroNet_M0", class_num=3, lr_mult_list=MULTIPLIERS)
    model.eval()  # batch norms use their statistics: the step is the only change
    before = backward_once(model)
    build_optimizer({"name": "SGD"}, model, constant()).step()
    checked = 0
    for name, param in model.named_parameters():
        weight, grad = before[name]
        part = part_of(name)
        multiplier = 1.0 if part is None else MULTIPLIERS[part]
        if multiplier == 0 or name.endswith(("_mean", "_variance")):
            assert param.stop_gradient and grad is None, name  # a 0 freezes: no gradient at all
            np.testing.assert_array_equal(param.numpy(), weight, err_msg=name)
            continue
        expected = weight - np.float32(LR * multiplier) * grad
        np.testing.assert_allclose(param.numpy(), expected, rtol=1e-6, atol=1e-9, err_msg=name)
        checked += 1
    assert checked > 50


def test_one_momentum_step_with_weight_decay_scales_decay_and_gradient_alike():
    coeff = 0.01
    model = ppcls_ext.create_model("MicroNet_M0", class_num=3, lr_mult_list=MULTIPLIERS)
    model.eval()
    before = backward_once(model, seed=1)
    cfg = {"name": "Momentum", "momentum": 0.9, "regularizer": {"name": "L2", "coeff": coeff}, "no_weight_decay_name": "bn"}
    build_optimizer(cfg, model, constant()).step()
    for name, param in model.named_parameters():
        weight, grad = before[name]
        if param.stop_gradient:
            continue
        part = part_of(name)
        multiplier = 1.0 if part is None else MULTIPLIERS[part]
        decay = 0.0 if "bn" in name else coeff
        expected = weight - np.float32(LR * multiplier) * (grad + np.float32(decay) * weight)
        np.testing.assert_allclose(param.numpy(), expected, rtol=1e-5, atol=1e-8, err_msg=name)


class PaddleClasStyle(nn.Layer):
    """Layers with `ParamAttr(learning_rate=...)`, as PaddleClas's backbones apply their lr_mult_list."""

    def __init__(self):
        super().__init__()
        self.slow = nn.Linear(4, 4, weight_attr=paddle.ParamAttr(learning_rate=0.5), bias_attr=paddle.ParamAttr(learning_rate=0.5))
        self.bn = nn.BatchNorm1D(4)
        self.fast = nn.Linear(4, 2)

    def forward(self, x):
        return self.fast(self.bn(self.slow(x)))


@pytest.mark.parametrize("cfg", [
    {"name": "Momentum", "momentum": 0.9, "regularizer": {"name": "L2", "coeff": 0.0}, "no_weight_decay_name": "bn"},
    {"name": "SGD", "one_dim_param_no_weight_decay": True},
    {"name": "RMSProp", "momentum": 0.0, "rho": 0.9, "epsilon": 1.0, "tf_style": False},
])
def test_param_attr_multipliers_survive_the_optimizers_parameter_groups(cfg):
    """Paddle's parameter groups overwrite each parameter's multiplier with the group's learning_rate (1 by
    default): before our groups carried it, PaddleClas-style `lr_mult` layers trained at the full rate."""
    model = PaddleClasStyle()
    model.eval()
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((3, 4)).astype("float32"))
    before = {name: p.numpy().copy() for name, p in model.named_parameters()}
    model(x).sum().backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None}
    build_optimizer(cfg, model, constant()).step()
    after = {name: p.numpy() for name, p in model.named_parameters()}
    assert {"slow.weight", "slow.bias", "fast.weight", "fast.bias"} <= set(grads)
    for name, grad in grads.items():
        multiplier = 0.5 if name.startswith("slow.") else 1.0
        if cfg["name"] in ("SGD", "Momentum"):  # first step, no decay: lr * g
            step = np.float32(LR * multiplier) * grad
        else:  # Paddle's RMSProp, first step: ms = (1 - rho) g^2 (start 0); step = lr g / sqrt(ms + eps)
            step = np.float32(LR * multiplier) * grad / np.sqrt(np.float32(0.1) * grad ** 2 + np.float32(1.0))
        np.testing.assert_allclose(after[name], before[name] - step, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("layer,frozen_prefixes", [
    ("stages[3]", ("stem.", "stages.0.", "stages.1.", "stages.2.", "stages.3.")),
    ("dropout", ("stem.", "stages.", "embed.")),  # a linear probe: `stages` itself is a container never called
])
def test_freeze_befor_freezes_weights_statistics_and_optimizer_state(layer, frozen_prefixes):
    model = ppcls_ext.create_model("MicroNet_M0", class_num=3, freeze_befor=layer)
    params = dict(model.named_parameters())
    assert all(p.stop_gradient for n, p in params.items() if n.startswith(frozen_prefixes))
    trainable = {n for n, p in params.items() if not p.stop_gradient}
    assert trainable and not [n for n in trainable if n.startswith(frozen_prefixes)] and "classifier.fc.weight" in trainable
    state = {name: t.numpy().copy() for name, t in model.state_dict().items()}
    optimizer = build_optimizer({"name": "Momentum", "momentum": 0.9, "regularizer": {"name": "L2", "coeff": 0.1}},
                                model, constant())
    model.train()
    backward_once(model)
    optimizer.step()
    assert all(p.grad is None for n, p in params.items() if n.startswith(frozen_prefixes))
    after = model.state_dict()
    for name, value in state.items():  # weights and batch-norm statistics of the frozen part are untouched
        if name.startswith(frozen_prefixes):
            np.testing.assert_array_equal(after[name].numpy(), value, err_msg=name)
    moved_stats = [n for n in after if n.startswith("classifier.") and n.endswith("_mean")
                   and not np.array_equal(after[n].numpy(), state[n])]
    assert moved_stats, "the trained part's batch norms track statistics"
    accumulators = list(optimizer.state_dict())
    frozen_names = [p.name for n, p in params.items() if n.startswith(frozen_prefixes)]
    assert not [key for key in accumulators for name in frozen_names if key.startswith(name + "_")]
    assert [key for key in accumulators if key.startswith(params["classifier.fc.weight"].name + "_")]
    norms = {name: sub.training for name, sub in model.named_sublayers() if isinstance(sub, (nn.BatchNorm1D, nn.BatchNorm2D))}
    assert not [name for name, training in norms.items() if name.startswith(frozen_prefixes) and training]
    assert norms["classifier.bn"] and model.classifier.training  # the trained part runs in training mode


def test_bad_lr_mult_lists_and_a_fully_frozen_model_are_config_errors():
    with pytest.raises(ConfigError, match=r"Arch: lr_mult_list: MicroNet takes 8 multipliers \(the stem, then 7 stages\), "
                                          r"got \[1\.0, 1\.0\]"):
        build_model({"name": "MicroNet_M0", "lr_mult_list": [1.0, 1.0]})
    with pytest.raises(ConfigError, match=r"Arch: lr_mult_list\[2\]: expected a number >= 0, got -1"):
        build_model({"name": "EfficientNetLite0", "lr_mult_list": [1, 1, -1, 1, 1, 1, 1, 1]})
    model = build_model({"name": "MicroNet_M0", "class_num": 3, "freeze_befor": "classifier"})
    with pytest.raises(ConfigError, match="Optimizer: the model has no trainable parameter"):
        build_optimizer({"name": "Momentum", "momentum": 0.9}, model, constant())
