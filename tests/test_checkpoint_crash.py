"""A checkpoint is one unit: crashed at any file operation of a save, a run resumes as if uninterrupted;
files of different saves are refused in one line; unfinished saves are cleaned at the next start; and
PaddleClas's own loader reads our files in their PaddleClas roles."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import QUICK_START, REPO, quick_config
from ppcls_ext.config import ConfigError
from ppcls_ext.engine import Engine
from ppcls_ext.engine.checkpoint import MANIFEST, load_checkpoint
from ppcls_ext.registry import create_model

MODEL = "MicroNet_M0"


def arrays(state):
    return {k: v.numpy() for k, v in state.items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow
def test_a_crash_at_any_file_operation_of_a_save_resumes_as_the_uninterrupted_run(digits, tmp_path):
    """tests/crash_matrix.py: os._exit before, after (and halfway through a paddle.save) each file operation
    of the last save of `latest`, then a resume with the same command, against the uninterrupted run."""
    out = tmp_path / "matrix.json"
    run = subprocess.run([sys.executable, os.path.join(REPO, "tests", "crash_matrix.py"), "--work", str(tmp_path / "work"),
                          "--data", str(digits), "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    operations = {row["operation"].split()[0] for row in rows}
    assert {"paddle.save", "os.rename", "os.replace"} <= operations, operations
    assert len(rows) >= 20
    assert all(row["crash_status"] == 137 for row in rows), [r for r in rows if r["crash_status"] != 137]
    # the crash points really fall between the renames of one save: some leave epoch-1 and epoch-2 files in place
    assert any(row["mixed_in_place"] for row in rows)
    not_equal = [(r["index"], r["operation"], r["phase"], r["outcome"], r["message"]) for r in rows if r["outcome"] != "equal"]
    assert not not_equal, not_equal
    assert all(row["leftovers_after_resume"] == [] for row in rows), [r["leftovers_after_resume"] for r in rows]


@pytest.fixture(scope="module")
def two_epochs(digits, tmp_path_factory):
    """A 2-epoch run with EMA that keeps epoch_1, epoch_2 and latest; its output folder."""
    root = tmp_path_factory.mktemp("two_epochs")
    engine = Engine(quick_config(digits, root, "Global.epochs=2", "Global.save_interval=1", "Global.eval_during_train=False",
                                 "EMA.decay=0.9"), "train")
    engine.train()
    return root / "output" / MODEL, engine


def test_paddleclas_init_model_resumes_our_checkpoint_with_model_and_ema_in_their_roles(two_epochs, tmp_path):
    """PaddleClas's loader (init_model of the installed paddleclas, identical to upstream's) puts `.pdema`
    into the network and `.pdparams` into its EMA: our files must hold them that way round."""
    from paddleclas.ppcls.utils.save_load import init_model

    out, engine = two_epochs
    net, ema_net = create_model(MODEL, class_num=10), create_model(MODEL, class_num=10)
    optimizer = paddle.optimizer.Momentum(0.1, parameters=net.parameters())
    states = init_model({"checkpoints": str(out / "latest")}, net, optimizer=[optimizer], loss=paddle.nn.Layer(), ema=ema_net)
    assert states["epoch"] == 2
    assert_same(arrays(net.state_dict()), arrays(engine.model.state_dict()))
    assert_same(arrays(ema_net.state_dict()), arrays(engine.ema.state_dict()))
    assert not np.array_equal(*(m.state_dict()["stem.conv.conv_kx1.conv.weight"].numpy() for m in (net, ema_net)))


def cli_train(digits, output, *overrides):
    args = [sys.executable, os.path.join(REPO, "tools", "train.py"), "-c", QUICK_START,
            "-o", f"Global.output_dir={output}", "-o", f"DataLoader.Train.dataset.image_root={digits}",
            "-o", f"DataLoader.Train.dataset.cls_label_path={digits}/train_small.txt", "-o", "Global.eval_during_train=False",
            "-o", "EMA.decay=0.9"]
    for override in overrides:
        args += ["-o", override]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_files_of_different_saves_are_refused_in_one_line(two_epochs, digits, tmp_path):
    out, _ = two_epochs
    mixed = tmp_path / MODEL
    shutil.copytree(out, mixed)
    shutil.copy(mixed / "epoch_1.pdopt", mixed / "latest.pdopt")  # epoch 1's optimizer beside epoch 2's states
    run = cli_train(digits, tmp_path, "Global.epochs=3", f"Global.checkpoints={mixed}/latest")
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in run.stderr and len(errors) == 1 and run.stderr.strip().endswith(errors[0]), run.stderr
    assert "latest.pdopt" in errors[0] and "different saves" in errors[0] and "(epoch 2)" in errors[0]


def test_an_older_versions_checkpoint_resumes_and_its_mixed_sets_are_refused(two_epochs, digits, tmp_path, engine_log):
    """Format 1 (no manifest; trained weights in .pdparams, EMA in .pdema): resumed with a warning that it
    cannot be checked; its optimizer's schedule step must still match its states."""
    out, engine = two_epochs
    old = tmp_path / "old"
    old.mkdir()
    states = paddle.load(str(out / "latest.pdstates"))
    del states[MANIFEST]
    paddle.save(states, str(old / "latest.pdstates"))
    shutil.copy(out / "latest.pdopt", old / "latest.pdopt")
    shutil.copy(out / "latest.pdema", old / "latest.pdparams")  # format 1's roles: model in .pdparams
    shutil.copy(out / "latest.pdparams", old / "latest.pdema")
    loaded = load_checkpoint(str(old / "latest"), with_ema=True)
    assert_same(arrays(loaded["model"]), arrays(engine.model.state_dict()))
    assert_same(arrays(loaded["ema"]), arrays(engine.ema.state_dict()))
    assert "cannot be checked to come from one save" in engine_log.text
    shutil.copy(out / "epoch_1.pdopt", old / "latest.pdopt")
    with pytest.raises(ConfigError, match=r"latest.pdopt is at step 8 but .*latest.pdstates at step 16 \(epoch 2\)"):
        load_checkpoint(str(old / "latest"))


