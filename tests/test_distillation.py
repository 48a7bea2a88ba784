"""Distillation runs with PaddleClas's DistillationModel config (configs/quick_start/distill_...yaml: an
EfficientNetB0 teacher, frozen, and a MicroNet_M0 student): the teacher never reaches the optimizer, the
EMA, a checkpoint or the export; resume continues exactly; evaluation, export and the deployed predictor
use the student; teachers come from any weights file we read; SSLD-style unlabelled images; AMP,
progressive learning and two processes."""
import json
import os

import numpy as np
import paddle
import pytest
import yaml

from conftest import REPO, quick_overrides, run_main
from ppcls_ext import cli, registry
from ppcls_ext.config import load_config
from ppcls_ext.data.transforms import build_transforms
from ppcls_ext.engine import Engine
from ppcls_ext.engine.checkpoint import load_checkpoint
from ppcls_ext.cli import predict_cls as predict_cli
from test_amp import AutoCastRecorder, gpu_amp  # noqa: F401  (a fixture)
from test_torch_weights import source_file

DISTILL = os.path.join(REPO, "configs", "quick_start", "distill_efficientnetb0_micronet_m0_digits.yaml")
RANDOM_TEACHER = "Arch.models.0.Teacher.pretrained=False"


def distill_overrides(digits, out, *overrides):
    return quick_overrides(digits, out, RANDOM_TEACHER, "Global.save_interval=1", "Global.seed=3", *overrides)


def distill_config(digits, out, *overrides):
    return load_config(DISTILL, distill_overrides(digits, out, *overrides))


def argv(digits, out, *overrides):
    return ["-c", DISTILL] + [a for option in distill_overrides(digits, out, *overrides) for a in ("-o", option)]


def arrays(state):
    return {k: np.array(v.numpy() if hasattr(v, "numpy") else v) for k, v in state.items()}


@pytest.fixture(scope="module")
def few(digits, tmp_path_factory):
    """64 training images: two batches of 32 per epoch."""
    path = tmp_path_factory.mktemp("few") / "train_64.txt"
    path.write_text("".join((digits / "train_small.txt").read_text().splitlines(keepends=True)[:64]))
    return f"DataLoader.Train.dataset.cls_label_path={path}"


@pytest.fixture(scope="module")
def run(digits, few, tmp_path_factory):
    """Two epochs with EMA: (output folder, engine, the teacher's weights before training)."""
    root = tmp_path_factory.mktemp("distill")
    engine = Engine(distill_config(digits, root, few, "Global.epochs=2", "EMA.decay=0.9"), "train")
    teacher = engine.front.frozen["Teacher"]
    before = arrays(teacher.state_dict())
    engine.train()
    return root, engine, before


def test_the_frozen_teacher_costs_no_gradients_and_stays_out_of_optimizer_ema_and_checkpoints(run):
    root, engine, before = run
    teacher, student = engine.front.frozen["Teacher"], engine.front.served
    assert type(teacher).__name__ == "EfficientNet" and type(student).__name__ == "MicroNet"
    assert not teacher.training and all(p.stop_gradient and p.grad is None for p in teacher.parameters())
    after = arrays(teacher.state_dict())
    assert all(np.array_equal(after[k], before[k]) for k in before)  # BN statistics too: eval mode throughout
    out = root / "output" / "DistillationModel"
    student_keys = {f"Student.{k}" for k in student.state_dict()}
    for prefix in ("latest", "epoch_1", "best_model"):
        assert set(paddle.load(str(out / f"{prefix}.pdparams"))) == student_keys, prefix
    saved = load_checkpoint(str(out / "latest"), with_ema=True)
    assert set(saved["ema"]) == student_keys
    velocities = [k for k in saved["optimizer"] if "_velocity_" in k]  # Momentum's state, per parameter
    assert velocities and {k.split("_velocity_")[0] for k in velocities} <= student_keys
    teacher_names = tuple(f"{p.name}_" for p in teacher.parameters())
    assert not [k for k in saved["optimizer"] if k.startswith(teacher_names)]
    assert saved["states"]["distillation"] == {"models": {"Teacher": "EfficientNetB0", "Student": "MicroNet_M0"},
                                               "frozen": ["Teacher"], "saved": ["Student"], "infer_model_name": "Student"}
    assert [sorted(r) for r in engine.history][-1] == ["epoch", "eval", "train", "train_seconds"]
    assert set(engine.history[-1]["train"]) == {"top1", "top5", "CELoss_Student", "loss_kldiv_Student_Teacher", "loss"}


