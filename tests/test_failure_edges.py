"""The everyday edges of a run, each one line and its documented exit status (docs/failure-behaviour.md),
no traceback, nothing half-written and no good export replaced: resume with another class count, write
errors (a file-size limit, read-only folders), Ctrl-C / SIGTERM (also under paddle.distributed.launch),
NaN weights exported, an export without inference.yml, two trainings in one folder, a DataError on one
rank, an error in a DataLoader worker's batch operator, and the shipped deploy config's keys."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import paddle
import pytest

from conftest import QUICK_START, REPO, quick_argv, quick_config, quick_overrides, run_main
from ppcls_ext import cli
from ppcls_ext.config import ConfigError, load_config
from ppcls_ext.data.dataset import DataError
from ppcls_ext.data.loader import build_dataloader
from ppcls_ext.engine import Engine
from ppcls_ext.engine.checkpoint import load_checkpoint
from ppcls_ext.engine.run_lock import LOCK_FILE

TESTS = os.path.dirname(os.path.abspath(__file__))
DEPLOY_CONFIG = os.path.join(REPO, "deploy", "configs", "inference_cls.yaml")


@pytest.fixture(scope="module")
def small(digits, tmp_path_factory):
    """`-o` options for a fast run: 64 training images in batches of 32, no evaluation."""
    root = tmp_path_factory.mktemp("small")
    lines = (digits / "train_small.txt").read_text().splitlines()[:64]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return [f"DataLoader.Train.dataset.cls_label_path={root}/train.txt", "DataLoader.Train.sampler.batch_size=32",
            "Global.eval_during_train=False", "Global.epochs=1"]


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def assert_one_line(text, *words):
    """stderr of a tool that failed cleanly: no traceback, and its last line holds every word."""
    assert "Traceback" not in text and "Error Message Summary" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    for word in words:
        assert word in last, (word, last)
    return last


def run_tools(steps, tmp_path, command_prefix=()):
    """Run `steps` (see tool_runner.py) in one child process; their results."""
    steps_file, results_file = tmp_path / "steps.json", tmp_path / "results.json"
    steps_file.write_text(json.dumps(steps))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([*command_prefix, sys.executable, os.path.join(TESTS, "tool_runner.py"), str(steps_file),
                           str(results_file)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results_file.read_text())


# --- 1. resume with another class count ------------------------------------------------------------


def tool(mode):
    return lambda argv: cli.main(mode, argv)


def test_resume_with_another_class_count_is_refused_naming_both(digits, small, tmp_path, capsys):
    """Old code: the classifier was re-initialised, 'continuing at epoch 2', then an AssertionError
    traceback from the optimizer's velocity of the old shape."""
    assert run_main(tool("train"), quick_argv(digits, tmp_path, *small), capsys)[0] == 0
    latest = tmp_path / "output" / "MicroNet_M0" / "latest"
    before = {name: digest(f"{latest}.{name}") for name in ("pdparams", "pdopt", "pdstates")}
    status, out, err = run_main(tool("train"), quick_argv(digits, tmp_path, *small, f"Global.checkpoints={latest}",
                                                          "Arch.class_num=12", "Global.epochs=2"), capsys)
    assert status == 2
    assert_one_line(err, "trained for 10 classes", "Arch.class_num is 12", f"Global.pretrained_model={latest}")
    assert "continuing at epoch" not in out
    assert {name: digest(f"{latest}.{name}") for name in before} == before
    assert not os.path.exists(latest.parent / LOCK_FILE)


# --- 2, 3, 6. write errors under a file-size limit -----------------------------------------------------