def test_unfinished_saves_are_finished_or_deleted_at_the_next_start(two_epochs, digits, tmp_path, engine_log):
    out, _ = two_epochs
    folder = tmp_path / "output" / MODEL
    shutil.copytree(out, folder)
    (folder / ".epoch_1.saving").mkdir()  # killed before its commit: deleted
    (folder / ".epoch_1.saving" / "epoch_1.pdparams").write_bytes(b"partial")
    (folder / ".latest.pdopt.4242.tmp").write_bytes(b"partial")  # an older version's temporary file: deleted
    committed = folder / ".epoch_2.committed"  # killed after its commit, one file moved: finished
    committed.mkdir()
    for member in ("pdopt", "pdema", "pdstates"):
        shutil.copy(out / f"latest.{member}", committed / f"epoch_2.{member}")
    shutil.copy(out / "latest.pdparams", folder / "epoch_2.pdparams")
    shutil.copy(out / "epoch_1.pdstates", folder / "epoch_2.pdstates")
    Engine(quick_config(digits, tmp_path, "Global.epochs=2", "EMA.decay=0.9"), "train")
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    assert "finished the interrupted save" in engine_log.text and "deleted the unfinished save" in engine_log.text
    for member in ("pdparams", "pdopt", "pdema", "pdstates"):
        assert (folder / f"epoch_2.{member}").read_bytes() == (out / f"latest.{member}").read_bytes(), member
    assert load_checkpoint(str(folder / "epoch_2"), with_ema=True)["states"]["epoch"] == 2


def test_a_failed_save_keeps_the_previous_checkpoint_and_no_temporary_files(two_epochs, tmp_path, monkeypatch):
    out, engine = two_epochs
    monkeypatch.setattr(engine.checkpoints, "output_dir", str(tmp_path))
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    before = (tmp_path / "latest.pdstates").read_bytes()
    real_save = paddle.save

    def disk_full(obj, path, *args, **kwargs):
        if path.endswith(".pdema"):
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(paddle, "save", disk_full)
    with pytest.raises(OSError):
        engine.checkpoints.save("latest", 3)
    assert (tmp_path / "latest.pdstates").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert load_checkpoint(str(tmp_path / "latest"), with_ema=True)["states"]["epoch"] == 2
