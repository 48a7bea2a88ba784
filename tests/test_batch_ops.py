"""Batch operators: soft labels, hand-computed mixup/cutmix, OpSampler probabilities, the builder."""
import logging
import random

import numpy as np
import pytest

from ppcls_ext.config import ConfigError
from ppcls_ext.data import batch_ops as B

CLASS_NUM = 5


def two_samples(shape=(3, 32, 40)):
    """Sample 0: all ones, label 0; sample 1: all zeros, label 3."""
    return [(np.ones(shape, np.float32), 0), (np.zeros(shape, np.float32), 3)]


def random_batch(n=6, shape=(3, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape).astype(np.float32), int(rng.integers(CLASS_NUM))) for _ in range(n)]


def check_outputs(out, batch):
    assert len(out) == len(batch)
    for (img, target), (src, _) in zip(out, batch):
        assert img.shape == src.shape and img.dtype == np.float32
        assert target.shape == (CLASS_NUM,) and target.dtype == np.float32
        assert target.sum() == pytest.approx(1.0, abs=1e-6)
        assert (target >= 0).all()


@pytest.mark.parametrize("op", [B.MixupOperator(CLASS_NUM, alpha=0.4), B.CutmixOperator(CLASS_NUM, alpha=1.0),
                                B.OpSampler(CLASS_NUM, MixupOperator={"alpha": 0.8, "prob": 0.5},
                                            CutmixOperator={"alpha": 1.0, "prob": 0.5})],
                         ids=["mixup", "cutmix", "opsampler"])
def test_soft_labels_sum_to_one(op):
    batch = random_batch()
    np.random.seed(0)
    random.seed(0)
    for _ in range(5):
        check_outputs(op(batch), batch)


def test_mixup_hand_computed(monkeypatch):
    monkeypatch.setattr(np.random, "beta", lambda a, b: 0.7)
    monkeypatch.setattr(np.random, "permutation", lambda n: np.array([1, 0]))
    (img0, t0), (img1, t1) = B.MixupOperator(CLASS_NUM, alpha=1.0)(two_samples())
    np.testing.assert_allclose(img0, 0.7, atol=1e-7)
    np.testing.assert_allclose(img1, 0.3, atol=1e-7)
    np.testing.assert_allclose(t0, [0.7, 0, 0, 0.3, 0], atol=1e-7)
    np.testing.assert_allclose(t1, [0.3, 0, 0, 0.7, 0], atol=1e-7)


def test_mixup_does_not_modify_its_inputs():
    batch = two_samples()
    np.random.seed(1)
    B.MixupOperator(CLASS_NUM, alpha=1.0)(batch)
    assert (batch[0][0] == 1).all() and (batch[1][0] == 0).all()


def test_alpha_zero_gives_one_hot_and_reassigned_alpha_takes_effect():
    batch = two_samples()
    op = B.MixupOperator(CLASS_NUM, alpha=0.0)
    out = op(batch)
    assert out[0][0] is batch[0][0] and out[1][0] is batch[1][0]
    np.testing.assert_array_equal(out[0][1], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[1][1], [0, 0, 0, 1, 0])
    op.alpha = 1.0
    np.random.seed(3)
    mixed = op(batch)
    assert 0 < mixed[0][1][0] < 1 or 0 < mixed[1][1][0] < 1
    cut = B.CutmixOperator(CLASS_NUM, alpha=0.0)
    np.testing.assert_array_equal(cut(batch)[1][1], [0, 0, 0, 1, 0])
    cut.alpha = -1
    with pytest.raises(ValueError, match=r"CutmixOperator: alpha must be a number >= 0 \(0 turns mixing off\), got -1"):
        cut(batch)