def test_write_errors_at_a_file_size_limit_are_one_line_and_leave_no_partial_file(digits, small, digits_weights,
                                                                                   digits_export, tmp_path):
    """RLIMIT_FSIZE (`ulimit -f`) in a child process: a checkpoint save, an export over a good export, a
    --json file and the log file. Old code: an OSError traceback for the checkpoint, a traceback and a
    1 KB partial JSON, and an export reported as done (exit 0) with inference.pdiparams cut at the limit,
    replacing the good export."""
    out = tmp_path / "output" / "MicroNet_M0"
    weights = f"Global.pretrained_model={digits_weights}"
    json_path = tmp_path / "predictions.json"
    full_log = tmp_path / "full_log" / "MicroNet_M0" / "train.log"  # a log file at the limit already
    full_log.parent.mkdir(parents=True)
    full_log.write_text("x" * (1 << 16))
    export = tmp_path / "inference"  # a good export, which a failed one must not replace
    shutil.copytree(digits_export, export)
    before = {name: digest(export / name) for name in os.listdir(export)}
    results = run_tools([
        {"tool": "train", "argv": quick_argv(digits, tmp_path, *small), "fsize": 1 << 20},
        {"tool": "export", "argv": quick_argv(digits, tmp_path, weights, "Global.export_deploy_form=False"),
         "fsize": 1 << 20},
        {"tool": "infer", "argv": quick_argv(digits, tmp_path, weights, f"Infer.infer_imgs={digits}/demo")
         + ["--json", str(json_path)], "fsize": 1000},
        {"tool": "train", "argv": quick_argv(digits, tmp_path, *small, f"Global.output_dir={tmp_path}/full_log"),
         "fsize": 1 << 16},
    ], tmp_path)
    checkpoint, cut_export, infer, logged = results
    assert checkpoint["status"] == 2
    assert_one_line(checkpoint["stderr"], "error: checkpoint: cannot write", "latest", "file-size limit")
    assert [name for name in os.listdir(out) if not name.endswith(".log")] == []  # no partial checkpoint, no lock

    assert cut_export["status"] == 2
    assert_one_line(cut_export["stderr"], "error: Global.save_inference_dir: cannot write", "inference.pdiparams",
                    "file-size limit", "the export already there is kept")
    assert {name: digest(export / name) for name in os.listdir(export)} == before
    assert not [name for name in os.listdir(tmp_path) if ".partial" in name or ".old-" in name]

    assert infer["status"] == 2
    assert_one_line(infer["stderr"], "error: --json: cannot write", "predictions.json", "file-size limit")
    assert not json_path.exists() and not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]

    # the log file (logging itself would print a traceback and carry on)
    assert logged["status"] == 2
    assert_one_line(logged["stderr"], "error: log file: cannot write", "train.log", "file-size limit")
    assert os.listdir(full_log.parent) == ["train.log"]


# --- 4. read-only folders ------------------------------------------------------------------------------

READ_ONLY_MOUNT = 'mount --make-rprivate / && mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'


def read_only(folder):
    """A command prefix under which `folder` cannot be written. Not root: chmod does it. Root ignores
    permissions: a private mount namespace (`unshare -m`) with `folder` bound read-only (EROFS), only
    for the child."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return []
    prefix = ["unshare", "-m", "sh", "-c", READ_ONLY_MOUNT, str(folder)]
    works = shutil.which("unshare") is not None and subprocess.run(prefix + ["true"], capture_output=True).returncode == 0
    if not works or subprocess.run(prefix + ["touch", str(folder / "probe")], capture_output=True).returncode == 0:
        pytest.skip("running as root, where chmod does not stop writes, and no private mount namespace "
                    "(`unshare -m`, CAP_SYS_ADMIN) to mount the folder read-only")
    return prefix


def test_read_only_folders_are_refused_at_start_up(digits, small, digits_weights, tmp_path):
    """Old code: exporting into a read-only folder was a PermissionError traceback (after the export was
    built), although the folder was said to be checked at start-up."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    weights = f"Global.pretrained_model={digits_weights}"
    prefix = read_only(folder)
    try:
        export, infer, train = run_tools([
            {"tool": "export", "argv": quick_argv(digits, tmp_path, weights, f"Global.save_inference_dir={folder}/inference")},
            {"tool": "infer", "argv": quick_argv(digits, tmp_path, weights, f"Infer.infer_imgs={digits}/demo/seven.png")
             + ["--json", str(folder / "predictions.json")]},
            {"tool": "train", "argv": quick_argv(digits, tmp_path, *small, f"Global.output_dir={folder}/output")},
        ], tmp_path, prefix)
    finally:
        os.chmod(folder, 0o755)
    reason = "permission denied" if prefix == [] else "the file system is read-only"
    assert export["status"] == 2
    assert_one_line(export["stderr"], f"error: Global.save_inference_dir: cannot write in {folder}", reason)
    assert "exported" not in export["stdout"]
    assert infer["status"] == 2
    assert_one_line(infer["stderr"], f"error: --json {folder}/predictions.json: cannot write there", reason)
    assert "class_ids" not in infer["stdout"]
    assert train["status"] == 2
    assert_one_line(train["stderr"], "error: Global.output_dir: cannot create directory", f"{folder}/output")
    assert os.listdir(folder) == []


