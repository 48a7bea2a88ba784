"""Optimizers and learning-rate schedules from a PaddleClas `Optimizer` section.

Schedules are pure functions of the optimizer step (linear warmup, then the decay counted from the end
of warmup, as PaddleClas's LinearWarmup wrapper does), stepped every optimizer step, so that resuming
only needs the step count.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import paddle
from paddle.optimizer.lr import LRScheduler

from ..config import ConfigError, boolean, check_values, integer, number, number_list, string
from ..config_registry import ConfigRegistry


class WarmupSchedule(LRScheduler):
    """lr(t) = linear from `warmup_start_lr` to `base_lr` over `warmup_steps`, then `decay(t - warmup)`.
    With `by_epoch`, t is rounded down to a whole epoch."""

    def __init__(self, name: str, base_lr: float, decay: Callable[[int], float], warmup_steps: int = 0,
                 warmup_start_lr: float = 0.0, steps_per_epoch: int = 1, by_epoch: bool = False):
        self.name = name
        self.decay = decay
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_lr = float(warmup_start_lr)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.by_epoch = by_epoch
        super().__init__(learning_rate=float(base_lr))

    def lr_at(self, step: int) -> float:
        if self.by_epoch:
            step = step // self.steps_per_epoch * self.steps_per_epoch
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * step / self.warmup_steps
        return self.decay(step - self.warmup_steps)

    def get_lr(self) -> float:
        return self.lr_at(max(self.last_epoch, 0))


def _cosine(base: float, total: int, eta_min: float = 0.0) -> Callable[[int], float]:
    total = max(total, 1)
    return lambda t: eta_min + (base - eta_min) * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


def _piecewise(boundaries: Sequence[int], values: Sequence[float]) -> Callable[[int], float]:
    return lambda t: values[bisect.bisect_right(boundaries, t)]


def _step(base: float, every: int, gamma: float) -> Callable[[int], float]:
    return lambda t: base * gamma ** (t // max(every, 1))


def _exponential(base: float, every: float, gamma: float, staircase: bool) -> Callable[[int], float]:
    every = max(every, 1e-12)
    return lambda t: base * gamma ** (math.floor(t / every) if staircase else t / every)


class StepPlan(NamedTuple):
    """The optimizer steps a schedule spans: all, those of the warmup, and those of one epoch."""

    total: int
    warmup: int
    per_epoch: int

    def at_epoch(self, epoch: float) -> int:
        """The step at which a (possibly fractional) epoch ends."""
        return int(round(float(epoch) * self.per_epoch))


#: (learning rate at the end of warmup, decay(steps after warmup))
Decay = Tuple[float, Callable[[int], float]]
#: the `Optimizer.lr` keys every schedule takes (read by `build_lr_schedule`; `last_epoch` is PaddleClas's and unused)
WARMUP_KEYS = {"warmup_epoch": number(0), "warmup_start_lr": number(0), "by_epoch": boolean, "last_epoch": integer()}
SCHEDULES = ConfigRegistry("learning-rate schedule", name_key="name", shared=WARMUP_KEYS, sort_names=False)
_RATE, _EPOCHS, _GAMMA = number(0), number(0), number()


@SCHEDULES.register(name="Constant", arguments={"learning_rate": _RATE})
def constant(learning_rate: float, plan: StepPlan) -> Decay:
    base = float(learning_rate)
    return base, lambda t: base


@SCHEDULES.register(name="Cosine", arguments={"learning_rate": _RATE, "eta_min": _RATE})
def cosine(learning_rate: float, plan: StepPlan, eta_min: float = 0.0) -> Decay:
    return float(learning_rate), _cosine(float(learning_rate), plan.total - plan.warmup, float(eta_min))


@SCHEDULES.register(name="Piecewise", arguments={"decay_epochs": number_list(0), "values": number_list(0),
                                                 "learning_rate": number(0, optional=True)})
def piecewise(decay_epochs: Sequence[float], values: Sequence[float], plan: StepPlan,
              learning_rate: Optional[float] = None) -> Decay:
    """`learning_rate`: PaddleClas's configs write it, as every schedule takes it; `values[0]` is the rate."""
    if len(values) != len(decay_epochs) + 1:
        raise ValueError(f"Piecewise needs one more value than decay_epochs, got {len(values)} values and "
                         f"{len(decay_epochs)} decay_epochs")
    values = [float(v) for v in values]
    return values[0], _piecewise([plan.at_epoch(e) for e in decay_epochs], values)


@SCHEDULES.register(name="Step", arguments={"learning_rate": _RATE, "step_size": _EPOCHS, "gamma": _GAMMA})
def step(learning_rate: float, step_size: float, gamma: float, plan: StepPlan) -> Decay:
    return float(learning_rate), _step(float(learning_rate), plan.at_epoch(step_size), float(gamma))


