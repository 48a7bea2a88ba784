"""The shipped configs (one per variant) are complete and agree with the registry; upstream-style
PaddleClas configs run unmodified except for data paths."""
import glob
import os

import numpy as np
import pytest

import ppcls_ext
from conftest import REPO
from ppcls_ext.config import load_config, section
from ppcls_ext.data.batch_ops import build_batch_ops
from ppcls_ext.data.transforms import (CropImage, CropImageAtRatio, NormalizeImage, RandAugment, RandCropImage, ResizeImage,
                                       build_transforms)
from ppcls_ext.engine import Engine
from ppcls_ext.engine.losses import build_loss
from ppcls_ext.engine.metrics import build_metric
from ppcls_ext.engine.optim import build_lr_schedule, build_optimizer
from ppcls_ext.engine.progressive import build_schedule

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "ImageNet", "*", "*.yaml")))


def config_name(name: str) -> str:
    """micronet_m0.yaml <- MicroNet_M0, efficientnet_b0.yaml <- EfficientNetB0, efficientnetv2_s.yaml <- EfficientNetV2_S,
    efficientnet_lite0.yaml <- EfficientNetLite0."""
    return name.lower().replace("micronet_", "micronet_").replace("efficientnetv2_", "efficientnetv2_").replace(
        "efficientnetb", "efficientnet_b").replace("efficientnetl2", "efficientnet_l2").replace(
        "efficientnetlite", "efficientnet_lite") + ".yaml"