# --- 5. Ctrl-C and SIGTERM -----------------------------------------------------------------------------


def children(pid):
    """PIDs of the child processes of `pid` (its DataLoader workers)."""
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(child) for child in open(path).read().split()] if os.path.exists(path) else []


def gone(pid):
    """The process has exited (or is a zombie waiting to be reaped by its new parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def start_training(command, **kwargs):
    """Start a training command; return (process, its stdout lines up to its first saved checkpoint)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "saved latest" in line:
            return proc, lines
    pytest.fail(f"training ended before saving a checkpoint: {proc.communicate()[1][-3000:]}")


def assert_interrupted(err, name, output):
    """The last line names the signal and the last complete checkpoint, which loads and is of that epoch."""
    last = assert_one_line(err, f"interrupted by {name}", "the last complete checkpoint is", "resume with -o Global.checkpoints=")
    prefix = last.split("resume with -o Global.checkpoints=")[1].strip()
    epoch = int(last.split("(epoch ")[1].split(")")[0])
    assert prefix == str(output / "MicroNet_M0" / "latest") and epoch >= 1
    assert load_checkpoint(prefix)["states"]["epoch"] == epoch
    leftovers = [name for name in os.listdir(output / "MicroNet_M0") if name.startswith(".") or name == LOCK_FILE]
    assert leftovers == []  # no staging folder of a save, no lock


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_training_naming_the_checkpoint_to_resume(digits, small, tmp_path, signum):
    """A real tools/train.py with two DataLoader workers: Ctrl-C (SIGINT to its whole process group, as
    a terminal sends it) or SIGTERM (to the trainer) ends it with exit status 130 / 143 and one line; the
    checkpoint it names is complete, the workers and the lock are gone. Old code: a KeyboardInterrupt
    traceback (SIGINT); Paddle's C++ 'Termination signal' report and status -15 (SIGTERM)."""
    command = [sys.executable, os.path.join(REPO, "tools", "train.py")] + quick_argv(
        digits, tmp_path, *small, "Global.epochs=100", "DataLoader.Train.loader.num_workers=2")
    proc, _ = start_training(command, start_new_session=True)
    time.sleep(0.3)
    workers = children(proc.pid)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert_interrupted(err, "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM", tmp_path / "output")
    deadline = time.time() + 10
    while not all(gone(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in workers), workers


def test_a_signal_during_a_checkpoint_save_lets_the_save_finish(digits, small, tmp_path, capsys, monkeypatch):
    """SIGTERM while the optimizer state is written: the save completes as a unit, then the run stops (at
    its next step) naming that checkpoint. Old code: SIGTERM killed the process mid-save."""
    real_save = paddle.save

    def signalled_save(obj, path, *args, **kwargs):
        if ".pdopt" in path and not os.environ.get("SIGNALLED"):
            monkeypatch.setenv("SIGNALLED", "1")
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(paddle, "save", signalled_save)
    status, out, err = run_main(tool("train"), quick_argv(digits, tmp_path, *small, "Global.epochs=2"), capsys)
    assert status == 143
    assert "saved latest" in out and "[Epoch 2/2][Avg]" not in out
    assert_interrupted(err, "SIGTERM", tmp_path / "output")
    assert load_checkpoint(str(tmp_path / "output" / "MicroNet_M0" / "latest"))["states"]["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the tool's handler is gone after it


# --- 9. one training per output folder -----------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.write(fd, f"pid={os.getpid()} host={socket.gethostname()} started=2026-12-07T10:00:00\\n".encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_training_in_one_output_folder_is_refused(digits, small, tmp_path, capsys):
    """Another live training holds the folder's lock (a process locking train.lock as RunLock does: POSIX
    lockf, its PID and host inside): refused in one line naming it, nothing touched. Old code: both ran
    and mixed their checkpoints."""
    folder = tmp_path / "output" / "MicroNet_M0"
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, out, err = run_main(tool("train"), quick_argv(digits, tmp_path, *small), capsys)
        assert status == 2
        assert_one_line(err, f"{folder} is in use by another training", f"PID {holder.pid} on host {socket.gethostname()}",
                        "Global.output_dir")
        assert sorted(os.listdir(folder)) == [LOCK_FILE, "train.log"] and "[Train]" not in out
        assert f"pid={holder.pid} " in (folder / LOCK_FILE).read_text()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_notice_and_released_at_the_end(digits, small, tmp_path, engine_log):
    """A lock file left by a killed training (its PID no longer runs, no process holds the lock) is taken
    over with a warning; the lock is held while training and removed after it."""
    folder = tmp_path / "output" / "MicroNet_M0"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / LOCK_FILE).write_text(f"pid={dead.pid} host={socket.gethostname()} started=2026-12-07T10:00:00\n")
    engine = Engine(quick_config(digits, tmp_path, *small), "train")
    assert f"taking over the lock of a training that ended without releasing it (PID {dead.pid} on host " \
           f"{socket.gethostname()}, since 2026-12-07T10:00:00, which is no longer running)" in engine_log.text
    assert (folder / LOCK_FILE).read_text().startswith(f"pid={os.getpid()} host={socket.gethostname()} ")
    engine.train()
    assert not (folder / LOCK_FILE).exists()


# --- 5 and "left from before": several processes ---------------------------------------------------------


def launch(tmp_path, script, options, env=None):
    """`python -m paddle.distributed.launch --nproc_per_node 2 SCRIPT -c quick-start -o ...` (started, not
    waited for); its worker logs are `tmp_path/log/workerlog.<rank>`."""
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
               str(tmp_path / "log"), script, "-c", QUICK_START] + [arg for option in options for arg in ("-o", option)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS, os.environ.get("PYTHONPATH", "")]),
                   **(env or {})}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
                            start_new_session=True)


