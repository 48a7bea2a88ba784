"""PaddleClas's batch operators (Mixup, Cutmix, OpSampler) and the builder for `batch_transform_ops`.

A batch operator takes a list of samples [(CHW float image, label), ...] and returns
[(image, soft_label float32 [class_num]), ...]. Every sample gets a soft label, mixed or not, so that
batches stay uniform. Labels may be ints or already-soft labels (so ops can be chained).
Randomness comes from numpy's global generator (Mixup/Cutmix) and Python's `random` (OpSampler).
"""
from __future__ import annotations

import logging
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import ConfigError, integer, number, passes, single_entry
from ..config_registry import ConfigRegistry
from .registries import BATCH_OPS

logger = logging.getLogger("ppcls_ext")

Sample = Tuple[np.ndarray, Any]


def soft_labels(labels: Sequence[Any], class_num: int, op: str) -> np.ndarray:
    """[N, class_num] float32 targets: one-hot for integer labels, passed through for soft labels."""
    targets = np.zeros((len(labels), class_num), dtype=np.float32)
    for row, label in enumerate(labels):
        value = np.asarray(label)
        if value.size == 1 and np.issubdtype(value.dtype, np.integer):
            index = int(value.reshape(()))
            if not 0 <= index < class_num:
                raise ValueError(f"{op}: label {index} is outside [0, {class_num}) (class_num={class_num})")
            targets[row, index] = 1.0
        elif value.shape == (class_num,):
            targets[row] = value
        else:
            raise ValueError(f"{op}: a label must be an int or a soft label of shape [{class_num}], "
                             f"got {value.dtype} of shape {value.shape}")
    return targets


_CLASS_NUM = integer(1, expected="a positive int (set Arch.class_num)")
_ALPHA = number(0, expected="a number >= 0 (0 turns mixing off)")
_PROB = number(0, 1, expected="in [0, 1]")


def _check_class_num(class_num: Any, op: str) -> int:
    return int(_CLASS_NUM(class_num, f"{op}: class_num"))


def _check_alpha(alpha: Any, op: str) -> float:
    return float(_ALPHA(alpha, f"{op}: alpha"))


def _stack_images(batch: Sequence[Sample], op: str) -> np.ndarray:
    """The batch's images as one new [N, C, H, W] float array (so mixing never alters the inputs)."""
    if not isinstance(batch, (list, tuple)) or not batch:
        raise ValueError(f"{op}: expected a non-empty list of (image, label) samples")
    images = np.stack([np.asarray(sample[0]) for sample in batch])
    if images.ndim != 4:
        raise ValueError(f"{op}: expected CHW images, got a batch of shape {images.shape}")
    return images if np.issubdtype(images.dtype, np.floating) else images.astype(np.float32)


def unmixed(batch: Sequence[Sample], class_num: int, op: str) -> List[Tuple[Any, np.ndarray]]:
    """The batch unchanged, with one-hot (or the given soft) labels."""
    targets = soft_labels([sample[1] for sample in batch], class_num, op)
    return [(sample[0], target) for sample, target in zip(batch, targets)]


class _BatchMixer:
    """What mixup and cutmix share: checked class count and alpha (reassignable between epochs), and the
    draw of a permutation of the batch and lam ~ Beta(alpha, alpha)."""

    def __init__(self, class_num: int, alpha: float):
        self.name = type(self).__name__
        self.class_num = _check_class_num(class_num, self.name)
        self.alpha = _check_alpha(alpha, self.name)

    def _draw(self, batch: Sequence[Sample]) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
        """(images, soft targets, permutation, lam), or None when alpha is 0 (the batch stays unmixed)."""
        if _check_alpha(self.alpha, self.name) == 0:
            return None
        images = _stack_images(batch, self.name)
        targets = soft_labels([sample[1] for sample in batch], self.class_num, self.name)
        return images, targets, np.random.permutation(len(batch)), float(np.random.beta(self.alpha, self.alpha))


#: the batch ops OpSampler chooses between
SAMPLED_OPS = ConfigRegistry("batch op", sort_names=False)


@BATCH_OPS.register
@SAMPLED_OPS.register
class MixupOperator(_BatchMixer):
    """Mixup (arXiv:1710.09412): blend the batch with a permutation of itself by lam ~ Beta(alpha, alpha),
    labels alike. `alpha` may be reassigned between epochs; alpha 0 leaves the batch unmixed."""

    def __init__(self, class_num: int, alpha: float = 1.0):
        super().__init__(class_num, alpha)

    def __call__(self, batch: Sequence[Sample]) -> List[Tuple[np.ndarray, np.ndarray]]:
        drawn = self._draw(batch)
        if drawn is None:
            return unmixed(batch, self.class_num, self.name)
        images, targets, order, lam = drawn
        images = lam * images + (1.0 - lam) * images[order]
        targets = lam * targets + (1.0 - lam) * targets[order]
        return list(zip(images, targets))