def test_resume_continues_exactly(run, digits, few):
    root, engine, _ = run
    out = root / "output" / "DistillationModel"
    resumed = Engine(distill_config(digits, root / "resumed", few, "Global.epochs=2", "EMA.decay=0.9",
                                    f"Global.checkpoints={out}/epoch_1"), "train")
    assert resumed.start_epoch == 2 and resumed.global_step == 2
    resumed.train()
    final, continued = arrays(engine.model.state_dict()), arrays(resumed.model.state_dict())
    for key in final:
        np.testing.assert_allclose(continued[key], final[key], atol=1e-5, err_msg=key)
    plain = Engine(load_config(os.path.join(REPO, "configs", "quick_start", "micronet_m0_digits.yaml"),
                               quick_overrides(digits, root / "plain", few)), "train")
    with pytest.raises(Exception, match=r"does not fit MicroNet: missing \d+: stem"):
        plain.checkpoints.resume(str(out / "epoch_1"))


def test_eval_export_and_the_deployed_predictor_use_the_student(run, digits, tmp_path, capsys):
    root, engine, _ = run
    weights = root / "output" / "DistillationModel" / "latest"  # with EMA: the EMA's weights (PaddleClas's layout)
    ema_student = engine.front.evaluated(engine.ema.module)
    options = (f"Global.pretrained_model={weights}", f"Global.save_inference_dir={tmp_path}/inference",
               f"Infer.infer_imgs={digits}/demo")
    status, out, _ = run_main(lambda a: cli.main("eval", a), argv(digits, root, *options), capsys)
    trained = engine.evaluate(ema_student, 2)
    assert status == 0 and f"top1: {trained['top1']:.5f}" in out
    status, _, _ = run_main(lambda a: cli.main("export", a), argv(digits, root, *options), capsys)
    description = yaml.safe_load(open(tmp_path / "inference" / "inference.yml"))
    assert status == 0 and description["Global"]["model_name"] == "MicroNet_M0"
    student_bytes = 4 * sum(int(np.prod(t.shape)) for t in engine.front.served.state_dict().values())
    teacher_bytes = 4 * sum(int(np.prod(t.shape)) for t in engine.front.frozen["Teacher"].state_dict().values())
    exported_bytes = os.path.getsize(tmp_path / "inference" / "inference.pdiparams")  # the student's deploy form
    assert 0.9 * student_bytes < exported_bytes < 1.1 * student_bytes < teacher_bytes / 4
    status, out, _ = run_main(predict_cli.main, ["-c", os.path.join(REPO, "deploy", "configs", "inference_cls.yaml"),
                                                 "-o", f"Global.inference_model_dir={tmp_path}/inference",
                                                 "-o", f"Global.infer_imgs={digits}/demo", "--json",
                                                 str(tmp_path / "results.json")], capsys)
    assert status == 0
    results = json.loads((tmp_path / "results.json").read_text())
    image = results[0]["file_name"]
    batch = build_transforms(engine.infer_transforms(), "Infer.transforms")(open(image, "rb").read())[None]
    with paddle.no_grad():
        expected = paddle.nn.functional.softmax(ema_student(paddle.to_tensor(batch))).numpy()[0]
    assert results[0]["class_ids"][0] == int(expected.argmax())
    assert results[0]["scores"][0] == pytest.approx(float(expected.max()), abs=1e-4)