def test_cutmix_hand_computed_box(monkeypatch):
    monkeypatch.setattr(np.random, "beta", lambda a, b: 0.75)
    monkeypatch.setattr(np.random, "permutation", lambda n: np.array([1, 0]))
    monkeypatch.setattr(np.random, "randint", lambda high: high // 2)
    # sides sqrt(1 - 0.75) = 0.5 of 32x40 -> 16x20 box centred at (16, 20): rows 8..24, cols 10..30
    (img0, t0), (img1, t1) = B.CutmixOperator(CLASS_NUM, alpha=1.0)(two_samples())
    expected0 = np.ones((3, 32, 40), np.float32)
    expected0[:, 8:24, 10:30] = 0
    np.testing.assert_array_equal(img0, expected0)
    np.testing.assert_array_equal(img1, 1 - expected0)
    np.testing.assert_allclose(t0, [0.75, 0, 0, 0.25, 0])
    np.testing.assert_allclose(t1, [0.25, 0, 0, 0.75, 0])


def test_cutmix_label_weight_equals_pasted_area_even_when_clipped():
    op = B.CutmixOperator(CLASS_NUM, alpha=1.0)
    np.random.seed(0)
    for _ in range(20):
        (img0, t0), (img1, t1) = op(two_samples())
        if t0[0] == 1.0:  # paired with itself
            continue
        pasted = (img0[0] == 0).mean()
        assert t0[3] == pytest.approx(pasted, abs=1e-6)
        assert t0[0] == pytest.approx(1 - pasted, abs=1e-6)
        assert set(np.unique(img0)) <= {0.0, 1.0}


def is_mixup_output(out):
    """Mixup of the all-ones and all-zeros samples gives constant values strictly between 0 and 1."""
    values = np.unique(out[0][0])
    return len(values) == 1 and 0 < values[0] < 1


def is_cutmix_output(out):
    return set(np.unique(out[0][0])) <= {0.0, 1.0} and set(np.unique(out[1][0])) <= {0.0, 1.0}


@pytest.fixture
def swapped(monkeypatch):
    """Pair sample i with sample n-1-i (a random permutation may pair a sample with itself)."""
    monkeypatch.setattr(np.random, "permutation", lambda n: np.arange(n)[::-1])


def test_opsampler_prob_one_always_and_prob_zero_never(swapped):
    sampler = B.OpSampler(CLASS_NUM, MixupOperator={"alpha": 1.0, "prob": 0.0}, CutmixOperator={"alpha": 1.0, "prob": 1.0})
    random.seed(0)
    np.random.seed(0)
    outs = [sampler(two_samples()) for _ in range(30)]
    assert all(is_cutmix_output(out) for out in outs)
    assert all(out[0][1][0] < 1 for out in outs)  # cutmix actually pasted a box

    sampler = B.OpSampler(CLASS_NUM, MixupOperator={"alpha": 1.0, "prob": 1.0}, CutmixOperator={"alpha": 1.0, "prob": 0.0})
    assert all(is_mixup_output(sampler(two_samples())) for _ in range(30))


def test_opsampler_leftover_probability_leaves_batch_unchanged(swapped):
    sampler = B.OpSampler(CLASS_NUM, MixupOperator={"alpha": 1.0, "prob": 0.0})
    batch = two_samples()
    for _ in range(10):
        out = sampler(batch)
        assert out[0][0] is batch[0][0]
        np.testing.assert_array_equal(out[0][1], [1, 0, 0, 0, 0])

    sampler = B.OpSampler(CLASS_NUM, MixupOperator={"alpha": 1.0, "prob": 0.25}, CutmixOperator={"alpha": 1.0, "prob": 0.25})
    random.seed(0)
    np.random.seed(0)
    counts = {"mixup": 0, "none": 0, "cutmix": 0}
    for _ in range(400):
        batch = two_samples((1, 8, 8))
        out = sampler(batch)
        if out[0][0] is batch[0][0]:
            counts["none"] += 1
        elif is_mixup_output(out):
            counts["mixup"] += 1
        else:
            counts["cutmix"] += 1
    assert 150 <= counts["none"] <= 250 and 60 <= counts["mixup"] <= 140 and 60 <= counts["cutmix"] <= 140


def test_opsampler_errors_and_missing_prob(caplog):
    with pytest.raises(ValueError, match=r"OpSampler: the probs of its ops must sum to at most 1, got 1.2"):
        B.OpSampler(CLASS_NUM, MixupOperator={"prob": 0.6}, CutmixOperator={"prob": 0.6})
    with pytest.raises(ValueError, match=r"OpSampler: unknown batch op 'FmixOperator'; valid: MixupOperator, CutmixOperator"):
        B.OpSampler(CLASS_NUM, FmixOperator={"prob": 0.5})
    with caplog.at_level(logging.WARNING, logger="ppcls_ext"):
        sampler = B.OpSampler(CLASS_NUM, MixupOperator={"alpha": 0.2})
    assert "MixupOperator has no 'prob'" in caplog.text
    assert sampler.probs == [0.0] and sampler.none_prob == 1.0


def test_label_forms_and_errors():
    img = np.zeros((3, 4, 4), np.float32)
    soft = np.array([0.5, 0.5, 0, 0, 0], np.float32)
    out = B.MixupOperator(CLASS_NUM, alpha=0)([(img, np.array([2])), (img, np.int64(4)), (img, soft)])
    np.testing.assert_array_equal(out[0][1], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(out[1][1], [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(out[2][1], soft)
    with pytest.raises(ValueError, match=r"MixupOperator: label 7 is outside \[0, 5\) \(class_num=5\)"):
        B.MixupOperator(CLASS_NUM, alpha=0)([(img, 7)])
    with pytest.raises(ValueError, match=r"MixupOperator: class_num must be a positive int \(set Arch.class_num\), got None"):
        B.MixupOperator(None)


def test_batch_ops_are_deterministic_under_a_seed():
    ops = B.build_batch_ops([{"OpSampler": {"MixupOperator": {"alpha": 0.8, "prob": 0.5},
                                            "CutmixOperator": {"alpha": 1.0, "prob": 0.5}}}], CLASS_NUM, "x")

    def run(seed):
        random.seed(seed)
        np.random.seed(seed)
        return [ops(random_batch()) for _ in range(4)]

    first, again, other = run(5), run(5), run(6)
    for out_a, out_b in zip(first, again):
        for (img_a, t_a), (img_b, t_b) in zip(out_a, out_b):
            np.testing.assert_array_equal(img_a, img_b)
            np.testing.assert_array_equal(t_a, t_b)
    assert any(not np.array_equal(a[0][1], b[0][1]) for a, b in zip(first, other))


def test_build_batch_ops():
    where = "DataLoader.Train.dataset.batch_transform_ops"
    assert B.build_batch_ops(None, CLASS_NUM, where) is None
    assert B.build_batch_ops([], CLASS_NUM, where) is None
    ops = B.build_batch_ops([{"MixupOperator": {"alpha": 0.2}},
                             {"OpSampler": {"CutmixOperator": {"alpha": 1.0, "prob": 0.5}}}], CLASS_NUM, where)
    mixup, = ops.find(B.MixupOperator)
    cutmix, = ops.find(B.CutmixOperator)
    assert mixup.class_num == cutmix.class_num == CLASS_NUM and mixup.alpha == 0.2
    np.random.seed(0)
    random.seed(0)
    batch = random_batch()
    check_outputs(ops(batch), batch)  # the second op mixes the first one's soft labels


@pytest.mark.parametrize("configs, class_num, expected", [
    ([{"MixUp": {"alpha": 0.2}}], 10,
     r"^B\[0\]: unknown batch op 'MixUp'; valid: CutmixOperator, MixupOperator, OpSampler$"),
    ([{"MixupOperator": {"alpha": 0.2, "beta": 1}}], 10, r"^B\[0\]: MixupOperator has no argument 'beta'; valid: alpha$"),
    ([{"MixupOperator": {"alpha": -0.5}}], 10, r"^B\[0\]: MixupOperator: alpha must be a number >= 0"),
    ([{"OpSampler": {"MixupOperator": {"prob": 2}}}], 10, r"^B\[0\]: OpSampler: prob of MixupOperator must be in \[0, 1\]"),
    ([{"MixupOperator": {"alpha": 0.2}}], None, r"^B: batch ops need a positive Arch.class_num, got None$"),
    ({"MixupOperator": {"alpha": 0.2}}, 10, r"^B: expected a list of batch ops"),
])
def test_build_batch_ops_errors(configs, class_num, expected):
    with pytest.raises(ConfigError, match=expected):
        B.build_batch_ops(configs, class_num, "B")