@SCHEDULES.register(name="Exponential", arguments={"learning_rate": _RATE, "gamma": _GAMMA, "decay_epochs": _EPOCHS,
                                                   "staircase": boolean})
def exponential(learning_rate: float, gamma: float, plan: StepPlan, decay_epochs: float = 1.0,
                staircase: bool = True) -> Decay:
    base = float(learning_rate)
    return base, _exponential(base, float(decay_epochs) * plan.per_epoch, float(gamma), staircase)


@SCHEDULES.register(name="MultiStepDecay", arguments={"learning_rate": _RATE, "milestones": number_list(0),
                                                      "gamma": _GAMMA, "step_each_epoch": None})
def multi_step_decay(learning_rate: float, milestones: Sequence[float], plan: StepPlan, gamma: float = 0.1,
                     step_each_epoch: Any = None) -> Decay:
    """`step_each_epoch`: PaddleClas's configs write it, its engine replaces it with the loader's length (as here)."""
    base, steps = float(learning_rate), [plan.at_epoch(e) for e in milestones]
    return base, _piecewise(steps, [base * float(gamma) ** i for i in range(len(steps) + 1)])


def build_lr_schedule(cfg: Mapping[str, Any], epochs: int, steps_per_epoch: int, where: str = "Optimizer.lr") -> WarmupSchedule:
    """`Optimizer.lr` -> schedule over `epochs * steps_per_epoch` optimizer steps.

    Cosine(learning_rate, eta_min) · Piecewise(decay_epochs, values) · Step(learning_rate, step_size
    [epochs], gamma) · Exponential(learning_rate, gamma, decay_epochs [may be fractional, e.g. 2.4],
    staircase=True) · MultiStepDecay(learning_rate, milestones [epochs], gamma=0.1) · Constant(learning_rate);
    all with warmup_epoch, warmup_start_lr and by_epoch.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a mapping with name: <schedule> and its settings, got {cfg!r}")
    check_values(cfg, WARMUP_KEYS, where)  # before the warmup is counted (the build checks them again)
    warmup = int(round(float(cfg.get("warmup_epoch", 0)) * steps_per_epoch))
    base, decay = SCHEDULES.build(cfg, where, plan=StepPlan(epochs * steps_per_epoch, warmup, steps_per_epoch))
    return WarmupSchedule(cfg["name"], base, decay, warmup, float(cfg.get("warmup_start_lr", 0.0)), steps_per_epoch,
                          bool(cfg.get("by_epoch", False)))


#: Paddle versions (major.minor) whose RMSProp creates its accumulators through `_add_accumulator`, read
#: and tested (tests/test_numerics.py); on another version `RMSPropTF` checks its first step itself
RMSPROP_TF_CHECKED_PADDLE = ("3.3",)


class RMSPropTF(paddle.optimizer.RMSProp):
    """RMSProp as TensorFlow 1 (and the EfficientNet recipe) runs it: epsilon inside the square root (as
    Paddle's) and the mean-square accumulator starting at 1, not 0 (Paddle's start makes the first updates
    up to 1 / sqrt(1 - rho) times larger); `tf_style=False` keeps Paddle's start. Also takes
    `multi_precision` (float32 master weights for float16 parameters), which Paddle's RMSProp supports
    but does not take as an argument.

    Paddle has no public way to initialise an accumulator, so this overrides the protected
    `_add_accumulator` (Paddle's optimizers create every accumulator through it). The first `step()`
    checks that every mean square was created here, so a Paddle that stops calling it fails loudly."""

    def __init__(self, *args, tf_style: bool = True, multi_precision: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._multi_precision = bool(multi_precision)
        self.tf_style = bool(tf_style)
        self.started_at_one: Set[str] = set()  # names of the mean-square accumulators filled with 1
        self._start_checked = not self.tf_style

    def _add_accumulator(self, name, param, *args, **kwargs):
        if self.tf_style and name == self._mean_square_acc_str:
            kwargs["fill_value"] = 1.0
            accumulator = super()._add_accumulator(name, param, *args, **kwargs)
            self.started_at_one.add(accumulator.name)
            return accumulator
        return super()._add_accumulator(name, param, *args, **kwargs)

    def step(self) -> None:
        super().step()
        if not self._start_checked:
            mean_squares = {key for key in self.state_dict() if "_" + self._mean_square_acc_str + "_" in key}
            if mean_squares - self.started_at_one:
                raise RuntimeError(f"RMSPropTF: Paddle {paddle.__version__} created RMSProp's mean square without "
                                   f"_add_accumulator (checked with Paddle {', '.join(RMSPROP_TF_CHECKED_PADDLE)}); "
                                   "TensorFlow's start at 1 would be lost - use tf_style: False or a checked Paddle")
            self._start_checked = True


@paddle.no_grad()
def clip_grad_global_norm_(parameters: Sequence[paddle.Tensor], clip_norm: float) -> None:
    """Scale the gradients of `parameters` in place by clip_norm / max(clip_norm, their global L2 norm),
    as paddle.nn.ClipGradByGlobalNorm does, with the norm summed in float32 and kept on the device."""
    grads = [p.grad for p in parameters if not p.stop_gradient and p.grad is not None]
    if not grads:
        return
    norm = paddle.sqrt(paddle.add_n([paddle.sum(paddle.square(g.astype("float32"))) for g in grads]))
    scale = clip_norm / paddle.clip(norm, min=clip_norm)
    for grad in grads:
        grad.multiply_(scale.astype(grad.dtype))


class GlobalNormClipping:
    """Mixed into an optimizer class: `step()` first clips the gradients of all its parameters by one
    global norm. (Paddle's `grad_clip` takes one norm per parameter group, so exempting some parameters
    from weight decay, which needs a second group, would change what `clip_norm` means.) Clipping inside
    `step()` keeps Paddle's order: after GradScaler's unscaling, before weight decay."""

    def __init__(self, *args, global_clip_norm: float, clipped: Sequence[paddle.Tensor], **kwargs):
        super().__init__(*args, **kwargs)
        self.global_clip_norm = float(global_clip_norm)
        self.clipped = list(clipped)

    def step(self) -> None:
        clip_grad_global_norm_(self.clipped, self.global_clip_norm)
        super().step()


_CLIPPING_CLASSES: Dict[type, type] = {}


def _with_global_norm_clipping(optimizer_class: type) -> type:
    if optimizer_class not in _CLIPPING_CLASSES:
        _CLIPPING_CLASSES[optimizer_class] = type(optimizer_class.__name__, (GlobalNormClipping, optimizer_class), {})
    return _CLIPPING_CLASSES[optimizer_class]


def update_skipped(scaler: paddle.amp.GradScaler) -> bool:
    """Whether the last `scaler.step(optimizer)` skipped the update (inf or NaN gradients).

    Paddle has no public accessor for this. GradScaler.step stores it in `_cache_found_inf` as a Python
    bool, which the optimizer had already read to the host to decide the skip (paddle/amp/grad_scaler.py,
    GradScaler.step; paddle/optimizer/optimizer.py, `_create_optimization_pass`: `if found_inf:`), so
    reading it costs no further device sync. Checked with Paddle 3.3 (tests/test_amp_checkpoint.py);
    anything but a bool is an error, not a guess."""
    if not scaler.is_enable():
        return False
    found = getattr(scaler, "_cache_found_inf", None)
    if not isinstance(found, bool):
        raise RuntimeError(f"GradScaler of Paddle {paddle.__version__} no longer records whether it skipped the "
                           f"update (_cache_found_inf={found!r}); checked with Paddle 3.3")
    return found


def check_regularizer(value: Any, where: str) -> Any:
    """PaddleClas's `regularizer: {name: L2, coeff: 1e-5}` (None or empty: none)."""
    if not value:
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping like {{name: L2, coeff: 1.0e-5}}, got {value!r}")
    if str(value.get("name", "L2")).upper() != "L2":
        raise ConfigError(f"{where}.name: only L2 is supported, got {value.get('name')!r}")
    number(0)(value.get("coeff", 0.0), f"{where}.coeff")
    return value


def check_lr_section(value: Any, where: str) -> Any:
    """`Optimizer.lr` is a section (`build_lr_schedule` reads it)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping like {{name: Cosine, learning_rate: 0.1}}, got {value!r}")
    return value


#: the `Optimizer` keys every optimizer takes, read by `build_optimizer` (`lr` by `build_lr_schedule`)
OPTIMIZER_KEYS = {"lr": check_lr_section, "regularizer": check_regularizer, "weight_decay": number(0, optional=True),
                  "no_weight_decay_name": string(optional=True), "one_dim_param_no_weight_decay": boolean,
                  "clip_norm": number(0, optional=True, expected="a positive number"), "multi_precision": boolean}
OPTIMIZERS = ConfigRegistry("optimizer", name_key="name", shared=OPTIMIZER_KEYS, sort_names=False)
_MOMENTUM, _EPSILON, _FRACTION = number(0), number(0), number(0, 1)
OPTIMIZERS.register(paddle.optimizer.Momentum, name="Momentum", arguments={"momentum": _MOMENTUM, "use_nesterov": boolean})
OPTIMIZERS.register(paddle.optimizer.SGD, name="SGD", arguments={})
OPTIMIZERS.register(RMSPropTF, name="RMSProp", arguments={"momentum": _MOMENTUM, "rho": _FRACTION, "epsilon": _EPSILON,
                                                          "centered": boolean, "tf_style": boolean})
OPTIMIZERS.register(paddle.optimizer.AdamW, name="AdamW", arguments={"beta1": _FRACTION, "beta2": _FRACTION,
                                                                      "epsilon": _EPSILON})


def _weight_decay(cfg: Mapping[str, Any]) -> float:
    """`regularizer: {name: L2, coeff}` (or AdamW's `weight_decay`) as a coefficient."""
    regularizer = cfg.get("regularizer")
    if regularizer:
        return float(regularizer.get("coeff", 0.0))
    return float(cfg.get("weight_decay", 0.0) or 0.0)


def decay_groups(named_params: Sequence[tuple], no_decay_names: Sequence[str], one_dim_no_decay: bool) -> tuple:
    """Split trainable parameters into (decayed, exempt): exempt when the structured name contains one
    of `no_decay_names` (e.g. "bn", "bias") or, with `one_dim_no_decay`, when it is 1-D (BN, biases).
    Frozen parameters (`stop_gradient`: `freeze_befor`, a 0 in `lr_mult_list`) are in neither: the
    optimizer never sees them, so they get no state and no weight decay."""
    decayed, exempt = [], []
    for name, param in named_params:
        if param.stop_gradient:
            continue
        skip = any(part in name for part in no_decay_names) or (one_dim_no_decay and len(param.shape) <= 1)
        (exempt if skip else decayed).append(param)
    return decayed, exempt


def lr_multiplier(param: paddle.Tensor) -> float:
    """The multiplier of the optimizer's learning rate for `param`: what `ParamAttr(learning_rate=m)` (PaddleClas's
    `lr_mult`) or `lr_mult_list` set, which Paddle keeps in `param.optimize_attr`; 1 when unset."""
    return float((getattr(param, "optimize_attr", None) or {}).get("learning_rate", 1.0))


def param_groups(decayed: Sequence[paddle.Tensor], exempt: Sequence[paddle.Tensor], coeff: float) -> List[Dict[str, Any]]:
    """Paddle parameter groups, one per (weight decay, learning-rate multiplier): a group's `learning_rate`
    becomes each of its parameters' multiplier (Paddle's `_add_param_group` writes it over the one the
    model set, which would otherwise be lost)."""
    groups: Dict[tuple, List[paddle.Tensor]] = {}
    for params, decay in ((decayed, coeff), (exempt, 0.0)):
        for param in params:
            groups.setdefault((decay, lr_multiplier(param)), []).append(param)
    return [{"params": params, "weight_decay": decay, "learning_rate": multiplier}
            for (decay, multiplier), params in groups.items()]


def build_optimizer(cfg: Mapping[str, Any], model: paddle.nn.Layer, schedule: LRScheduler,
                    where: str = "Optimizer") -> paddle.optimizer.Optimizer:
    """Momentum, SGD, RMSProp (TF-style unless `tf_style: False`) or AdamW with L2 weight decay,
    optionally exempting parameters by name (`no_weight_decay_name: "bn bias"`) or by being 1-D
    (`one_dim_param_no_weight_decay: True`), gradient clipping by the global norm over all parameters
    (`clip_norm`) and float32 master weights for float16 parameters (`multi_precision`, all optimizers).
    Each parameter keeps its learning-rate multiplier (`lr_multiplier`); frozen parameters are left out."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a mapping with name: <optimizer> and its settings, got {cfg!r}")
    check_values(cfg, OPTIMIZER_KEYS, where)  # before they are read (the build checks them again)
    coeff = _weight_decay(cfg)
    no_decay_names = (cfg.get("no_weight_decay_name") or "").split()
    decayed, exempt = decay_groups(list(model.named_parameters()), no_decay_names, cfg.get("one_dim_param_no_weight_decay", False))
    if not decayed and not exempt:
        raise ConfigError(f"{where}: the model has no trainable parameter (all frozen, e.g. by Arch.freeze_befor or "
                          "zeros in Arch.lr_mult_list): nothing to train")
    if cfg.get("name") == "AdamW":  # Paddle's AdamW decays the parameters its function names, in one group
        exempt_names = {p.name for p in exempt}
        args = dict(parameters=decayed + exempt, apply_decay_param_fun=lambda param_name: param_name not in exempt_names)
    else:
        args = dict(parameters=param_groups(decayed, exempt, coeff))
    if "multi_precision" in cfg:
        args["multi_precision"] = cfg["multi_precision"]
    wrap = None
    if cfg.get("clip_norm"):
        wrap = _with_global_norm_clipping
        args.update(global_clip_norm=float(cfg["clip_norm"]), clipped=decayed + exempt)
    return OPTIMIZERS.build(cfg, where, wrap=wrap, learning_rate=schedule, weight_decay=coeff, **args)
