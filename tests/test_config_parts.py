"""Everything a config names by name (transform and batch ops, datasets, losses, metrics, optimizers, learning-rate
schedules), built through the public builders: a wrongly typed or out-of-range value for any argument of any
registered part is a one-line ConfigError naming the config path, never another exception; misspelt names
and arguments get a suggestion; a TypeError raised inside a constructor is not reported as a bad argument;
and an op can offer to take the decoding over without Compose knowing the op."""
from __future__ import annotations

import inspect
from typing import Any, Callable, List, Tuple

import cv2
import numpy as np
import paddle
import pytest

from ppcls_ext.config import ConfigError
from ppcls_ext.data.batch_ops import BATCH_OPS, build_batch_ops
from ppcls_ext.data.demo import photo_jpegs
from ppcls_ext.data.loader import DATASETS, build_dataset
from ppcls_ext.data.transforms import TRANSFORM_OPS, Compose, DecodeImage, RandCropImage, build_transforms
from ppcls_ext.engine import losses
from ppcls_ext.engine.distillation.losses import DISTILLATION_LOSSES, build_distillation_loss
from ppcls_ext.engine.distillation.metrics import build_distillation_metric
from ppcls_ext.engine.metrics import METRICS, build_metric
from ppcls_ext.engine.optim import OPTIMIZERS, SCHEDULES, build_lr_schedule, build_optimizer

#: values of the wrong type or out of range for some argument of some part
BAD_VALUES = [None, True, -1, 0, 1.5, float("nan"), "text", [1], {"a": 1}]
MODELS = ["Student", "Teacher"]

#: the arguments that make each part build; the probe replaces one argument at a time
TRANSFORM_BASES = {"CropImage": {"size": 8}, "CropImageAtRatio": {"size": 8, "pad": 0}, "ResizeImage": {"size": 8},
                   "RandCropImage": {"size": 8}}
DISTILLATION_BASES = {"DistillationGTCELoss": {"model_names": ["Student"]}}
PAIRS = {"model_name_pairs": [["Student", "Teacher"]]}
SCHEDULE_BASES = {"Constant": {"learning_rate": 0.1}, "Cosine": {"learning_rate": 0.1, "eta_min": 0.0},
                  "Piecewise": {"decay_epochs": [1], "values": [0.1, 0.01]},
                  "Step": {"learning_rate": 0.1, "step_size": 1, "gamma": 0.5},
                  "Exponential": {"learning_rate": 0.1, "gamma": 0.97, "decay_epochs": 2.4, "staircase": True},
                  "MultiStepDecay": {"learning_rate": 0.1, "milestones": [1], "gamma": 0.1}}
WARMUP_KEYS = ["warmup_epoch", "warmup_start_lr", "by_epoch", "last_epoch"]
OPTIMIZER_KEYS = {"Momentum": ["momentum", "use_nesterov"], "SGD": [], "AdamW": ["beta1", "beta2", "epsilon"],
                  "RMSProp": ["momentum", "rho", "epsilon", "centered", "tf_style"]}
SHARED_OPTIMIZER_KEYS = ["lr", "regularizer", "weight_decay", "no_weight_decay_name", "one_dim_param_no_weight_decay",
                         "clip_norm", "multi_precision"]


def signature_keys(cls: type, skip: Tuple[str, ...] = ()) -> List[str]:
    return [name for name, p in inspect.signature(cls).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in skip]


