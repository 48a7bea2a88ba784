"""PaddleClas's distillation losses and DistillationTopkAcc (ppcls_ext.engine.distillation): each against a
numpy re-implementation of its formula and against PaddleClas's own class (../shared/upstream/PaddleClas,
`ppcls/loss/distillationloss.py`, `ppcls/metric/metrics.py`), term names included."""
import importlib
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import REPO
from ppcls_ext.config import ConfigError
from ppcls_ext.engine.distillation.losses import (DistillationCELoss, DistillationDistanceLoss, DistillationDKDLoss,
                                                  DistillationDMLLoss, DistillationGTCELoss, DistillationKLDivLoss,
                                                  build_distillation_loss)
from ppcls_ext.engine.distillation.metrics import DistillationTopkAcc, build_distillation_metric

UPSTREAM = Path(REPO).parent / "shared" / "upstream" / "PaddleClas"
N, C = 6, 7


@pytest.fixture(scope="module")
def upstream():
    """PaddleClas's loss and metric modules from the source snapshot."""
    if not (UPSTREAM / "ppcls" / "loss" / "distillationloss.py").is_file():
        pytest.skip(f"PaddleClas's source is not in {UPSTREAM} (../shared/upstream/PaddleClas)")
    sys.path.insert(0, str(UPSTREAM))
    try:
        return importlib.import_module("ppcls.loss.distillationloss"), importlib.import_module("ppcls.metric.metrics")
    finally:
        sys.path.remove(str(UPSTREAM))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(7)
    student = rng.normal(0, 2, (N, C)).astype("float32")
    teacher = rng.normal(0, 2, (N, C)).astype("float32")
    labels = rng.integers(0, C, (N, 1)).astype("int64")
    return student, teacher, labels


def tensors(batch):
    student, teacher, labels = batch
    return {"Student": paddle.to_tensor(student), "Teacher": paddle.to_tensor(teacher)}, paddle.to_tensor(labels)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_sum(p, q):
    """sum p log(p / q) (0 where p is 0)."""
    p, q = p.astype("float64"), q.astype("float64")
    return float(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0).sum())