def test_teachers_come_from_any_weights_file_we_read(digits, few, tmp_path, engine_log):
    """A timm efficientnet_b0 .safetensors (symmetric padding, BN epsilon 1e-5, 1000 classes) as the teacher:
    built with the file's numerics, its tensors the file's (the classifier of another class count left
    as initialised, as fine-tuning does); then the same teacher from a .pdparams of ours."""
    source = source_file("timm_efficientnet_b0", str(tmp_path))
    engine = Engine(distill_config(digits, tmp_path, few, f"Arch.models.0.Teacher.pretrained={source}"), "train")
    teacher = engine.front.frozen["Teacher"]
    reference = registry.create_model("EfficientNetB0", class_num=10, pretrained=source)
    assert (teacher.padding, teacher.bn_epsilon) == (reference.padding, reference.bn_epsilon) == ("symmetric", 1e-5)
    ours, theirs = arrays(teacher.state_dict()), arrays(reference.state_dict())
    shared = [k for k in theirs if not k.startswith("classifier.")]
    assert shared and all(np.array_equal(ours[k], theirs[k]) for k in shared)
    paddle.save(reference.state_dict(), str(tmp_path / "teacher.pdparams"))
    again = Engine(distill_config(digits, tmp_path / "pd", few, f"Arch.models.0.Teacher.pretrained={tmp_path}/teacher.pdparams",
                                  "Arch.models.0.Teacher.padding=symmetric", "Arch.models.0.Teacher.bn_epsilon=1e-5"),
                   "train")
    assert all(np.array_equal(v, theirs[k]) for k, v in arrays(again.front.frozen["Teacher"].state_dict()).items())


def test_ssld_unlabelled_images_with_teacher_only_losses(digits, tmp_path, capsys):
    """PaddleClas's SSLD lists: unlabelled images as `path -1` or the path alone, with losses that read no
    label; a loss that reads labels refuses them in one line."""
    lines = (digits / "train_small.txt").read_text().splitlines()
    unlabelled = [f"{line.split()[0]} -1" for line in lines[32:48]] + [line.split()[0] for line in lines[48:64]]
    (tmp_path / "ssld.txt").write_text("\n".join(lines[:32] + unlabelled) + "\n")
    options = (f"DataLoader.Train.dataset.cls_label_path={tmp_path}/ssld.txt", "Global.epochs=1",
               "Loss.Train=[{DistillationDMLLoss: {weight: 1.0, model_name_pairs: [[Student, Teacher]]}}]")
    status, out, _ = run_main(lambda a: cli.main("train", a), argv(digits, tmp_path, *options), capsys)
    assert status == 0 and "32 of 64 training images are unlabelled (SSLD)" in out
    train_lines = [line for line in out.splitlines() if "[Train][Epoch 1/1]" in line]
    assert train_lines and all("top1" not in line and "DMLLoss_Student_Teacher_0" in line for line in train_lines)
    assert "[Eval][Epoch 1][Avg]CELoss" in out and "top1: " in out.split("[Eval][Epoch 1][Avg]")[1]
    status, _, err = run_main(lambda a: cli.main("train", a), argv(digits, tmp_path, *options[:2]), capsys)
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path}/ssld.txt, line 33: expected '<image path> <label>', the image has no label")