def probes(registry_name: str) -> List[Tuple[str, str, Callable[[], Any]]]:
    """(label, config path the error must start with, build) for every argument of every part of one
    registry, with each bad value in turn."""
    cases: List[Tuple[str, str, Callable[[], Any]]] = []

    def add(label: str, where: str, build: Callable[[Any], Any]) -> None:
        for value in BAD_VALUES:
            cases.append((f"{label}={value!r}", where, lambda value=value: build(value)))

    if registry_name == "transform ops":
        for name in TRANSFORM_OPS:
            base = TRANSFORM_BASES.get(name, {})
            for key in signature_keys(TRANSFORM_OPS[name]):
                add(f"{name}.{key}", "T[0]", lambda v, name=name, base=base, key=key:
                    build_transforms([{name: {**base, key: v}}], "T"))
    elif registry_name == "batch ops":
        for name in ("MixupOperator", "CutmixOperator"):
            add(f"{name}.alpha", "B[0]", lambda v, name=name: build_batch_ops([{name: {"alpha": v}}], 10, "B"))
            add(f"OpSampler.{name}", "B[0]", lambda v, name=name: build_batch_ops([{"OpSampler": {name: v}}], 10, "B"))
            for key in ("prob", "alpha"):
                add(f"OpSampler.{name}.{key}", "B[0]", lambda v, name=name, key=key:
                    build_batch_ops([{"OpSampler": {name: {"prob": 0.5, key: v}}}], 10, "B"))
    elif registry_name == "losses":
        for key in signature_keys(losses.CELoss) + ["weight"]:
            add(f"CELoss.{key}", "Loss.Train[0]", lambda v, key=key: losses.build_loss([{"CELoss": {key: v}}], "Loss.Train"))
    elif registry_name == "distillation losses":
        for name in DISTILLATION_LOSSES:
            base = DISTILLATION_BASES.get(name, PAIRS)
            for key in signature_keys(DISTILLATION_LOSSES[name]) + ["weight"]:
                add(f"{name}.{key}", "Loss.Train[0]", lambda v, name=name, base=base, key=key:
                    build_distillation_loss([{name: {**base, key: v}}], "Loss.Train", MODELS))
    elif registry_name == "metrics":
        add("TopkAcc.topk", "Metric.Eval[0]", lambda v: build_metric([{"TopkAcc": {"topk": v}}], "Metric.Eval"))
        for name, base, keys in (("TopkAcc", {}, ["topk"]),
                                 ("DistillationTopkAcc", {"model_key": "Student"}, ["model_key", "feature_key", "topk"])):
            for key in keys:
                add(f"distillation {name}.{key}", "Metric.Eval[0]", lambda v, name=name, base=base, key=key:
                    build_distillation_metric([{name: {**base, key: v}}], "Metric.Eval", MODELS, "Student"))
    elif registry_name == "schedules":
        for name in SCHEDULES:
            base = SCHEDULE_BASES[name]
            for key in list(base) + WARMUP_KEYS:
                add(f"{name}.{key}", "Optimizer.lr", lambda v, name=name, base=base, key=key:
                    build_lr_schedule({"name": name, **base, key: v}, 2, 5))
    elif registry_name == "optimizers":
        model, schedule = paddle.nn.Linear(2, 2), build_lr_schedule({"name": "Constant", "learning_rate": 0.1}, 1, 1)
        for name in OPTIMIZERS:
            for key in OPTIMIZER_KEYS[name] + SHARED_OPTIMIZER_KEYS:
                add(f"{name}.{key}", "Optimizer", lambda v, name=name, key=key:
                    build_optimizer({"name": name, key: v}, model, schedule))
    return cases


@pytest.mark.parametrize("registry_name", ["transform ops", "batch ops", "losses", "distillation losses", "metrics",
                                           "schedules", "optimizers"])
def test_a_bad_value_for_any_argument_is_a_config_error_naming_the_path(registry_name):
    problems = []
    for label, where, build in probes(registry_name):
        try:
            build()
        except ConfigError as error:
            argument = label.split("=")[0].split(".")[-1]
            if not str(error).startswith(f"{where}: ") and not str(error).startswith(f"{where}.") or "\n" in str(error) \
                    or argument not in str(error):
                problems.append(f"{label}: {error}")
        except Exception as error:  # noqa: BLE001 - what the test is about
            problems.append(f"{label}: {type(error).__name__}: {error}")
    assert not problems, f"{len(problems)} values not reported as a ConfigError at their path:\n" + "\n".join(problems[:40])


def test_a_bad_dataset_argument_is_a_config_error(tmp_path):
    """Datasets report a bad folder or label file by its own name (not the config path): any ConfigError."""
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "01.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    (tmp_path / "list.txt").write_text("cat/01.png 0\n")
    bases = {"ImageNetDataset": {"image_root": str(tmp_path), "cls_label_path": str(tmp_path / "list.txt")},
             "ImageFolderDataset": {"image_root": str(tmp_path)}}
    assert set(DATASETS) == set(bases)
    problems = []
    for name, base in bases.items():
        build_dataset({"name": name, **base}, "DataLoader.Train.dataset", skip_broken=True)
        for key in ("image_root", "cls_label_path", "delimiter"):
            for value in BAD_VALUES:
                try:
                    build_dataset({"name": name, **base, key: value}, "DataLoader.Train.dataset", skip_broken=True)
                except ConfigError as error:
                    if "\n" in str(error):
                        problems.append(f"{name}.{key}={value!r}: {error}")
                except Exception as error:  # noqa: BLE001
                    problems.append(f"{name}.{key}={value!r}: {type(error).__name__}: {error}")
    assert not problems, "\n".join(problems)


