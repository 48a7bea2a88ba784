"""PaddleClas's own distillation configs (../shared/upstream/PaddleClas/ppcls/configs/ImageNet/Distillation),
unmodified except data paths, epochs, image size and `Arch.models.0.Teacher.pretrained=False`: each trains a
few iterations on the demo digits, evaluates, exports the student and is served by deploy/python/
predict_cls.py, whose scores are the student's. The DKD config also with an EfficientNetB0 teacher and a
MicroNet_M0 student. Teachers and students of PaddleClas's zoo come from the paddleclas wheel."""
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml

from conftest import REPO, run_main
from ppcls_ext import cli
from ppcls_ext.config import load_config
from ppcls_ext.data.transforms import build_transforms
from ppcls_ext.engine import Engine
from ppcls_ext.cli import predict_cls as predict_cli

CONFIGS = Path(REPO).parent / "shared" / "upstream" / "PaddleClas" / "ppcls" / "configs" / "ImageNet" / "Distillation"
CHAINS = {  # config, extra -o options, the student's class, its class_num
    "mv3_large_distill_small": ("mv3_large_x1_0_distill_mv3_small_x1_0.yaml", (), "MobileNetV3", 1000),
    "resnet34_distill_resnet18_dkd": ("resnet34_distill_resnet18_dkd.yaml", (), "ResNet", 1000),
    "pplcnet_x2_5_dml": ("PPLCNet_x2_5_dml.yaml", (), "PPLCNet", 1000),
    "dkd_efficientnetb0_to_micronet_m0": ("resnet34_distill_resnet18_dkd.yaml", (
        "Arch.models.0.Teacher.name=EfficientNetB0", "Arch.models.1.Student.name=MicroNet_M0"), "MicroNet", 1000),
}


def chain_options(digits, train_list, out):
    """Data paths, one epoch, 32 px images (the configs' crop 224 / resize_short 256 scaled down)."""
    return [f"Global.output_dir={out}/output", f"Global.save_inference_dir={out}/inference", "Global.device=cpu",
            "Global.epochs=1", "Global.print_batch_step=1", "Global.image_shape=[3, 32, 32]",
            "Arch.models.0.Teacher.pretrained=False",
            f"DataLoader.Train.dataset.image_root={digits}", f"DataLoader.Train.dataset.cls_label_path={train_list}",
            "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=32", "DataLoader.Train.sampler.batch_size=16",
            "DataLoader.Train.loader.num_workers=0",
            f"DataLoader.Eval.dataset.image_root={digits}", f"DataLoader.Eval.dataset.cls_label_path={digits}/val_small.txt",
            "DataLoader.Eval.dataset.transform_ops.1.ResizeImage.resize_short=36",
            "DataLoader.Eval.dataset.transform_ops.2.CropImage.size=32", "DataLoader.Eval.sampler.batch_size=64",
            "DataLoader.Eval.loader.num_workers=0", "Infer.transforms.1.ResizeImage.resize_short=36",
            "Infer.transforms.2.CropImage.size=32", f"Infer.infer_imgs={digits}/demo"]


@pytest.mark.slow
@pytest.mark.parametrize("chain", list(CHAINS))
def test_paddleclas_distillation_config_trains_evaluates_exports_and_serves(chain, digits, tmp_path, capsys):
    config_file, extra, student_class, class_num = CHAINS[chain]
    if not (CONFIGS / config_file).is_file():
        pytest.skip(f"PaddleClas's configs are not in {CONFIGS} (../shared/upstream/PaddleClas)")
    train_list = tmp_path / "train_32.txt"  # two batches of 16
    train_list.write_text("".join((digits / "train_small.txt").read_text().splitlines(keepends=True)[:32]))
    options = chain_options(digits, train_list, tmp_path) + list(extra)

    def tool(mode, *more):
        argv = ["-c", str(CONFIGS / config_file)] + [a for o in options + list(more) for a in ("-o", o)]
        for handler in logging.getLogger("ppcls").handlers:  # PaddleClas's logger keeps the stdout it first saw,
            if type(handler) is logging.StreamHandler:        # an earlier test's capture (closed by now)
                handler.stream = sys.stdout  # (setStream would flush the closed one first)
        return run_main(lambda a: cli.main(mode, a), argv, capsys)

    status, out, err = tool("train")
    assert status == 0, err[-2000:]
    assert "[Train][Epoch 1/1][Iter: 1/2]" in out and "[Eval][Epoch 1][Avg]" in out
    trained_eval = out.split("[Eval][Epoch 1][Avg]")[1].splitlines()[0]
    weights = f"Global.pretrained_model={tmp_path}/output/DistillationModel/latest"
    status, out, _ = tool("eval", weights)
    assert status == 0 and out.split("[Eval][Epoch 0][Avg]")[1].splitlines()[0] == trained_eval
    status, _, _ = tool("export", weights)
    description = yaml.safe_load(open(tmp_path / "inference" / "inference.yml"))
    assert status == 0 and description["Global"]["image_shape"] == [3, 32, 32]

    served = Engine(load_config(str(CONFIGS / config_file), options + [weights]), "infer")
    assert type(served.model).__name__ == student_class
    status, _, _ = run_main(predict_cli.main, ["-c", os.path.join(REPO, "deploy", "configs", "inference_cls.yaml"),
                                               "-o", f"Global.inference_model_dir={tmp_path}/inference",
                                               "-o", f"Global.infer_imgs={digits}/demo/eight.png",
                                               "--json", str(tmp_path / "served.json")], capsys)
    result = json.loads((tmp_path / "served.json").read_text())[0]
    image = build_transforms(served.infer_transforms(), "Infer.transforms")((digits / "demo" / "eight.png").read_bytes())
    served.model.eval()
    with paddle.no_grad():
        expected = paddle.nn.functional.softmax(served.model(paddle.to_tensor(image[None]))).numpy()[0]
    assert status == 0 and expected.shape == (class_num,)
    assert result["class_ids"][0] == int(np.argmax(expected))
    assert result["scores"][0] == pytest.approx(float(expected.max()), abs=1e-4)