def finish(proc, timeout):
    """The launcher's output once it ends; after `timeout` seconds its whole process group is killed and
    the test fails (trainers left waiting in a collective)."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running after {timeout} s: {proc.communicate()[0][-3000:]}")


def worker_log(tmp_path, rank):
    return (tmp_path / "log" / f"workerlog.{rank}").read_text()


@pytest.mark.slow
def test_a_data_error_on_one_rank_stops_every_rank_with_its_line(digits, small, tmp_path):
    """Rank 1's data fails at its third batch (tests/rank_failure_probe.py): both ranks stop at that step
    with the line, rank 0 adding where it was read. Old code: rank 1 stopped, rank 0 waited in the
    gradient all-reduce until gloo's timeout aborted it with a C++ traceback."""
    proc = launch(tmp_path, os.path.join(TESTS, "rank_failure_probe.py"),
                  quick_overrides(digits, tmp_path, *small, "DataLoader.Train.sampler.batch_size=8"),
                  env={"FAIL_RANK": "1", "FAIL_AT": "17"})
    output = finish(proc, 120)
    assert proc.returncode == 2, output[-3000:]
    message = "10 unreadable training images in a row, the last line 7 (injected on rank 1)"
    assert assert_one_line(worker_log(tmp_path, 1), message).endswith("(injected on rank 1)")
    assert assert_one_line(worker_log(tmp_path, 0), message).endswith("(read by process 1)")


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_rank_at_one_step(digits, small, tmp_path):
    """paddle.distributed.launch forwards SIGTERM (three times) to its two trainers, each with two DataLoader
    workers: both stop at the same step, each with the line and status 143, the checkpoint complete. Old
    code: the trainers died mid-collective; the one left waiting aborted with a gloo TimeoutException."""
    proc = launch(tmp_path, os.path.join(REPO, "tools", "train.py"),
                  quick_overrides(digits, tmp_path, *small, "Global.epochs=100", "DataLoader.Train.loader.num_workers=2"))
    deadline = time.time() + 240
    while "saved latest" not in (worker_log(tmp_path, 0) if (tmp_path / "log" / "workerlog.0").exists() else ""):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    finish(proc, 60)
    for rank in (0, 1):
        assert_interrupted(worker_log(tmp_path, rank), "SIGTERM", tmp_path / "output")
        assert "Aborted" not in worker_log(tmp_path, rank)



