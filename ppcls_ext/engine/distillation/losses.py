"""PaddleClas's distillation losses (`ppcls/loss/distillationloss.py`) by their config names and keys:
each reads the models' outputs by name (`model_name_pairs` / `model_names`, optionally a `key` of a dict
output) and returns named terms, named as PaddleClas names them in its log lines.

Deviations from PaddleClas, each where its code would compute something else than its formula says:
a soft target is the teacher's softmax also with `epsilon` (PaddleClas smooths the raw logits); hard and
soft labels are told apart by dtype, not by comparing the batch size with the class count; every term of
a loss counts in the total (PaddleClas's single-loss shortcut keeps only the first)."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ...config import ConfigError, boolean, number, one_of, single_entry, string
from ...config_registry import ConfigRegistry, check_arguments
from ..losses import LOSS_WEIGHT, CELoss, check_epsilon

Outputs = Mapping[str, Any]
#: the losses of a DistillationModel run: each reads the outputs of the models it names
DISTILLATION_LOSSES = ConfigRegistry("loss")
_ACT = one_of((None, "softmax", "sigmoid"), expected="softmax, sigmoid or null")
_TEMPERATURE = number(0, expected="a positive number")


def _pairs(model_name_pairs: Any, loss: str) -> List[Tuple[str, str]]:
    if not isinstance(model_name_pairs, (list, tuple)) or not model_name_pairs or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(n, str) for n in pair)
            for pair in model_name_pairs):
        raise ValueError(f"{loss}: model_name_pairs must be a list of [model, model] pairs, e.g. "
                         f"[[Student, Teacher]], got {model_name_pairs!r}")
    return [(a, b) for a, b in model_name_pairs]


def _names(model_names: Any, loss: str) -> List[str]:
    if not isinstance(model_names, (list, tuple)) or not model_names or not all(isinstance(n, str) for n in model_names):
        raise ValueError(f"{loss}: model_names must be a list of model names, e.g. [Student], got {model_names!r}")
    return list(model_names)


def _positive_temperature(temperature: Any, loss: str) -> float:
    if _TEMPERATURE(temperature, f"{loss}: temperature") == 0:
        raise ConfigError(f"{loss}: temperature must be a positive number, got {temperature!r}")
    return float(temperature)


def hard_labels(label: paddle.Tensor, classes: int) -> paddle.Tensor:
    """[N] int64 class ids from integer labels ([N] or [N, 1]) or soft labels ([N, C], by argmax)."""
    if label.ndim == 2 and label.shape[-1] == classes and paddle.is_floating_point(label):
        return label.argmax(axis=-1)
    return label.reshape([-1]).astype("int64")


def soft_cross_entropy(logits: paddle.Tensor, target: paddle.Tensor, epsilon: float = 0.0) -> paddle.Tensor:
    """mean over the batch of -sum_c q_c log softmax(logits)_c, q = (1 - eps) * target + eps / C."""
    if epsilon:
        target = target * (1.0 - epsilon) + epsilon / logits.shape[-1]
    return -(target * F.log_softmax(logits, axis=-1)).sum(axis=-1).mean()


def kl_divergence_sum(log_input: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """sum of target * (log target - log_input), zero where target is zero (Paddle's `kl_div`, 'sum')."""
    return F.kl_div(log_input, target, reduction="sum")


class _PerModel(nn.Layer):
    """Reads a model's output from the outputs dict: `outputs[name]`, or `outputs[name][key]` for models that
    return a dict."""

    def __init__(self, key: Optional[str] = None):
        super().__init__()
        self.key = string(optional=True)(key, f"{type(self).__name__}: key")

    def output(self, outputs: Outputs, name: str) -> paddle.Tensor:
        if name not in outputs:
            raise ConfigError(f"{type(self).__name__}: no model named {name!r} (models: {', '.join(outputs)})")
        value = outputs[name]
        if self.key is not None:
            if not isinstance(value, Mapping) or self.key not in value:
                raise ConfigError(f"{type(self).__name__}: key {self.key!r}: model {name} returns "
                                  f"{'keys ' + ', '.join(value) if isinstance(value, Mapping) else 'a tensor'}")
            value = value[self.key]
        return value


@DISTILLATION_LOSSES.register
class DistillationCELoss(_PerModel):
    """Cross-entropy of the first model of each pair against the softmax of the second (the teacher):
    `CELoss_<a>_<b>`."""

    reads_labels = False

    def __init__(self, model_name_pairs: Any = (), epsilon: Optional[float] = None, key: Optional[str] = None,
                 name: str = "loss_ce"):
        super().__init__(key)
        self.pairs = _pairs(model_name_pairs, "DistillationCELoss")
        self.epsilon = check_epsilon(epsilon, "DistillationCELoss: epsilon")

    def forward(self, outputs: Outputs, label: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        terms = {}
        for a, b in self.pairs:
            target = F.softmax(self.output(outputs, b), axis=-1)
            terms[f"CELoss_{a}_{b}"] = soft_cross_entropy(self.output(outputs, a), target, self.epsilon)
        return terms


@DISTILLATION_LOSSES.register
class DistillationGTCELoss(_PerModel):
    """Cross-entropy of each named model against the ground truth (integer or mixup/cutmix soft labels,
    `epsilon` label smoothing): `CELoss_<model>`."""

    reads_labels = True

    def __init__(self, model_names: Any = (), epsilon: Optional[float] = None, key: Optional[str] = None,
                 name: str = "loss_gt_ce"):
        super().__init__(key)
        self.model_names = _names(model_names, "DistillationGTCELoss")
        self.ce = CELoss(epsilon=epsilon)

    def forward(self, outputs: Outputs, label: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        return {f"CELoss_{name}": self.ce(self.output(outputs, name), label) for name in self.model_names}


@DISTILLATION_LOSSES.register
class DistillationDMLLoss(_PerModel):
    """Deep mutual learning: the symmetric KL divergence of the pair's distributions (`act` softmax or
    sigmoid, or none for outputs already probabilities), `(KL(q||p) + KL(p||q)) / 2` summed over classes and
    averaged over the batch (`sum_across_class_dim`: the same number; otherwise PaddleClas's mean over
    samples and classes times the class count): `DMLLoss_<a>_<b>_<pair index>`."""

    reads_labels = False

    def __init__(self, model_name_pairs: Any = (), act: Optional[str] = "softmax", weight_ratio: bool = False,
                 sum_across_class_dim: bool = False, key: Optional[str] = None, name: str = "loss_dml",
                 eps: float = 1e-12):
        super().__init__(key)
        self.pairs = _pairs(model_name_pairs, "DistillationDMLLoss")
        self.act = _ACT(act, "DistillationDMLLoss: act")
        if boolean(weight_ratio, "DistillationDMLLoss: weight_ratio"):
            raise ValueError("weight_ratio: multi-label DML is not supported (single-label classification only)")
        self.eps = float(number(0)(eps, "DistillationDMLLoss: eps"))
        self.sum_across_class_dim = boolean(sum_across_class_dim, "DistillationDMLLoss: sum_across_class_dim")

    def _activate(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.act == "softmax":
            return F.softmax(x, axis=-1)
        return F.sigmoid(x) if self.act == "sigmoid" else x

    def _scaled_kl(self, p: paddle.Tensor, q: paddle.Tensor) -> paddle.Tensor:
        """q * log((q + eps) / (p + eps)) * C, element-wise."""
        return q * paddle.log((q + self.eps) / (p + self.eps)) * p.shape[-1]

    def forward(self, outputs: Outputs, label: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        terms = {}
        for index, (a, b) in enumerate(self.pairs):
            p, q = self._activate(self.output(outputs, a)), self._activate(self.output(outputs, b))
            loss = (self._scaled_kl(p, q) + self._scaled_kl(q, p)) / 2
            terms[f"DMLLoss_{a}_{b}_{index}"] = loss.sum(axis=1).mean() if self.sum_across_class_dim else loss.mean()
        return terms


@DISTILLATION_LOSSES.register
class DistillationKLDivLoss(_PerModel):
    """Hinton's distillation loss: KL(softmax(t / T) || softmax(s / T)) * T^2, summed over classes and
    averaged over the batch: `loss_kldiv_<a>_<b>` (a: student, b: teacher)."""

    reads_labels = False

    def __init__(self, model_name_pairs: Any = (), temperature: float = 4, key: Optional[str] = None,
                 name: str = "loss_kl"):
        super().__init__(key)
        self.pairs = _pairs(model_name_pairs, "DistillationKLDivLoss")
        self.temperature = _positive_temperature(temperature, "DistillationKLDivLoss")

    def forward(self, outputs: Outputs, label: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        terms, t = {}, self.temperature
        for a, b in self.pairs:
            student, teacher = self.output(outputs, a), self.output(outputs, b)
            loss = kl_divergence_sum(F.log_softmax(student / t, axis=1), F.softmax(teacher / t, axis=1))
            terms[f"loss_kldiv_{a}_{b}"] = loss * t * t / student.shape[0]
        return terms


@DISTILLATION_LOSSES.register
class DistillationDKDLoss(_PerModel):
    """Decoupled knowledge distillation (Zhao et al. 2022): alpha * TCKD + beta * NCKD, where TCKD is the KL
    divergence of the binary (target class, all others) distributions and NCKD that of the distributions
    over the non-target classes, both at temperature T, times T^2, averaged over the batch. The target class
    is the ground truth, or the teacher's top class with `use_target_as_gt` (PaddleClas's name):
    `loss_dkd_<a>_<b>`."""

    def __init__(self, model_name_pairs: Any = (), key: Optional[str] = None, temperature: float = 1.0,
                 alpha: float = 1.0, beta: float = 1.0, use_target_as_gt: bool = False, name: str = "loss_dkd"):
        super().__init__(key)
        self.pairs = _pairs(model_name_pairs, "DistillationDKDLoss")
        self.temperature = _positive_temperature(temperature, "DistillationDKDLoss")
        self.alpha = float(number()(alpha, "DistillationDKDLoss: alpha"))
        self.beta = float(number()(beta, "DistillationDKDLoss: beta"))
        self.use_target_as_gt = boolean(use_target_as_gt, "DistillationDKDLoss: use_target_as_gt")
        self.name = string()(name, "DistillationDKDLoss: name")

    @property
    def reads_labels(self) -> bool:
        return not self.use_target_as_gt

    def dkd(self, student: paddle.Tensor, teacher: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        t, n, classes = self.temperature, student.shape[0], student.shape[-1]
        target_mask = F.one_hot(target, classes).astype(student.dtype)
        p_s, p_t = F.softmax(student / t, axis=1), F.softmax(teacher / t, axis=1)
        binary_s = paddle.stack([(p_s * target_mask).sum(axis=1), (p_s * (1 - target_mask)).sum(axis=1)], axis=1)
        binary_t = paddle.stack([(p_t * target_mask).sum(axis=1), (p_t * (1 - target_mask)).sum(axis=1)], axis=1)
        tckd = kl_divergence_sum(paddle.log(binary_s), binary_t) * t * t / n
        # the target class is pushed out of the softmax (PaddleClas: minus 1000 on the scaled logits)
        nckd = kl_divergence_sum(F.log_softmax(student / t - 1000.0 * target_mask, axis=1),
                                 F.softmax(teacher / t - 1000.0 * target_mask, axis=1)) * t * t / n
        return self.alpha * tckd + self.beta * nckd

    def forward(self, outputs: Outputs, label: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        terms = {}
        for a, b in self.pairs:
            student, teacher = self.output(outputs, a), self.output(outputs, b)
            target = teacher.argmax(axis=-1) if self.use_target_as_gt else hard_labels(label, student.shape[-1])
            terms[f"{self.name}_{a}_{b}"] = self.dkd(student, teacher, target)
        return terms


_DISTANCES = {"l1": nn.L1Loss, "l2": nn.MSELoss, "smooth_l1": nn.SmoothL1Loss}


@DISTILLATION_LOSSES.register
class DistillationDistanceLoss(_PerModel):
    """L1, L2 (mean squared error) or smooth-L1 distance between the pair's outputs (after `act` sigmoid or
    softmax when given; other keywords go to Paddle's loss, e.g. `reduction`): `loss_<mode>_loss_<mode>_<i>`."""

    reads_labels = False

    def __init__(self, mode: str = "l2", model_name_pairs: Any = (), act: Optional[str] = None,
                 key: Optional[str] = None, name: str = "loss_", **options):
        super().__init__(key)
        self.mode = one_of(tuple(_DISTANCES))(mode, "mode")
        self.act = _ACT(act, "DistillationDistanceLoss: act")
        self.pairs = _pairs(model_name_pairs, "DistillationDistanceLoss")
        check_arguments(_DISTANCES[mode], options, f"DistillationDistanceLoss: {mode} distance")
        self.distance, self.name = _DISTANCES[mode](**options), string()(name, "DistillationDistanceLoss: name") + mode

    def _activate(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.act == "softmax":
            return F.softmax(x, axis=-1)
        return F.sigmoid(x) if self.act == "sigmoid" else x

    def forward(self, outputs: Outputs, label: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        return {f"{self.name}_loss_{self.mode}_{index}": self.distance(self._activate(self.output(outputs, a)),
                                                                     self._activate(self.output(outputs, b)))
                for index, (a, b) in enumerate(self.pairs)}


class CombinedDistillationLoss(nn.Layer):
    """The `Loss.Train` list of a distillation run: every term of every loss by its name, and under "loss"
    their total, each weighted by its entry's `weight`."""

    def __init__(self, terms: Sequence[Tuple[float, nn.Layer]]):
        super().__init__()
        self.weights = [weight for weight, _ in terms]
        self.terms = nn.LayerList([loss for _, loss in terms])

    @property
    def reads_labels(self) -> bool:
        return any(loss.reads_labels for loss in self.terms)

    def forward(self, outputs: Outputs, label: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        values: Dict[str, paddle.Tensor] = {}
        weighted = []
        for weight, loss in zip(self.weights, self.terms):
            for name, value in loss(outputs, label).items():
                values[name] = value
                weighted.append(weight * value)
        values["loss"] = paddle.add_n(weighted)
        return values


def build_distillation_loss(entries: Any, where: str, models: Sequence[str]) -> CombinedDistillationLoss:
    """The losses of `Loss.Train` in a DistillationModel run; every model they name must be one of `models`."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: expected a non-empty list of losses, e.g. "
                          f"[{{DistillationDMLLoss: {{weight: 1.0, model_name_pairs: [[Student, Teacher]]}}}}]")
    terms = []
    for position, entry in enumerate(entries):
        name, args = single_entry(entry, f"{where}[{position}]")
        weight = float(LOSS_WEIGHT(args.pop("weight", 1.0), f"{where}[{position}].{name}.weight"))
        if name == "CELoss":
            raise ConfigError(f"{where}[{position}]: CELoss scores one model's logits; in a DistillationModel run use "
                              f"DistillationGTCELoss with model_names (e.g. [Student])")
        loss = DISTILLATION_LOSSES.build({name: args}, f"{where}[{position}]")
        named = [n for pair in getattr(loss, "pairs", ()) for n in pair] + list(getattr(loss, "model_names", ()))
        unknown = [n for n in named if n not in models]
        if unknown:
            raise ConfigError(f"{where}[{position}]: {name} names model {unknown[0]!r}; the models are "
                              f"{', '.join(models)} (Arch.models)")
        terms.append((weight, loss))
    return CombinedDistillationLoss(terms)
