"""PaddleClas's own tools - tools/train.py, eval.py, infer.py, export_model.py and deploy/python/predict_cls.py
of the upstream snapshot in ../shared/upstream/PaddleClas - run unmodified on our models and configs. No test
code imports ppcls_ext into them: it arrives through the start-up hook (ppcls_ext_hook.pth), as for a user.

The snapshot is read-only: its tools run from there with bytecode writing off, and every output goes to a
temporary folder. Several tool runs share one interpreter (tests/upstream_runner.py) to pay Paddle's import once.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml

import ppcls_ext
import ppcls_ext_hook
from conftest import REPO
from ppcls_ext.inference import DeployedClassifier, InferenceOptions
from ppcls_ext.weights import randomize_

UPSTREAM = Path(REPO).parent / "shared" / "upstream" / "PaddleClas"
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
RUNNER = os.path.join(REPO, "tests", "upstream_runner.py")
BUILD_ARCH = os.path.join(REPO, "tests", "upstream_build_arch.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (UPSTREAM / "tools" / "train.py").is_file(),
                       reason=f"PaddleClas's own tools are not in {UPSTREAM} (../shared/upstream/PaddleClas)"),
]

#: models whose full-size training does not fit a test run (measured with PaddleClas's tools/train.py, 32 px,
#: batch 2, one epoch: EfficientNetB8 4.6 GB / 37 s, EfficientNetV2_XL 10.4 GB / 86 s; EfficientNetL2, 476M
#: parameters, more memory than the 24 GB machine): their configs train with the family's smallest model
#: instead, and their own Arch section is built (unallocated) by PaddleClas's build_model
SUBSTITUTES = {"EfficientNetB8": "EfficientNetB0", "EfficientNetL2": "EfficientNetB0",
               "EfficientNetV2_XL": "EfficientNetV2_B0"}
#: transform sizes for a quick CPU run (any config: ops are found by name, not position)
SMALL = {"RandCropImage": {"size": 32}, "ResizeImage": {"resize_short": 36}, "CropImage": {"size": 32},
         "CropImageAtRatio": {"size": 32}}


def _ops_overrides(prefix, ops):
    overrides = []
    for index, op in enumerate(ops or []):
        (name, args), = op.items()
        for key, value in SMALL.get(name, {}).items():
            if args and key in args:
                overrides.append(f"{prefix}.{index}.{name}.{key}={value}")
        if name == "RandCropImage" and args and args.get("progress_size"):
            sizes = [24 + 8 * i for i in range(len(args["progress_size"]))]
            overrides.append(f"{prefix}.{index}.{name}.progress_size={sizes}".replace(" ", ""))
    return overrides


def tiny_overrides(config_path, output, data, epochs=1):
    """`-o` overrides for one quick epoch: data paths, epochs, batch size, small images, no evaluation."""
    config = yaml.safe_load(open(config_path, encoding="utf-8"))
    overrides = ["Global.device=cpu", f"Global.epochs={epochs}", f"Global.output_dir={output}", "Global.save_interval=0",
                 "Global.eval_during_train=False", "Global.print_batch_step=1", "Arch.class_num=10",
                 f"Infer.PostProcess.class_id_map_file={data}/label_list.txt"]
    for split in ("Train", "Eval"):
        overrides += [f"DataLoader.{split}.dataset.image_root={data}",
                      f"DataLoader.{split}.dataset.cls_label_path={data}/tiny_{split.lower()}.txt",
                      f"DataLoader.{split}.sampler.batch_size=2", f"DataLoader.{split}.loader.num_workers=0"]
        overrides += _ops_overrides(f"DataLoader.{split}.dataset.transform_ops",
                                    config["DataLoader"][split]["dataset"]["transform_ops"])
    return overrides + _ops_overrides("Infer.transforms", config["Infer"]["transforms"])


def command_line(config_path, overrides):
    return ["-c", config_path] + [item for override in overrides for item in ("-o", override)]


@pytest.fixture(scope="module")
def tiny_data(digits):
    """Four training and two evaluation images of the demo digits, with their label map."""
    for split, source, count in (("train", "train_list.txt", 4), ("eval", "val_list.txt", 2)):
        lines = (digits / source).read_text().splitlines()
        (digits / f"tiny_{split}.txt").write_text("\n".join(lines[:count]) + "\n")
    return digits


@pytest.fixture(scope="module")
def startup_site(tmp_path_factory):
    """None when ppcls_ext_hook.pth is installed in this environment (pip install, or the editable set-up's
    `python -m ppcls_ext_hook install`); else a folder holding it, processed as site-packages would be."""
    probe = subprocess.run([sys.executable, "-c", "import sys; print('ppcls_ext_hook' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    if probe.stdout.strip() == "True":
        return None
    folder = tmp_path_factory.mktemp("site")
    (folder / ppcls_ext_hook.PTH_NAME).write_text(ppcls_ext_hook.PTH_LINE)
    return str(folder)


def upstream_env():
    """The snapshot is read-only: no bytecode next to its sources. PYTHONPATH finds a checkout that is not
    installed (and does no harm where it is)."""
    return dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
                PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))


def run_upstream(runs, folder, site_dir, processes=1):
    """Run [(tool path, argv)] in `processes` interpreters side by side (runs dealt out in turn); returns
    (results in the order of `runs`, output)."""
    shares, procs = [runs[i::processes] for i in range(processes)], []
    for index, share in enumerate(shares):
        (folder / f"runs{index}.json").write_text(json.dumps([{"tool": tool, "argv": argv, "cwd": str(folder)} for tool, argv in share]))
        command = [sys.executable, RUNNER, str(folder / f"runs{index}.json"), str(folder / f"results{index}.json")]
        procs.append(subprocess.Popen(command + ([site_dir] if site_dir else []), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=upstream_env(), cwd=str(folder)))
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-6000:]
    per_share = [json.loads((folder / f"results{index}.json").read_text()) for index in range(processes)]
    return [per_share[i % processes][i // processes] for i in range(len(runs))], "".join(outputs)


def tool(name):
    return str(UPSTREAM / "tools" / f"{name}.py")


def test_every_shipped_config_trains_one_tiny_epoch_with_paddleclas_train_py(tiny_data, startup_site, tmp_path):
    """Every config under configs/ (globbed: later ones are included) through PaddleClas's tools/train.py, changed
    only by -o (data, epochs, batch size, image sizes, no evaluation during training), and our model is what
    trained. Three configs train a smaller model of the family (SUBSTITUTES); their own model is built lazily."""
    runs, expected = [], []
    for path in CONFIGS:
        name = yaml.safe_load(open(path, encoding="utf-8"))["Arch"]["name"]
        overrides = tiny_overrides(path, tmp_path / Path(path).stem, tiny_data)
        if name == "DistillationModel":  # PaddleClas's class, holding our models; the teacher's weights file is absent
            overrides.append("Arch.models.0.Teacher.pretrained=False")
        if name in SUBSTITUTES:
            runs.append((BUILD_ARCH, [str(UPSTREAM)] + command_line(path, overrides)))
            expected.append((path, None))
            overrides.append(f"Arch.name={SUBSTITUTES[name]}")
        runs.append((tool("train"), command_line(path, overrides)))
        expected.append((path, SUBSTITUTES.get(name, name)))
    results, output = run_upstream(runs, tmp_path, startup_site, processes=2)  # 2 cores: ~1.6x
    failed = [(os.path.relpath(path, REPO), result["error"]) for (path, _), result in zip(expected, results) if not result["ok"]]
    assert not failed, failed
    assert len(results) == len(runs) and len(CONFIGS) >= 23
    for (path, name), result in zip(expected, results):
        if name == "DistillationModel":
            assert result["model"] == "ppcls.arch.DistillationModel", (path, result)
            keys = paddle.load(str(tmp_path / Path(path).stem / "latest.pdparams"))
            assert {k.split(".")[0] for k in keys} == {"Teacher", "Student"} and "Student.stem.conv.conv_kx1.conv.weight" in keys
        elif name is not None:
            assert result["model"].startswith("ppcls_ext.models."), (path, result)
            assert (tmp_path / Path(path).stem / "latest.pdparams").is_file(), path
    assert sum(": ppcls_ext.models." in line for line in output.splitlines()) == len(SUBSTITUTES)
    shutil.rmtree(tmp_path)  # ~5 GB of checkpoints


def test_paddleclas_progressive_trainer_runs_efficientnetv2_s_across_a_stage_boundary(tiny_data, startup_site, tmp_path):
    """efficientnetv2_s.yaml in PaddleClas's `train_mode: progressive` over 2 epochs: stages 2 and 4 of its
    fixed 4 (one epoch each: a stage of two epochs hits PaddleClas's UnboundLocalError). Image size and
    RandAugment magnitude come from our progress_size / progress_magnitude lists, and its dropout ramp
    reaches our classifier dropout (Arch.dropout's last rate, 0.3, after the last stage)."""
    path = os.path.join(REPO, "configs", "ImageNet", "EfficientNetV2", "efficientnetv2_s.yaml")
    (result,), output = run_upstream([(tool("train"), command_line(path, tiny_overrides(path, tmp_path / "out", tiny_data, epochs=2)))],
                                     tmp_path, startup_site)
    assert result["ok"], result["error"]
    assert result["model"] == "ppcls_ext.models.efficientnet_v2.EfficientNetV2"
    assert result["head_dropout"] == [0.3]
    assert "Training stage: [2/4](random_aug_magnitude=8.3333333333, train_image_size=32" in output
    assert "Training stage: [4/4](random_aug_magnitude=15.0, train_image_size=48" in output
    assert "[Train][Epoch 2/2]" in output and (tmp_path / "out" / "latest.pdparams").is_file()


@pytest.mark.parametrize("config", ["EfficientNetV2/efficientnetv2_b0.yaml", "EfficientNetV2/efficientnetv2_b3.yaml"])
def test_paddleclas_four_tools_on_models_paddleclas_lacks(config, tiny_data, startup_site, tmp_path):
    """tools/train.py, eval.py, infer.py and export_model.py on EfficientNetV2_B0 and EfficientNetV2_B3, names
    PaddleClas does not have."""
    path = os.path.join(REPO, "configs", "ImageNet", config)
    out = tmp_path / "out"
    overrides = tiny_overrides(path, out, tiny_data)
    trained = [f"Global.pretrained_model={out}/latest"]
    runs = [(tool("train"), command_line(path, overrides)),
            (tool("eval"), command_line(path, overrides + trained)),
            (tool("infer"), command_line(path, overrides + trained + [f"Infer.infer_imgs={tiny_data}/demo"])),
            (tool("export_model"), command_line(path, overrides + trained + [f"Global.save_inference_dir={tmp_path}/export"]))]
    results, output = run_upstream(runs, tmp_path, startup_site)
    assert [r["ok"] for r in results] == [True] * 4, [r["error"] for r in results]
    assert {r["model"] for r in results[:3]} == {"ppcls_ext.models.efficientnet_v2.EfficientNetV2"}
    assert "[Eval][Epoch 0][Avg]" in output and "top1" in output
    assert output.count("'class_ids':") == 10  # one result per demo digit
    assert sorted(os.listdir(tmp_path / "export")) == ["inference.json", "inference.pdiparams"]


def varied_images(folder, count=6):
    """Colour images of different sizes and patterns (the grey demo digits all look alike to a random network)."""
    import cv2

    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(count):
        height, width = 200 + 20 * i, 260 - 10 * i
        image = np.zeros((height, width, 3), np.float32) + rng.uniform(0, 255, 3)
        image[..., i % 3] += 100 * np.sin(np.arange(width) / (5 + 3 * i))
        cv2.imwrite(str(folder / f"img{i}.png"), np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8))
    return folder


def test_paddleclas_predict_cls_serves_our_legacy_export_with_our_top_k(tiny_data, tmp_path):
    """Our tools/export_model.py with Global.export_format=legacy; PaddleClas's deploy/python/predict_cls.py, run
    as is with PaddleClas's own inference config, gives our predictor's top-5 on the same images. It runs with
    FLAGS_enable_pir_api=0, without which Paddle 3's Config(model_dir, prefix) opens only inference.json. Our
    predictor reads the legacy export and the default (PIR) one alike."""
    import paddleclas

    path = os.path.join(REPO, "configs", "ImageNet", "MicroNet", "micronet_m0.yaml")  # PaddleClas's preprocessing
    model = ppcls_ext.create_model("MicroNet_M0", class_num=10)
    randomize_(model.state_dict(), seed=3)  # seed 3: the top-5 differ from image to image
    paddle.save(model.state_dict(), str(tmp_path / "weights.pdparams"))
    exports = {}
    for export_format in ("legacy", "pir"):
        exports[export_format] = tmp_path / export_format
        proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "export_model.py"), "-c", path,
                               "-o", "Arch.class_num=10", "-o", f"Global.pretrained_model={tmp_path}/weights.pdparams",
                               "-o", f"Global.save_inference_dir={exports[export_format]}", "-o", f"Global.export_format={export_format}",
                               "-o", f"Global.output_dir={tmp_path}/out",
                               "-o", f"Infer.PostProcess.class_id_map_file={tiny_data}/label_list.txt"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"inference.pdmodel", "inference.pdiparams"} <= set(os.listdir(exports["legacy"]))
    assert "inference.json" in os.listdir(exports["pir"])

    their_config = os.path.join(os.path.dirname(paddleclas.__file__), "deploy", "configs", "inference_cls.yaml")
    images = varied_images(tmp_path / "images")
    proc = subprocess.run([sys.executable, str(UPSTREAM / "deploy" / "python" / "predict_cls.py"), "-c", their_config,
                           "-o", f"Global.inference_model_dir={exports['legacy']}", "-o", f"Global.infer_imgs={images}",
                           "-o", "Global.use_gpu=False", "-o", "Global.cpu_num_threads=2",
                           "-o", f"PostProcess.Topk.class_id_map_file={tiny_data}/label_list.txt",
                           "-o", f"PostProcess.SavePreLabel.save_dir={tmp_path}/pre_label"],
                          capture_output=True, text=True, timeout=600, env=dict(upstream_env(), FLAGS_enable_pir_api="0"),
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    theirs = {}
    for line in proc.stdout.splitlines():
        if "\tclass id(s): [" in line:
            file_name = line.split(":\t")[0]
            theirs[file_name] = ([int(v) for v in line.split("class id(s): [")[1].split("]")[0].split(",")],
                                 [float(v) for v in line.split("score(s): [")[1].split("]")[0].split(",")])
    assert len(theirs) == 6 and len({tuple(ids) for ids, _ in theirs.values()}) > 1, proc.stdout[-2000:]
    files = sorted(str(p) for p in images.iterdir())
    for export_format, directory in exports.items():
        ours = list(DeployedClassifier(str(directory), InferenceOptions(cpu_threads=2)).classify(files))
        for result in ours:
            ids, scores = theirs[os.path.basename(result["file_name"])]
            assert result["class_ids"] == ids, (export_format, result["file_name"])
            assert result["scores"] == pytest.approx(scores, abs=0.006)  # PaddleClas prints two decimals


RECMODEL = """
import json, sys
import numpy as np, paddle
sys.path.append({upstream!r})
from ppcls.arch import build_model

paddle.seed(0)
x = paddle.randn([2, 3, 64, 64])
stopped = build_model({{"Arch": {{"name": "RecModel", "Backbone": {{"name": "EfficientNetV2_B0", "class_num": 10}},
                                "BackboneStopLayer": {{"name": "stages[4]"}}}}}})
pooled = build_model({{"Arch": {{"name": "RecModel", "Backbone": {{"name": "MicroNet_M1", "include_top": False}},
                               "Neck": {{"name": "FC", "embedding_size": 960, "class_num": 32}},
                               "Head": {{"name": "FC", "embedding_size": 32, "class_num": 10}}}}}})
for model in (stopped, pooled):
    model.eval()
out_stopped, out_pooled = stopped(x), pooled(x)
np.save({folder!r} + "/x.npy", x.numpy())
np.save({folder!r} + "/stopped.npy", out_stopped["features"].numpy())
paddle.save(stopped.backbone.state_dict(), {folder!r} + "/stopped.pdparams")
paddle.save(pooled.backbone.state_dict(), {folder!r} + "/pooled.pdparams")
np.save({folder!r} + "/pooled.npy", out_pooled["backbone"].numpy())
print("RESULT" + json.dumps({{"backbones": [type(m.backbone).__module__ for m in (stopped, pooled)],
                             "shapes": [list(out_stopped["features"].shape), list(out_pooled["features"].shape),
                                        list(out_pooled["logits"].shape)],
                             "parameters": len(stopped.backbone.parameters())}}))
"""


def test_paddleclas_recmodel_takes_our_backbone_stopped_or_pooled(startup_site, tmp_path):
    """PaddleClas's RecModel (its recognition pipeline): BackboneStopLayer stops our EfficientNetV2_B0 after
    stage 4 (its output is exactly that stage's, the later stages are gone), and MicroNet with include_top False
    gives pooled features for an FC neck and head."""
    code = ("import site; site.addsitedir(%r)\n" % startup_site if startup_site else "") + textwrap.dedent(
        RECMODEL.format(upstream=str(UPSTREAM), folder=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=upstream_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert all(module.startswith("ppcls_ext.models.") for module in result["backbones"])
    x = paddle.to_tensor(np.load(tmp_path / "x.npy"))

    reference = ppcls_ext.create_model("EfficientNetV2_B0", class_num=10)
    stopped = paddle.load(str(tmp_path / "stopped.pdparams"))
    assert len(stopped) < len(reference.state_dict()) and result["parameters"] < len(reference.parameters())
    reference.set_state_dict({**reference.state_dict(), **stopped})
    reference.eval()
    stage_4 = next(item for item in reference.feature_info if item.stage == 4)
    np.testing.assert_allclose(np.load(tmp_path / "stopped.npy"), reference.forward_stages(x, [stage_4.stride])[0].numpy(),
                               rtol=1e-5, atol=1e-5)

    micronet = ppcls_ext.create_model("MicroNet_M1", class_num=0)
    micronet.set_state_dict(paddle.load(str(tmp_path / "pooled.pdparams")))
    micronet.eval()
    np.testing.assert_allclose(np.load(tmp_path / "pooled.npy"), micronet(x).numpy(), rtol=1e-5, atol=1e-5)
    assert result["shapes"] == [[2, stage_4.channels, 4, 4], [2, 32], [2, 10]]
