"""Fine-tuning on a folder of the user's images, end to end: tools/split_dataset.py, ImageFolderDataset,
a linear probe (`Arch.freeze_befor`) from imported weights, then all layers unfrozen (`Arch.lr_mult_list`),
export, and deploy/python/predict_cls.py printing the folder's class names. And the rules by which the
class names of a folder dataset become `Infer.PostProcess.class_id_map_file` in every mode."""
import ast
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
import yaml

from conftest import QUICK_START, REPO, run_main
from ppcls_ext import cli
from ppcls_ext.config import ConfigError, load_config
from ppcls_ext.cli import split_dataset as split_cli
from ppcls_ext.engine.class_map import use_folder_class_names
from test_image_folder import make_tree

CLASSES = {"red apple": 8, "green_leaf": 8, "Blue sky": 8}


def folder_config(tmp_path, root, *overrides):
    """The quick-start config reading `root` as ImageFolderDataset for Train and Eval (no label lists)."""
    return load_config(QUICK_START, [
        f"Global.output_dir={tmp_path}/out", "Arch.class_num=3",
        "DataLoader.Train.dataset.name=ImageFolderDataset", f"DataLoader.Train.dataset.image_root={root}",
        "DataLoader.Train.dataset.cls_label_path=null",
        "DataLoader.Eval.dataset.name=ImageFolderDataset", f"DataLoader.Eval.dataset.image_root={root}",
        "DataLoader.Eval.dataset.cls_label_path=null", *overrides])


def test_training_writes_the_class_map_and_other_modes_read_it_back(tmp_path):
    root = make_tree(tmp_path / "data", CLASSES)
    output = str(tmp_path / "out" / "MicroNet_M0")
    os.makedirs(output)
    config = folder_config(tmp_path, root)  # carries the digits' class_id_map_file, another class count
    recorded = use_folder_class_names(config, "train", output)
    assert recorded == os.path.join(output, "label_list.txt")
    assert open(recorded).read() == "0 Blue sky\n1 green_leaf\n2 red apple\n"
    assert config["Infer"]["PostProcess"]["class_id_map_file"] == recorded

    os.rename(root, tmp_path / "moved")  # exporting elsewhere: the recorded map still names the classes
    config = folder_config(tmp_path, root)
    assert use_folder_class_names(config, "export", output) == recorded

    os.remove(recorded)
    with pytest.raises(ConfigError, match=r"DataLoader.Train.dataset.image_root: folder not found: .*/data, and no class "
                                          r"map .*label_list.txt from training: the class names are unknown; give -o "
                                          r"Infer.PostProcess.class_id_map_file=PATH"):
        use_folder_class_names(folder_config(tmp_path, root), "export", output)


def test_a_class_map_naming_the_same_ids_is_kept_as_display_names(tmp_path):
    root = make_tree(tmp_path / "data", CLASSES)
    display = tmp_path / "names.txt"
    display.write_text("0 sky\n1 leaf\n2 apple\n")
    config = folder_config(tmp_path, root, f"Infer.PostProcess.class_id_map_file={display}")
    assert use_folder_class_names(config, "train", str(tmp_path)) == str(display)
    assert use_folder_class_names(load_config(QUICK_START), "train", str(tmp_path)) is None  # no folder dataset


def test_train_and_eval_folders_must_hold_the_same_classes(tmp_path):
    train = make_tree(tmp_path / "train", {"cat": 1, "dog": 1})
    val = make_tree(tmp_path / "val", {"cat": 1, "dgo": 1})
    config = folder_config(tmp_path, train, f"DataLoader.Eval.dataset.image_root={val}")
    with pytest.raises(ConfigError, match=r"DataLoader.Eval.dataset.image_root .*/val has classes \['cat', 'dgo'\], but "
                                          r"DataLoader.Train.dataset.image_root .*/train has \['cat', 'dog'\]"):
        use_folder_class_names(config, "train", str(tmp_path))


@pytest.mark.slow
def test_split_probe_unfreeze_export_and_predict_print_the_folders_class_names(tmp_path, capsys, digits_weights):
    root = make_tree(tmp_path / "data", CLASSES, size=16)
    status, _, _ = run_main(split_cli.main, ["--dataset_dir", str(root), "--val_value", "0.25"], capsys)
    assert status == 0
    common = ["-c", QUICK_START, "-o", "Arch.class_num=3", "-o", "Global.epochs=1", "-o", "DataLoader.Train.sampler.batch_size=6"]
    for mode, part in (("Train", "train"), ("Eval", "val")):
        common += ["-o", f"DataLoader.{mode}.dataset.name=ImageFolderDataset", "-o", f"DataLoader.{mode}.dataset.image_root={root}",
                   "-o", f"DataLoader.{mode}.dataset.cls_label_path={root}/{part}_list.txt"]
    probe, tuned = tmp_path / "probe", tmp_path / "tuned"

    # 1. linear probe from imported weights (another class count: the classifier is new, all else frozen)
    status, _, err = run_main(lambda a: cli.main("train", a), common + [
        "-o", f"Global.output_dir={probe}", "-o", f"Global.pretrained_model={digits_weights}", "-o", "Arch.freeze_befor=dropout"],
        capsys)
    assert status == 0, err
    imported, probed = paddle.load(str(digits_weights)), paddle.load(str(probe / "MicroNet_M0" / "latest.pdparams"))
    backbone = [key for key in imported if not key.startswith("classifier.")]
    changed = [key for key in backbone if not np.array_equal(probed[key].numpy(), imported[key].numpy())]
    assert backbone and not changed  # weights and batch-norm statistics
    assert probed["classifier.fc.weight"].shape == [640, 3] != imported["classifier.fc.weight"].shape

    # 2. everything unfrozen, the stem and stages at a tenth of the learning rate
    status, _, _ = run_main(lambda a: cli.main("train", a), common + [
        "-o", f"Global.output_dir={tuned}", "-o", f"Global.pretrained_model={probe}/MicroNet_M0/latest",
        "-o", f"Arch.lr_mult_list={[0.1] * 8}"], capsys)
    assert status == 0
    unfrozen = paddle.load(str(tuned / "MicroNet_M0" / "latest.pdparams"))
    assert not np.array_equal(unfrozen["stem.conv.conv_kx1.conv.weight"].numpy(), probed["stem.conv.conv_kx1.conv.weight"].numpy())

    # 3. export (class names from the class map training wrote, not the config's digits list), then serve
    status, _, _ = run_main(lambda a: cli.main("export", a), common + [
        "-o", f"Global.output_dir={tuned}", "-o", f"Global.pretrained_model={tuned}/MicroNet_M0/latest",
        "-o", f"Global.save_inference_dir={tmp_path}/inference"], capsys)
    assert status == 0
    exported = yaml.safe_load((tmp_path / "inference" / "inference.yml").read_text())
    assert exported["PostProcess"]["Topk"]["label_list"] == sorted(CLASSES)
    served = subprocess.run([sys.executable, os.path.join(REPO, "deploy", "python", "predict_cls.py"), "-c",
                             os.path.join(REPO, "deploy", "configs", "inference_cls.yaml"),
                             "-o", f"Global.inference_model_dir={tmp_path}/inference", "-o", f"Global.infer_imgs={root}/red apple",
                             "-o", "Global.enable_mkldnn=False"], capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-2000:]
    results = [ast.literal_eval(line) for line in served.stdout.splitlines() if line.startswith("{'class_ids'")]
    assert len(results) == CLASSES["red apple"]
    assert all(sorted(result["label_names"]) == sorted(CLASSES) for result in results)  # top-3 of 3: every name