@BATCH_OPS.register
@SAMPLED_OPS.register
class CutmixOperator(_BatchMixer):
    """CutMix (arXiv:1905.04899): paste a box of area fraction about 1 - lam, lam ~ Beta(alpha, alpha),
    from a permutation of the batch; labels mix by the exact pasted area. `alpha` may be reassigned
    between epochs; alpha 0 leaves the batch unmixed."""

    def __init__(self, class_num: int, alpha: float = 0.2):
        super().__init__(class_num, alpha)

    @staticmethod
    def random_box(height: int, width: int, lam: float) -> Tuple[int, int, int, int]:
        """(top, bottom, left, right) of a box with sides sqrt(1 - lam) of the image's, centred at a
        uniform random point and clipped to the image."""
        cut = np.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy = np.random.randint(height)
        cx = np.random.randint(width)
        top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
        return int(top), int(bottom), int(left), int(right)

    def __call__(self, batch: Sequence[Sample]) -> List[Tuple[np.ndarray, np.ndarray]]:
        drawn = self._draw(batch)
        if drawn is None:
            return unmixed(batch, self.class_num, self.name)
        images, targets, order, lam = drawn
        height, width = images.shape[-2:]
        top, bottom, left, right = self.random_box(height, width, lam)
        images[:, :, top:bottom, left:right] = images[order, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
        targets = lam * targets + (1.0 - lam) * targets[order]
        return list(zip(images, targets))


@BATCH_OPS.register
class OpSampler:
    """Apply one of its ops per batch, op k with its `prob`; with the probability left over (1 - sum)
    the batch passes unmixed. Config: OpSampler: {MixupOperator: {alpha: 0.8, prob: 0.5}, ...}."""

    def __init__(self, class_num: int, **ops: Dict[str, Any]):
        self.class_num = _check_class_num(class_num, "OpSampler")
        self.ops: List[Any] = []
        self.probs: List[float] = []
        for name, config in ops.items():
            name, args = single_entry({name: config}, "OpSampler")
            if "prob" not in args:
                logger.warning("OpSampler: %s has no 'prob'; it will never be applied (prob 0)", name)
            prob = _PROB(args.pop("prob", 0.0), f"OpSampler: prob of {name}")
            self.ops.append(SAMPLED_OPS.build({name: args}, "OpSampler", class_num=self.class_num))
            self.probs.append(float(prob))
        total = sum(self.probs)
        if total > 1.0 + 1e-6:
            raise ValueError(f"OpSampler: the probs of its ops must sum to at most 1, got {total:g}")
        self.none_prob = max(0.0, 1.0 - total)

    def __call__(self, batch: Sequence[Sample]) -> List[Tuple[np.ndarray, np.ndarray]]:
        op = random.choices(self.ops + [None], weights=self.probs + [self.none_prob], k=1)[0]
        return unmixed(batch, self.class_num, "OpSampler") if op is None else op(batch)


class BatchCompose:
    """Apply batch ops in order; `find(op_type)` returns the ops of a class, looking inside OpSampler
    too (a schedule changing `MixupOperator.alpha` finds it wherever it sits)."""

    def __init__(self, ops: Sequence[Any]):
        self.ops: List[Any] = list(ops)

    def __call__(self, batch: Sequence[Sample]) -> List[Tuple[np.ndarray, np.ndarray]]:
        for op in self.ops:
            batch = op(batch)
        return batch

    def find(self, op_type: type) -> List[Any]:
        found = []
        for op in self.ops:
            for candidate in (op.ops if isinstance(op, OpSampler) else [op]):
                if isinstance(candidate, op_type):
                    found.append(candidate)
        return found

    def __repr__(self) -> str:
        return f"BatchCompose([{', '.join(type(op).__name__ for op in self.ops)}])"


def build_batch_ops(op_configs: Optional[list], class_num: Optional[int], where: str) -> Optional[BatchCompose]:
    """A BatchCompose from PaddleClas's `batch_transform_ops` list (class_num, from Arch.class_num, is
    passed to every op), or None when the list is absent or empty."""
    if not op_configs:
        return None
    if not isinstance(op_configs, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of batch ops like [{{MixupOperator: {{alpha: 0.2}}}}], "
                          f"got {op_configs!r}")
    if not passes(_CLASS_NUM, class_num):
        raise ConfigError(f"{where}: batch ops need a positive Arch.class_num, got {class_num!r}")
    return BatchCompose([BATCH_OPS.build(item, f"{where}[{index}]", class_num=int(class_num))
                         for index, item in enumerate(op_configs)])
