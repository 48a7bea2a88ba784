"""EfficientNetV2 progressive learning: the per-epoch schedule, what the running model and loader
really get, stage changes across real training, and resume in the middle of a stage."""
import multiprocessing

import pytest

from conftest import quick_config
from ppcls_ext.config import ConfigError
from ppcls_ext.data.transforms import build_transforms
from ppcls_ext.engine import Engine
from ppcls_ext.engine.progressive import PRESETS, ProgressiveSchedule, build_schedule


def schedule_table(schedule, epochs):
    return [(e, *(lambda v: (v.stage, v.image_size, round(v.magnitude, 4), v.mixup_alpha, round(v.dropout, 4)))(schedule.at(e)))
            for e in range(1, epochs + 1)]


def test_four_stage_paper_preset_ramps_linearly():
    schedule = ProgressiveSchedule(12, 4, PRESETS["M"])  # 128 -> 380, RandAugment 5 -> 20, mixup 0 -> 0.2, dropout 0.1 -> 0.4
    rows = schedule_table(schedule, 12)
    assert [row[1] for row in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [row[2] for row in rows][::3] == [128, 212, 296, 380]
    assert [row[3] for row in rows][::3] == [5, 10, 15, 20]
    assert [row[4] for row in rows][::3] == pytest.approx([0, 0.2 / 3, 0.4 / 3, 0.2])
    assert [row[5] for row in rows][::3] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert schedule.at(4).first_epoch == 4 and schedule.at(12).first_epoch == 10


def test_three_stage_ramp_and_paddleclas_stage_boundaries():
    schedule = ProgressiveSchedule(10, 3, {"image_size": [128, 300], "magnitude": [5, 15], "dropout": [0.1, 0.3]})
    rows = schedule_table(schedule, 10)
    assert [row[1] for row in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]  # stages end at floor(10 * k / 3): 3, 6, 10
    assert [row[2] for row in rows][::3] == [128, 214, 300, 300] and [row[3] for row in rows][::3] == [5, 10, 15, 15]
    assert [row[5] for row in rows][::3] == [0.1, 0.2, 0.3, 0.3]
    assert rows[0][4] is None  # a knob without values is left alone
    # PaddleClas's boundaries for 350 epochs, 4 stages: 87, 175, 262, 350
    paddleclas = ProgressiveSchedule(350, 4, PRESETS["S"])
    assert [paddleclas.last_epoch(k) for k in range(4)] == [87, 175, 262, 350]
    assert [paddleclas.stage_of(e) for e in (87, 88, 175, 176, 350)] == [0, 1, 1, 2, 3]


def test_values_come_from_config_paddleclas_lists_or_the_model_preset():
    ops = build_transforms([{"RandCropImage": {"size": 224, "progress_size": [160, 192, 224]}},
                            {"RandAugmentV2": {"num_layers": 2, "magnitude": 5, "progress_magnitude": [5, 7, 9]}}], "ops")
    schedule = build_schedule({"train_mode": "progressive"}, "EfficientNetV2_S", ops, 9)
    assert schedule.stages == 3  # from PaddleClas's per-stage lists
    assert [schedule.at(e).image_size for e in (1, 4, 7)] == [160, 192, 224]
    assert [schedule.at(e).magnitude for e in (1, 4, 7)] == [5, 7, 9]
    assert [schedule.at(e).dropout for e in (1, 7)] == [0.1, 0.3]  # the rest from the S preset
    plain = build_transforms([{"RandCropImage": {"size": 224}}], "ops")
    explicit = build_schedule({"train_mode": "efficientnetv2", "progressive": {"stages": 2, "preset": "L", "image_size": [64, 96]}},
                              "EfficientNetV2_S", plain, 8)
    assert [explicit.at(e).image_size for e in (1, 5)] == [64, 96] and explicit.at(8).mixup_alpha == 0.4
    assert build_schedule({}, "EfficientNetV2_S", plain, 8) is None
    assert build_schedule({"train_mode": "progressive"}, "EfficientNetV2_XL", plain, 8).at(8).image_size == 380  # L's


@pytest.mark.parametrize("glob,model,message", [
    ({"train_mode": "progressive"}, "MicroNet_M0", r"no progressive values for MicroNet_M0; set Global.progressive"),
    ({"train_mode": "progressive", "progressive": {"preset": "XS"}}, "EfficientNetV2_S", r"unknown preset 'XS'; valid: S, M, L"),
    ({"train_mode": "progressive", "progressive": {"size": [1, 2]}}, "EfficientNetV2_S", r"unknown key 'size'"),
    ({"train_mode": "progressive", "progressive": {"stages": 4, "dropout": [0.1, 0.2, 0.3]}}, "EfficientNetV2_S",
     r"dropout: give \[start, end\] or one value per stage \(4\)"),
    ({"train_mode": "progressive", "progressive": {"dropout": [0.1, 1.5]}}, "EfficientNetV2_S", r"dropout must be in \[0, 1\)"),
])
def test_schedule_errors_name_the_key(glob, model, message):
    with pytest.raises(ConfigError, match=message):
        build_schedule(glob, model, build_transforms([{"RandCropImage": {"size": 224}}], "ops"), 8)


def test_short_runs_use_one_stage_per_epoch():
    schedule = ProgressiveSchedule(2, 4, {"image_size": [128, 300], "magnitude": [5, 6, 7, 8]})
    assert schedule.stages == 2 and [schedule.at(e).image_size for e in (1, 2)] == [128, 300]
    assert [schedule.at(e).magnitude for e in (1, 2)] == [5, 8]


PROGRESSIVE = ["Global.train_mode=progressive", "Global.progressive.stages=3", "Global.progressive.image_size=[16, 32]",
               "Global.progressive.magnitude=[2, 8]", "Global.progressive.mixup_alpha=[0.0, 0.4]",
               "Global.progressive.dropout=[0.1, 0.3]", "Global.epochs=6", "Global.save_interval=1",
               "DataLoader.Train.dataset.transform_ops=[{DecodeImage: {to_rgb: True}}, {RandCropImage: {size: 32}}, "
               "{RandAugmentV2: {num_layers: 2, magnitude: 5}}, "
               "{NormalizeImage: {scale: 1.0/255.0, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], order: ''}}]",
               "DataLoader.Train.dataset.batch_transform_ops=[{MixupOperator: {alpha: 0.0}}]"]


class Recorder:
    """Forward pre-hooks that note, per call, the model's input size and its dropout probability."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_pre_hook(lambda layer, inputs: self.calls.append(
            (layer.training, tuple(inputs[0].shape[2:]), model.dropout.p)))


def test_training_follows_the_schedule_across_stages(digits, tmp_path, engine_log):
    """Six epochs, three stages: three stage changes and two epochs inside each stage, with two loader
    workers (forked afresh each epoch, so they see the new sizes; none is left behind)."""
    config = quick_config(digits, tmp_path, *PROGRESSIVE, "DataLoader.Train.loader.num_workers=2",
                          "DataLoader.Train.sampler.batch_size=64", "Global.eval_interval=3")
    engine = Engine(config, "train")
    recorder = Recorder(engine.model)
    engine.train()
    assert multiprocessing.active_children() == []
    train_calls = [(size, p) for training, size, p in recorder.calls if training]
    per_epoch = [train_calls[i * 4] for i in range(6)]  # 256 images / 64 = 4 batches an epoch
    assert [size for size, _ in per_epoch] == [(16, 16), (16, 16), (24, 24), (24, 24), (32, 32), (32, 32)]
    assert [p for _, p in per_epoch] == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3])
    assert {size for training, size, _ in recorder.calls if not training} == {(32, 32)}  # eval at the eval size
    assert [record["progressive"].mixup_alpha for record in engine.history] == pytest.approx([0, 0, 0.2, 0.2, 0.4, 0.4])
    assert engine.batch_ops.find(type(engine.batch_ops.ops[0]))[0].alpha == pytest.approx(0.4)
    log = engine_log.text
    assert "[Progressive] stage 1/3 from epoch 1: image_size 16, magnitude 2, mixup_alpha 0, dropout 0.1" in log
    assert "[Progressive] stage 2/3 from epoch 3: image_size 24, magnitude 5, mixup_alpha 0.2, dropout 0.2" in log
    assert "[Progressive] stage 3/3 from epoch 5" in log and log.count("[Progressive]") == 3


def test_resume_in_the_middle_of_a_stage_continues_the_schedule(digits, tmp_path, engine_log):
    fresh = Engine(quick_config(digits, tmp_path / "a", *PROGRESSIVE, "Global.eval_during_train=False"), "train")
    fresh.train()
    checkpoint = tmp_path / "a" / "output" / "MicroNet_M0" / "epoch_3"
    resumed = Engine(quick_config(digits, tmp_path / "a", *PROGRESSIVE, "Global.eval_during_train=False",
                                  f"Global.checkpoints={checkpoint}"), "train")
    recorder = Recorder(resumed.model)
    resumed.train()
    assert [r["epoch"] for r in resumed.history] == [4, 5, 6]
    assert [r["progressive"] for r in resumed.history] == [r["progressive"] for r in fresh.history[3:]]
    assert "[Progressive] stage 2/3 from epoch 3" in engine_log.text.split("resumed from")[-1]  # logged on resume
    assert recorder.calls[0][1:] == ((24, 24), pytest.approx(0.2))


def test_a_missing_operator_fails_at_start_up(digits, tmp_path):
    config = quick_config(digits, tmp_path, "Global.train_mode=progressive", "Global.progressive.magnitude=[5, 10]",
                          "Global.progressive.stages=2", "Global.epochs=2")
    with pytest.raises(ConfigError, match=r"progressive magnitude 10 has no operator to act on: add RandAugmentV2 to "
                                          r"DataLoader.Train.dataset.transform_ops"):
        Engine(config, "train")


def test_a_schedule_that_never_changes_trains_exactly_like_the_fixed_config(digits, tmp_path):
    """Progressive learning changes nothing but the scheduled values: with constant values (the ones the
    fixed config holds) the run is the fixed run, loss for loss."""
    common = ("Global.epochs=2", "Global.seed=3", "Global.eval_interval=2", "Arch.dropout=0.1",
              "DataLoader.Train.dataset.transform_ops=[{DecodeImage: {to_rgb: True}}, {RandCropImage: {size: 32}}, "
              "{RandAugmentV2: {num_layers: 1, magnitude: 3}}, {NormalizeImage: {scale: 1.0/255.0, order: ''}}]")
    fixed = Engine(quick_config(digits, tmp_path / "fixed", *common), "train")
    fixed.train()
    constant = Engine(quick_config(digits, tmp_path / "constant", *common, "Global.train_mode=progressive",
                                   "Global.progressive={stages: 2, image_size: [32, 32], magnitude: [3, 3], dropout: [0.1, 0.1]}"),
                      "train")
    constant.train()
    assert [r["train"] for r in constant.history] == [r["train"] for r in fixed.history]
    assert constant.history[-1]["eval"] == fixed.history[-1]["eval"]