def test_one_config_per_model_named_in_lower_case():
    expected = {config_name(name) for name in ppcls_ext.list_models()}
    assert {os.path.basename(path) for path in CONFIGS} == expected
    assert os.path.isfile(os.path.join(REPO, "configs", "ImageNet", "MicroNet", "micronet_m3.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_is_complete_and_matches_the_registry(path):
    config = load_config(path)
    name = section(config, "Arch.name")
    assert os.path.basename(path) == config_name(name)
    defaults = ppcls_ext.get_model_config(name)
    train = build_transforms(section(config, "DataLoader.Train.dataset.transform_ops"), "train")
    evaluate = build_transforms(section(config, "DataLoader.Eval.dataset.transform_ops"), "eval")
    infer = build_transforms(section(config, "Infer.transforms"), "infer")
    schedule = build_schedule(section(config, "Global"), name, train, section(config, "Global.epochs"))
    if schedule is None:
        assert train.find(RandCropImage)[0].size == defaults.train_size
    else:  # progressive (V2 S/M/L/XL): the transforms hold the last stage's values
        last = schedule.at(schedule.epochs)
        assert train.find(RandCropImage)[0].size == last.image_size and train.find(RandAugment)[0].magnitude == last.magnitude
        assert schedule.stages == 4 and schedule.at(1).image_size == 128 and abs(last.image_size - defaults.train_size) <= 4
    if defaults.crop_mode == "resize_short":
        assert evaluate.find(ResizeImage)[0].resize_short == defaults.resize_short
        assert evaluate.find(CropImage)[0].size == (defaults.eval_size, defaults.eval_size)
    else:
        crop = evaluate.find(CropImageAtRatio)[0]
        assert crop.size == defaults.eval_size and crop.size / (crop.size + crop.pad) == pytest.approx(defaults.crop_pct)
    normalize = evaluate.find(NormalizeImage)[0]  # (x * scale - mean) / std, in units of x / 255
    assert tuple(np.asarray(normalize.mean) / (normalize.scale * 255)) == pytest.approx(defaults.mean, abs=1e-6)
    assert tuple(np.asarray(normalize.std) / (normalize.scale * 255)) == pytest.approx(defaults.std, abs=1e-6)
    assert [type(op) for op in infer.ops[:-1]] == [type(op) for op in evaluate.ops]  # deploy = evaluation
    assert section(config, "Global.image_shape") == [3, defaults.eval_size, defaults.eval_size]
    build_batch_ops(section(config, "DataLoader.Train.dataset.batch_transform_ops", required=False), 1000, "batch")
    build_loss(section(config, "Loss.Train"), "Loss.Train")
    build_metric(section(config, "Metric.Eval"), "Metric.Eval")
    schedule = build_lr_schedule(section(config, "Optimizer.lr"), section(config, "Global.epochs"), 100)
    build_optimizer(section(config, "Optimizer"), ppcls_ext.create_model("MicroNet_M0"), schedule)
    if defaults.family != "MicroNet":
        assert config["EMA"]["decay"] == 0.9999 and config["Loss"]["Train"][0]["CELoss"]["epsilon"] == 0.1
        assert config["Optimizer"]["name"] == "RMSProp" and config["Optimizer"]["lr"]["name"] == "Exponential"


UPSTREAM_STYLE_MICRONET = """
Global:
  checkpoints: null
  pretrained_model: null
  output_dir: {out}
  device: gpu
  save_interval: 1
  eval_during_train: True
  eval_interval: 1
  epochs: 1
  print_batch_step: 10
  use_visualdl: False
  image_shape: [3, 224, 224]
  save_inference_dir: ./inference
  to_static: False
AMP:
  use_amp: False
  use_fp16_test: False
  scale_loss: 128.0
  use_dynamic_loss_scaling: True
  use_promote: False
  level: O1
Arch:
  name: MicroNet_M0
  class_num: 10
Loss:
  Train:
    - CELoss:
        weight: 1.0
  Eval:
    - CELoss:
        weight: 1.0
Optimizer:
  name: Momentum
  momentum: 0.9
  lr:
    name: Cosine
    learning_rate: 0.2
    warmup_epoch: 5
  regularizer:
    name: 'L2'
    coeff: 3e-5
DataLoader:
  Train:
    dataset:
      name: ImageNetDataset
      image_root: {root}
      cls_label_path: {root}/train_small.txt
      transform_ops:
        - DecodeImage:
            to_rgb: True
            channel_first: False
            backend: pil
        - RandCropImage:
            size: 224
            interpolation: bilinear
            use_log_aspect: True
            backend: pil
        - RandFlipImage:
            flip_code: 1
        - NormalizeImage:
            scale: 1.0/255.0
            mean: [0.485, 0.456, 0.406]
            std: [0.229, 0.224, 0.225]
            order: ''
    sampler:
      name: DistributedBatchSampler
      batch_size: 64
      drop_last: False
      shuffle: True
    loader:
      num_workers: 2
      use_shared_memory: True
  Eval:
    dataset:
      name: ImageNetDataset
      image_root: {root}
      cls_label_path: {root}/val_small.txt
      transform_ops:
        - DecodeImage:
            to_rgb: True
            channel_first: False
            backend: pil
        - ResizeImage:
            resize_short: 256
            interpolation: bilinear
            backend: pil
        - CropImage:
            size: 224
        - NormalizeImage:
            scale: 1.0/255.0
            mean: [0.485, 0.456, 0.406]
            std: [0.229, 0.224, 0.225]
            order: ''
    sampler:
      name: DistributedBatchSampler
      batch_size: 64
      drop_last: False
      shuffle: False
    loader:
      num_workers: 2
      use_shared_memory: True
Infer:
  infer_imgs: {root}/images/val/1
  batch_size: 10
  transforms:
    - DecodeImage:
        to_rgb: True
        channel_first: False
        backend: pil
    - ResizeImage:
        resize_short: 256
        interpolation: bilinear
        backend: pil
    - CropImage:
        size: 224
    - NormalizeImage:
        scale: 1.0/255.0
        mean: [0.485, 0.456, 0.406]
        std: [0.229, 0.224, 0.225]
        order: ''
    - ToCHWImage:
  PostProcess:
    name: Topk
    topk: 5
    class_id_map_file: ppcls/utils/imagenet1k_label_list.txt
Metric:
  Train:
    - TopkAcc:
        topk: [1, 5]
  Eval:
    - TopkAcc:
        topk: [1, 5]
"""


def test_an_upstream_style_micronet_config_trains_unmodified(digits, tmp_path, engine_log):
    """PaddleClas's MicroNet config layout (device gpu, pil backends, to_static, AMP off, 4 worker-style
    loader, repository-relative label map) trains, evaluates and infers here; only paths differ."""
    path = tmp_path / "MicroNet_M0.yaml"
    path.write_text(UPSTREAM_STYLE_MICRONET.format(out=tmp_path / "out", root=digits))
    config = load_config(str(path))
    Engine(config, "train").train()
    assert "Global.device is gpu, but this Paddle build or machine has no CUDA GPU: running on CPU" in engine_log.text
    assert "Global.to_static" not in engine_log.text  # False: nothing to ignore
    assert os.path.isfile(tmp_path / "out" / "MicroNet_M0" / "best_model.pdparams")
    results = Engine(load_config(str(path), [f"Global.pretrained_model={tmp_path}/out/MicroNet_M0/latest"]), "infer").infer()
    assert len(results) > 5 and all(len(r["label_names"]) == 5 for r in results)  # ImageNet names from the wheel


def test_an_upstream_style_efficientnetv2_config_trains_with_small_images(digits, tmp_path, engine_log):
    """PaddleClas's EfficientNetV2_S layout: AMP section without use_amp, use_sync_bn, train_mode
    efficientnetv2 (progressive learning: the S preset, with images shrunk to 32-64 px so that CPU
    training is quick), RandAugmentV2, 128/128 normalisation, CropImageAtRatio."""
    text = UPSTREAM_STYLE_MICRONET.format(out=tmp_path / "out", root=digits)
    text = (text.replace("name: MicroNet_M0\n  class_num: 10", "name: EfficientNetV2_S\n  class_num: 10\n  use_sync_bn: True")
            .replace("  to_static: False", "  train_mode: efficientnetv2")
            .replace("  use_amp: False\n", "")
            .replace("size: 224\n            interpolation: bilinear\n            use_log_aspect: True\n            backend: pil",
                     "size: 64\n            scale: [0.05, 1.0]")
            .replace("        - RandFlipImage:\n            flip_code: 1\n",
                     "        - RandFlipImage:\n            flip_code: 1\n        - RandAugmentV2:\n            num_layers: 2\n"
                     "            magnitude: 5\n")
            .replace("        - ResizeImage:\n            resize_short: 256\n            interpolation: bilinear\n"
                     "            backend: pil\n        - CropImage:\n            size: 224",
                     "        - CropImageAtRatio:\n            size: 64\n            pad: 32\n            interpolation: bilinear")
            .replace("scale: 1.0/255.0\n            mean: [0.485, 0.456, 0.406]\n            std: [0.229, 0.224, 0.225]",
                     "scale: 1.0\n            mean: [128.0, 128.0, 128.0]\n            std: [128.0, 128.0, 128.0]")
            .replace("batch_size: 64", "batch_size: 16")
            .replace("/train_small.txt", "/train_tiny.txt"))
    (digits / "train_tiny.txt").write_text("\n".join((digits / "train_small.txt").read_text().splitlines()[::8]) + "\n")
    path = tmp_path / "EfficientNetV2_S.yaml"
    path.write_text(text)
    Engine(load_config(str(path), ["Global.epochs=2", "Global.progressive.image_size=[32, 64]"]), "train").train()
    assert "AMP (mixed precision) needs a GPU; training in float32 on CPU" in engine_log.text
    assert "[Progressive] stage 1/2 from epoch 1: image_size 32, magnitude 5, mixup_alpha 0, cutmix_alpha 0, dropout 0.1" in engine_log.text
    assert "[Progressive] stage 2/2 from epoch 2: image_size 64, magnitude 15" in engine_log.text
    assert os.path.isfile(tmp_path / "out" / "EfficientNetV2_S" / "latest.pdparams")


PROGRESSIVE = [path for path in CONFIGS if (load_config(path).get("Global") or {}).get("train_mode") == "progressive"]


@pytest.mark.parametrize("path", PROGRESSIVE, ids=os.path.basename)
def test_paddleclas_progressive_lists_agree_with_global_progressive(path):
    """PaddleClas's progressive trainer reads per-stage values from RandCropImage.progress_size (transform 1),
    RandAugmentV2.progress_magnitude (transform 3) and the model's dropout list (Arch.dropout), for its fixed
    4 stages; ours from Global.progressive. A shipped config must say the same in both places."""
    config = load_config(path)
    ops = section(config, "DataLoader.Train.dataset.transform_ops")
    assert list(ops[1]) == ["RandCropImage"] and list(ops[3]) == ["RandAugmentV2"]  # PaddleClas finds them by position
    theirs = {"image_size": ops[1]["RandCropImage"]["progress_size"], "magnitude": ops[3]["RandAugmentV2"]["progress_magnitude"],
              "dropout": section(config, "Arch.dropout")}
    without_lists = [{name: {k: v for k, v in args.items() if not k.startswith("progress_")}} for op in ops for name, args in op.items()]
    epochs = section(config, "Global.epochs")
    ours = build_schedule(section(config, "Global"), section(config, "Arch.name"), build_transforms(without_lists, "train"), epochs)
    assert ours.stages == 4
    for knob, values in theirs.items():
        assert len(values) == 4 and ours.values[knob] == pytest.approx(values, abs=1e-6), knob
    with_lists = build_schedule(section(config, "Global"), section(config, "Arch.name"), build_transforms(ops, "train"), epochs,
                                ppcls_ext.create_model("MicroNet_M0", dropout=theirs["dropout"]))
    assert set(with_lists.values) == set(ours.values)
    for knob, values in ours.values.items():
        assert with_lists.values[knob] == pytest.approx(values, abs=1e-6), knob