# --- 7. NaN weights are not exported -------------------------------------------------------------------


def test_nan_weights_are_refused_by_export_as_by_eval(digits, digits_weights, tmp_path, capsys):
    """Old code: exported without a word (exit 0)."""
    state = paddle.load(str(digits_weights))
    state["stem.conv.conv_kx1.conv.weight"][0, 0, 0, 0] = float("nan")
    weights = tmp_path / "diverged.pdparams"
    paddle.save(state, str(weights))
    status, out, err = run_main(tool("export"), quick_argv(digits, tmp_path, f"Global.pretrained_model={weights}"), capsys)
    assert status == 3
    assert_one_line(err, f"Global.pretrained_model={weights}: 1 of", "hold NaN or Inf (e.g. stem.conv.conv_kx1.conv.weight)")
    assert not (tmp_path / "inference").exists()


# --- 8 and "also": deployment ----------------------------------------------------------------------------


def test_an_export_without_inference_yml_says_which_preprocessing_it_assumes(digits, digits_export, tmp_path, capsys):
    """The shipped deploy config on an export without inference.yml (PaddleClas's own exports have none):
    its ImageNet PreProcess is used, as by PaddleClas's predictor, and a warning names it. Old code: no word,
    and a 32 px digits model then classified resized-and-cropped 224 px images."""
    from ppcls_ext.cli.predict_cls import main as predict

    export = tmp_path / "export"
    shutil.copytree(digits_export, export)
    os.remove(export / "inference.yml")
    status, out, err = run_main(predict, ["-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={export}", "-o",
                                          f"Global.infer_imgs={digits}/demo/seven.png", "-o", "Global.enable_mkldnn=False"],
                                capsys)
    assert status == 0 and "class_ids" in out
    assert f"{export} has no inference.yml" in out
    assert ("assuming the deploy config's PreProcess.transform_ops, as PaddleClas's predictor does: ResizeImage("
            "resize_short=256), CropImage(size=224), NormalizeImage(scale=0.00392157, mean=[0.485, 0.456, 0.406], "
            "std=[0.229, 0.224, 0.225], order=, channel_num=3), ToCHWImage") in out


def test_the_shipped_deploy_config_has_only_known_keys(engine_log):
    """Old code: `Global.cpu_spin_wait is not a known key; it has no effect` on every run, though it is used."""
    from ppcls_ext.cli.predict_cls import check_deploy_config
    from ppcls_ext.inference.options import options_from_config

    config = load_config(DEPLOY_CONFIG)
    glob = check_deploy_config(config)
    assert "not a known key" not in engine_log.text
    assert options_from_config({**glob, "cpu_spin_wait": False}).cpu_spin_wait is False
    with pytest.raises(ConfigError, match=r"Global.cpu_spin_wait must be True or False, got 'no'"):
        check_deploy_config({**config, "Global": {**glob, "cpu_spin_wait": "no"}})


# --- "left from before": an error in a worker's batch operator -----------------------------------------------


def test_an_error_in_a_worker_batch_operator_stops_the_loader_with_it(digits, small, tmp_path):
    """Mixup whose alpha a schedule set out of range, in a DataLoader worker: the loader raises the
    operator's error as a DataError naming the config key. Old code: Paddle's reader thread died with a
    traceback and the main process got a SystemError, or waited."""
    config = quick_config(digits, tmp_path, *small, "DataLoader.Train.loader.num_workers=2",
                          "DataLoader.Train.dataset.batch_transform_ops=[{MixupOperator: {alpha: 0.2}}]")
    loader = build_dataloader(config, "Train", 10)
    loader.collate_fn.batch_ops.ops[0].alpha = -1.0
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the loader hangs"))
    signal.alarm(120)
    try:
        with pytest.raises(DataError, match=r"^DataLoader.Train.dataset.batch_transform_ops: MixupOperator: alpha "
                                            r"must be a number >= 0 \(0 turns mixing off\), got -1.0$"):
            for _ in loader:
                pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