def compare(ours, theirs, reference):
    """Same term names as PaddleClas, the same values, and the numpy formula's values."""
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        np.testing.assert_allclose(float(ours[name]), float(theirs[name]), rtol=1e-5, atol=1e-6, err_msg=name)
    for name, value in reference.items():
        np.testing.assert_allclose(float(ours[name]), value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_ce_against_the_teachers_softmax(upstream, batch):
    losses, _ = upstream
    outputs, labels = tensors(batch)
    pairs = [["Student", "Teacher"]]
    reference = -(softmax(batch[1]) * log_softmax(batch[0])).sum(axis=1).mean()
    compare(DistillationCELoss(model_name_pairs=pairs)(outputs, labels),
            losses.DistillationCELoss(model_name_pairs=pairs)(outputs, labels), {"CELoss_Student_Teacher": reference})


@pytest.mark.parametrize("epsilon", [None, 0.1])
def test_gt_ce_with_and_without_label_smoothing(upstream, batch, epsilon):
    losses, _ = upstream
    outputs, labels = tensors(batch)
    target = np.eye(C)[batch[2][:, 0]]
    if epsilon:
        target = target * (1 - epsilon) + epsilon / C
    expected = {f"CELoss_{name}": -(target * log_softmax(batch[i])).sum(axis=1).mean()
                for i, name in enumerate(["Student", "Teacher"])}
    names = ["Student", "Teacher"]
    compare(DistillationGTCELoss(model_names=names, epsilon=epsilon)(outputs, labels),
            losses.DistillationGTCELoss(model_names=names, epsilon=epsilon)(outputs, labels), expected)


@pytest.mark.parametrize("act,sum_across", [("softmax", False), ("sigmoid", True)])
def test_dml_symmetric_kl(upstream, batch, act, sum_across):
    losses, _ = upstream
    outputs, labels = tensors(batch)
    activate = softmax if act == "softmax" else (lambda x: 1 / (1 + np.exp(-x)))
    p, q = activate(batch[0]).astype("float64"), activate(batch[1]).astype("float64")
    eps = 1e-12
    both = (q * np.log((q + eps) / (p + eps)) + p * np.log((p + eps) / (q + eps))) * C / 2
    expected = both.sum(axis=1).mean() if sum_across else both.mean()
    pairs = [["Student", "Teacher"], ["Teacher", "Student"]]
    compare(DistillationDMLLoss(model_name_pairs=pairs, act=act, sum_across_class_dim=sum_across)(outputs, labels),
            losses.DistillationDMLLoss(model_name_pairs=pairs, act=act, sum_across_class_dim=sum_across)(outputs, labels),
            {"DMLLoss_Student_Teacher_0": expected, "DMLLoss_Teacher_Student_1": expected})


def test_kl_divergence_at_temperature(upstream, batch):
    losses, _ = upstream
    outputs, labels = tensors(batch)
    t = 4.0
    expected = kl_sum(softmax(batch[1] / t), softmax(batch[0] / t)) * t * t / N
    pairs = [["Student", "Teacher"]]
    compare(DistillationKLDivLoss(model_name_pairs=pairs, temperature=t)(outputs, labels),
            losses.DistillationKLDivLoss(model_name_pairs=pairs, temperature=t)(outputs, labels),
            {"loss_kldiv_Student_Teacher": expected})


def numpy_dkd(student, teacher, target, t, alpha, beta):
    """Decoupled KD from its definition: the binary (target, rest) KL and the KL over the other classes."""
    tckd = nckd = 0.0
    for s, te, k in zip(student / t, teacher / t, target):
        p_s, p_t = softmax(s), softmax(te)
        tckd += kl_sum(np.array([p_t[k], 1 - p_t[k]]), np.array([p_s[k], 1 - p_s[k]]))
        others = np.arange(len(s)) != k
        nckd += kl_sum(softmax(te[others]), softmax(s[others]))
    return (alpha * tckd + beta * nckd) * t * t / len(target)


@pytest.mark.parametrize("use_target_as_gt", [False, True])
def test_dkd(upstream, batch, use_target_as_gt):
    losses, _ = upstream
    outputs, labels = tensors(batch)
    options = {"model_name_pairs": [["Student", "Teacher"]], "temperature": 2.0, "alpha": 0.5, "beta": 2.0,
               "use_target_as_gt": use_target_as_gt}
    target = batch[1].argmax(axis=1) if use_target_as_gt else batch[2][:, 0]
    compare(DistillationDKDLoss(**options)(outputs, labels), losses.DistillationDKDLoss(**options)(outputs, labels),
            {"loss_dkd_Student_Teacher": numpy_dkd(batch[0], batch[1], target, 2.0, 0.5, 2.0)})


@pytest.mark.parametrize("mode,act", [("l2", None), ("l1", "softmax"), ("smooth_l1", None)])
def test_distance(upstream, batch, mode, act):
    losses, _ = upstream
    outputs, labels = tensors(batch)
    a, b = (softmax(batch[0]), softmax(batch[1])) if act else (batch[0], batch[1])
    d = np.abs(a.astype("float64") - b)
    expected = {"l2": (d ** 2).mean(), "l1": d.mean(), "smooth_l1": np.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()}[mode]
    pairs = [["Student", "Teacher"]]
    compare(DistillationDistanceLoss(mode=mode, model_name_pairs=pairs, act=act)(outputs, labels),
            losses.DistillationDistanceLoss(mode=mode, model_name_pairs=pairs, act=act)(outputs, labels),
            {f"loss_{mode}_loss_{mode}_0": expected})


def test_distillation_topk_accuracy(upstream, batch):
    _, metrics = upstream
    outputs, labels = tensors(batch)
    ours = DistillationTopkAcc(model_key="Student", topk=[1, 5])
    theirs = metrics.DistillationTopkAcc(model_key="Student", topk=[1, 5])(outputs, labels)
    got = ours(ours.select(outputs), labels)
    ranks = (-batch[0]).argsort(axis=1)
    for k in (1, 5):
        expected = np.mean([label in row[:k] for row, label in zip(ranks, batch[2][:, 0])])
        assert float(got[f"top{k}"]) == pytest.approx(expected) == pytest.approx(float(theirs[f"top{k}"]))


def test_the_total_weighs_every_term_and_the_config_names_known_models(batch):
    outputs, labels = tensors(batch)
    loss = build_distillation_loss([{"DistillationGTCELoss": {"weight": 0.5, "model_names": ["Student"]}},
                                    {"DistillationDMLLoss": {"weight": 2.0, "model_name_pairs": [["Student", "Teacher"],
                                                                                                 ["Teacher", "Student"]]}}],
                                   "Loss.Train", ["Teacher", "Student"])
    values = loss(outputs, labels)
    expected = 0.5 * float(values["CELoss_Student"]) + 2.0 * (float(values["DMLLoss_Student_Teacher_0"]) + float(values["DMLLoss_Teacher_Student_1"]))
    assert float(values["loss"]) == pytest.approx(expected, rel=1e-6) and loss.reads_labels
    assert not build_distillation_loss([{"DistillationKLDivLoss": {"model_name_pairs": [["Student", "Teacher"]]}}],
                                       "Loss.Train", ["Teacher", "Student"]).reads_labels
    for entries, message in (
            ([{"DistillationKLDivLoss": {"model_name_pairs": [["Student", "Techer"]]}}],
             "Loss.Train[0]: DistillationKLDivLoss names model 'Techer'; the models are Teacher, Student"),
            ([{"CELoss": {"weight": 1.0}}], "Loss.Train[0]: CELoss scores one model's logits; in a DistillationModel run "
                                            "use DistillationGTCELoss"),
            ([{"DistillationDMLLoss": {"model_name_pairs": ["Student", "Teacher"]}}],
             "Loss.Train[0]: DistillationDMLLoss: model_name_pairs must be a list of [model, model] pairs"),
            ([{"DistillationDistanceLoss": {"mode": "l3", "model_name_pairs": [["Student", "Teacher"]]}}],
             "Loss.Train[0]: mode must be one of l1, l2, smooth_l1, got 'l3'")):
        with pytest.raises(ConfigError) as error:
            build_distillation_loss(entries, "Loss.Train", ["Teacher", "Student"])
        assert str(error.value).startswith(message), str(error.value)
    with pytest.raises(ConfigError, match=r"Metric.Train\[0\]: DistillationTopkAcc.model_key 'Studnt' is not a model"):
        build_distillation_metric([{"DistillationTopkAcc": {"model_key": "Studnt"}}], "Metric.Train",
                                  ["Teacher", "Student"], "Student")