def test_config_errors_are_one_line(digits, tmp_path, capsys):
    for option, message in (
            ("Arch.models.1.Student.name=MicroNet_M9", "error: Arch.models.1.Student.name: unknown model 'MicroNet_M9'"),
            ("Arch.infer_model_name=Pupil", "error: Arch.infer_model_name: 'Pupil'; name the model to evaluate and export, "
                                           "one of Teacher, Student"),
            ("Arch.freeze_params_list=[True]", "error: Arch.freeze_params_list: expected a list of 2 entries"),
            ("Metric.Train=[{DistillationTopkAcc: {model_key: Pupil}}]",
             "error: Metric.Train[0]: DistillationTopkAcc.model_key 'Pupil' is not a model")):
        status, _, err = run_main(lambda a: cli.main("train", a), argv(digits, tmp_path, option), capsys)
        assert status == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_amp_o2_decorates_the_student_and_evaluates_it_under_auto_cast(gpu_amp, digits, few, tmp_path, monkeypatch):  # noqa: F811
    engine = Engine(distill_config(digits, tmp_path, few, "AMP.level=O2"), "train")
    student, teacher = engine.front.served, engine.front.frozen["Teacher"]
    assert student.state_dict(use_hook=False)["stem.conv.conv_kx1.conv.weight"].dtype == paddle.float16
    assert all(p.dtype == paddle.float32 for p in teacher.parameters())
    recorder = AutoCastRecorder(monkeypatch, student)
    assert recorder.contexts_at_forward(lambda: engine.evaluate(engine.front.evaluated(engine.net), 1)) == [
        {"enable": True, "level": "O2"}]
    assert recorder.contexts_at_forward(engine.train) == [{"enable": True, "level": "O2"}]


def test_progressive_learning_ramps_the_students_dropout_and_image_size(digits, few, tmp_path):
    engine = Engine(distill_config(digits, tmp_path, few, "Global.epochs=2", "Global.eval_during_train=False",
                                   "Global.train_mode=progressive", "Global.progressive.stages=2",
                                   "Global.progressive.image_size=[24, 32]", "Global.progressive.dropout=[0.0, 0.3]"),
                    "train")
    teacher_dropout = engine.front.frozen["Teacher"].dropout.p
    sizes = []
    for epoch in (1, 2):
        record = engine.run_epoch(epoch)
        sizes.append((record["progressive"].image_size, engine.front.served.dropout.p))
    assert sizes == [(24, 0.0), (32, pytest.approx(0.3))]
    assert engine.front.frozen["Teacher"].dropout.p == teacher_dropout


@pytest.mark.slow
def test_two_processes_distil_like_one_with_the_same_global_batch(digits, tmp_path):
    """`paddle.distributed.launch --nproc_per_node 2`: the student trained by two processes (batches of 32
    each) equals one process accumulating two batches of 32; both ranks learn from the same teacher, here a
    random one (built differently on each rank: seed + rank) that rank 0 broadcasts."""
    from test_distributed import DETERMINISTIC, run as run_tool
    lines = (digits / "train_small.txt").read_text().splitlines()[:128]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    options = [o for o in DETERMINISTIC if not o.startswith("Arch.")] + [
        RANDOM_TEACHER, "Arch.models.0.Teacher.name=EfficientNetLite0",  # random, yet far from uniform outputs
        "Arch.models.1.Student.dropout=0.0", f"DataLoader.Train.dataset.image_root={digits}",
        "Loss.Train=[{DistillationCELoss: {weight: 1.0, model_name_pairs: [[Student, Teacher]]}}]",  # the teacher alone
        f"DataLoader.Train.dataset.cls_label_path={tmp_path}/train.txt"]
    run_tool("train.py", options + [f"Global.output_dir={tmp_path}/one", "Global.update_freq=2"], config=DISTILL)
    log = run_tool("train.py", options + [f"Global.output_dir={tmp_path}/two"], processes=2, log_dir=tmp_path / "log",
                   config=DISTILL)
    assert "[Train][Epoch 1/1][Iter: 0/2]" in log and "CELoss_Student_Teacher" in log
    one = paddle.load(f"{tmp_path}/one/DistillationModel/latest.pdparams")
    two = paddle.load(f"{tmp_path}/two/DistillationModel/latest.pdparams")
    assert set(one) == set(two) and all(k.startswith("Student.") for k in one)
    for key in one:
        if not key.endswith(("_mean", "_variance")):
            np.testing.assert_allclose(np.asarray(two[key]), np.asarray(one[key]), atol=2e-5, rtol=1e-4, err_msg=key)