def test_every_registered_part_is_probed():
    assert set(TRANSFORM_OPS) >= {"DecodeImage", "RandCropImage", "NormalizeImage", "RandAugmentV2"}
    assert set(BATCH_OPS) == {"MixupOperator", "CutmixOperator", "OpSampler"}
    assert set(losses.LOSSES) == {"CELoss"} and set(METRICS) == {"TopkAcc"}
    assert set(SCHEDULES) == set(SCHEDULE_BASES) and set(OPTIMIZERS) == set(OPTIMIZER_KEYS)


@pytest.mark.parametrize("build, message", [
    (lambda: build_transforms([{"DecodeImage": None}, {"RandCropImage": {"szie": 224}}],
                              "DataLoader.Train.dataset.transform_ops"),
     "DataLoader.Train.dataset.transform_ops[1]: RandCropImage has no argument 'szie'; valid: size, progress_size, "
     "scale, ratio, interpolation, use_log_aspect, backend; did you mean size?"),
    (lambda: build_transforms([{"RandCrop": {"size": 224}}], "DataLoader.Train.dataset.transform_ops"),
     "DataLoader.Train.dataset.transform_ops[0]: unknown transform op 'RandCrop'; valid: AutoAugment, CropImage, "
     "CropImageAtRatio, DecodeImage, NormalizeImage, RandAugment, RandAugmentV2, RandCropImage, RandFlipImage, "
     "RandomErasing, ResizeImage, ToCHWImage; did you mean RandCropImage?"),
    (lambda: build_optimizer({"name": "Adam"}, paddle.nn.Linear(2, 2), None),
     "Optimizer.name: unknown optimizer 'Adam'; valid: Momentum, SGD, RMSProp, AdamW; did you mean AdamW?"),
    (lambda: build_optimizer({"name": "Momentum", "momentun": 0.9}, paddle.nn.Linear(2, 2), None),
     "Optimizer: Momentum has no argument 'momentun'; valid: momentum, use_nesterov, lr, regularizer, weight_decay, "
     "no_weight_decay_name, one_dim_param_no_weight_decay, clip_norm, multi_precision; did you mean momentum?"),
    (lambda: build_lr_schedule({"name": "Cosine", "learning_rate": 0.1, "warmup_epochs": 5}, 2, 5),
     "Optimizer.lr: Cosine has no argument 'warmup_epochs'; valid: learning_rate, eta_min, warmup_epoch, "
     "warmup_start_lr, by_epoch, last_epoch; did you mean warmup_epoch?"),
    (lambda: losses.build_loss([{"CELoss": {"epsilon": 1.0}}], "Loss.Train"),
     "Loss.Train[0]: CELoss: epsilon must be a number in [0, 1) or null, got 1.0"),
    (lambda: build_metric([{"TopkAcc": {"topk": [1, "5"]}}], "Metric.Eval"),
     "Metric.Eval[0]: TopkAcc: topk must be a positive integer or a list of them, got [1, '5']"),
])
def test_misspelt_names_and_arguments_get_a_suggestion_and_bad_values_the_path(build, message):
    with pytest.raises(ConfigError) as error:
        build()
    assert str(error.value) == message


def test_a_type_error_inside_a_constructor_is_not_called_a_bad_argument(monkeypatch):
    """A bug in a part's own code (here CELoss's, with the real signature) surfaces as itself, with its
    traceback, rather than as a config error that blames the user's arguments."""

    def broken_init(self, epsilon=None, reduction="mean"):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(losses.CELoss, "__init__", broken_init)
    with pytest.raises(TypeError, match="unsupported operand") as error:
        losses.build_loss([{"CELoss": {"epsilon": 0.1}}], "Loss.Train")
    assert not isinstance(error.value, ConfigError)


class TwoStepCrop:
    """A test op that offers to fuse with the decoding before it, as RandCropImage does."""

    def __init__(self, accept: bool):
        self.accept = accept

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return img[:8, :8]

    def fuse_with_decode(self, decode: DecodeImage):
        return (lambda data: ("fused", self(decode(data)))) if self.accept else None


def test_an_op_that_offers_to_take_the_decoding_over_replaces_both_steps():
    data = photo_jpegs(1)[0]
    decode, crop = DecodeImage(), TwoStepCrop(accept=True)
    compose = Compose([decode, crop, TwoStepCrop(accept=True)])
    assert len(compose.steps) == 2 and compose.find(TwoStepCrop)[0] is crop and compose.find(DecodeImage) == [decode]
    tag, out = compose.steps[0](data)
    assert tag == "fused" and np.array_equal(out, decode(data)[:8, :8])
    assert compose.steps[1] is compose.ops[2]  # only directly after the decoding
    declined = Compose([decode, TwoStepCrop(accept=False)])
    assert declined.steps == declined.ops
    assert type(Compose([decode, RandCropImage(16)]).steps[0]).__name__ == "DecodeRandCrop"
