"""Crash a real training run at every file operation of one checkpoint save, resume it, and compare
with the uninterrupted run.

    python tests/crash_matrix.py [--work DIR] [--json PATH]

The run is the quick-start config on 64 demo images, 2 epochs of 2 steps, with EMA (so a training
checkpoint has all four files) and evaluation off. Every mutating file operation (paddle.save, rename,
replace, remove, mkdir, rmdir, rmtree) inside the second save of `latest` (end of epoch 2) is a crash
point; the process ends with `os._exit(137)` just before it, just after it, and, for a `paddle.save`,
after writing only half of the file. A second process then resumes from `latest` with the same
command. Outcomes: `equal` (exit 0; final weights, EMA and optimizer state and every logged loss equal
the uninterrupted run's), `refused` (exit 2, one `error:` line, no traceback), `differs` (exit 0 but a
different result: silently wrong) or `failed` (anything else).

Only public names that every version of the engine has are patched (`paddle.save`, `os.*`, `shutil.rmtree`
and the engine's `save_checkpoint`: `ppcls_ext.engine.engine`'s in older versions, `ppcls_ext.engine.checkpoint`'s
now), so the same script measures older code through PYTHONPATH.
Each run is a fork of this process, which imports Paddle once and computes nothing itself.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_START = os.path.join(REPO, "configs", "quick_start", "micronet_m0_digits.yaml")
MEMBERS = ("pdparams", "pdopt", "pdema", "pdstates")
CRASH_STATUS = 137
TARGET_SAVE = 2  # the second save of `latest`: end of epoch 2, the last epoch


def train_args(data: str, output: str, *extra: str) -> List[str]:
    overrides = [f"Global.output_dir={output}", f"DataLoader.Train.dataset.image_root={data}",
                 f"DataLoader.Train.dataset.cls_label_path={data}/train_64.txt", "DataLoader.Train.sampler.batch_size=32",
                 "Global.epochs=2", "Global.eval_during_train=False", "Global.save_interval=1000",
                 "Global.print_batch_step=1", "EMA.decay=0.9", *extra]
    return ["-c", QUICK_START] + [arg for override in overrides for arg in ("-o", override)]


class FaultInjector:
    """Counts the mutating file operations made during the TARGET_SAVE-th save of `latest` and ends the
    process at one of them (`crash_at` = (index, "before" | "after" | "torn")); without `crash_at` it keeps
    a copy of every complete `latest` and the list of operations in `snapshots`."""

    def __init__(self, root: str, crash_at: Optional[Tuple[int, str]] = None, snapshots: Optional[str] = None):
        self.root, self.crash_at, self.snapshots = root, crash_at, snapshots
        self.saves, self.armed, self.depth, self.operations = 0, False, 0, []

    def _label(self, name: str, args: tuple) -> str:
        paths = [os.path.relpath(a, self.root) for a in args if isinstance(a, str)]
        return f"{name} {' -> '.join(paths)}"

    def wrap(self, name: str, real: Callable, path_args: slice = slice(0, 2)) -> Callable:
        def operation(*args, **kwargs):
            if not self.armed or self.depth or (name == "os.mkdir" and os.path.isdir(args[0])):
                return real(*args, **kwargs)  # (os.makedirs(exist_ok=True) on an existing folder changes nothing)
            index = len(self.operations)
            shown = args[path_args] if name != "paddle.save" else args[1:2]
            self.operations.append(self._label(name, shown))
            if self.crash_at == (index, "before"):
                os._exit(CRASH_STATUS)
            self.depth += 1
            try:
                result = real(*args, **kwargs)
            finally:
                self.depth -= 1
            if self.crash_at == (index, "after"):
                os._exit(CRASH_STATUS)
            if self.crash_at == (index, "torn"):
                with open(args[1], "r+b") as f:
                    f.truncate(os.path.getsize(args[1]) // 2)
                os._exit(CRASH_STATUS)
            return result
        return operation

    def install(self) -> None:
        import paddle
        import ppcls_ext.engine.checkpoint as checkpoint_module
        import ppcls_ext.engine.engine as engine_module

        # the module whose `save_checkpoint` the engine calls: engine.py in older versions, checkpoint.py now
        saver = engine_module if hasattr(engine_module, "save_checkpoint") else checkpoint_module

        paddle.save = self.wrap("paddle.save", paddle.save)
        for name in ("replace", "rename", "remove", "unlink", "rmdir", "mkdir"):
            setattr(os, name, self.wrap(f"os.{name}", getattr(os, name)))
        shutil.rmtree = self.wrap("shutil.rmtree", shutil.rmtree, slice(0, 1))
        real_save = saver.save_checkpoint

        def save_checkpoint(prefix, *args, **kwargs):
            is_latest = os.path.basename(prefix) == "latest"
            self.saves += is_latest
            self.armed = is_latest and self.saves == TARGET_SAVE
            try:
                return real_save(prefix, *args, **kwargs)
            finally:
                self.armed = False
                if is_latest and self.snapshots:  # the reference run keeps each complete `latest` and the operations
                    keep = os.path.join(self.snapshots, str(self.saves))
                    os.makedirs(keep, exist_ok=True)
                    with open(os.path.join(self.snapshots, "operations.json"), "w") as f:
                        json.dump(self.operations, f)
                    for member in MEMBERS:
                        if os.path.exists(f"{prefix}.{member}"):
                            shutil.copy(f"{prefix}.{member}", keep)

        saver.save_checkpoint = save_checkpoint


def run_in_child(log: str, body: Callable[[], int]) -> int:
    """Run `body` in a forked process with stdout and stderr in `log`; its exit status."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            status = body()
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def train(args: List[str], injector: Optional[FaultInjector] = None) -> Callable[[], int]:
    def body() -> int:
        from ppcls_ext.cli import main

        if injector is not None:
            injector.install()
        return main("train", args)
    return body


_TIMES = re.compile(r", batch_cost.*$")


def logged_losses(log: str) -> Dict[str, str]:
    """`[Train][Epoch e/E][Iter: i/N]` and `[Avg]` lines without their timings, keyed by their position."""
    lines = {}
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            match = re.search(r"(\[Train\]\[Epoch \d+/\d+\]\[(?:Iter: \d+/\d+|Avg)\])(.*)$", line)
            if match:
                lines[match.group(1)] = _TIMES.sub("", match.group(2))
    return lines


def file_origin(path: str, snapshots: str) -> str:
    """Which reference save (1, 2) a file in place is byte-identical to; '-' if absent, '?' if neither."""
    if not os.path.exists(path):
        return "-"
    with open(path, "rb") as f:
        data = f.read()
    for save in ("1", "2"):
        reference = os.path.join(snapshots, save, os.path.basename(path))
        if os.path.exists(reference):
            with open(reference, "rb") as f:
                if f.read() == data:
                    return save
    return "?"


def arrays(path: str) -> Dict[str, object]:
    import numpy as np
    import paddle

    def flatten(value, key=""):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from flatten(v, f"{key}/{k}")
        elif hasattr(value, "numpy"):
            yield key, value.numpy()
        else:
            yield key, np.asarray(value)
    return dict(flatten(paddle.load(path)))


def same_arrays(a: Dict[str, object], b: Dict[str, object]) -> bool:
    import numpy as np

    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def final_state(output: str) -> Dict[str, Dict[str, object]]:
    prefix = os.path.join(output, "MicroNet_M0", "latest")
    return {m: arrays(f"{prefix}.{m}") for m in ("pdparams", "pdema", "pdopt") if os.path.exists(f"{prefix}.{m}")}


def outcome(status: int, log: str, output: str, reference: dict, reference_losses: Dict[str, str]) -> str:
    with open(log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if status == 2:
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        return "refused" if len(errors) == 1 and "Traceback" not in text else "failed"
    if status != 0 or "Traceback" in text:
        return "failed"
    losses = logged_losses(log)
    equal = _equal_states(final_state(output), reference) and all(
        reference_losses.get(key) == value for key, value in losses.items())
    return "equal" if equal else "differs"


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(same_arrays(a[k], b[k]) for k in a)


def prepare_data(work: str, data: Optional[str]) -> str:
    if data is None:
        from ppcls_ext.data.demo import make_digits_dataset

        data = os.path.join(work, "digits")
        make_digits_dataset(data)
    lines = open(os.path.join(data, "train_list.txt"), encoding="utf-8").read().splitlines()
    with open(os.path.join(data, "train_64.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines[:: len(lines) // 64][:64]) + "\n")
    return data


def crash_matrix(work: str, data: Optional[str] = None) -> dict:
    """Every crash point of the save and what the resumed run did; see the module docstring."""
    import paddle  # noqa: F401  (imported once, before forking)
    import ppcls_ext.cli  # noqa: F401
    import ppcls_ext.engine.engine  # noqa: F401

    data = prepare_data(work, data)
    snapshots = os.path.join(work, "reference_saves")
    reference_out = os.path.join(work, "reference")
    recorder = FaultInjector(reference_out, snapshots=snapshots)
    status = run_in_child(os.path.join(work, "reference.log"), train(train_args(data, reference_out), recorder))
    assert status == 0, open(os.path.join(work, "reference.log")).read()[-3000:]
    reference, reference_losses = final_state(reference_out), logged_losses(os.path.join(work, "reference.log"))
    with open(os.path.join(snapshots, "operations.json")) as f:
        operations = json.load(f)
    rows = []
    for index, operation in enumerate(operations):
        phases = ("before", "torn", "after") if operation.startswith("paddle.save") else ("before", "after")
        for phase in phases:
            case = os.path.join(work, f"case_{index}_{phase}")
            output = os.path.join(case, "output")
            crashed = run_in_child(case + ".crash.log", train(train_args(data, output), FaultInjector(output, (index, phase))))
            in_place = {m: file_origin(os.path.join(output, "MicroNet_M0", f"latest.{m}"), snapshots) for m in MEMBERS}
            resume_log = case + ".resume.log"
            status = run_in_child(resume_log, train(train_args(data, output, f"Global.checkpoints={output}/MicroNet_M0/latest")))
            result = outcome(status, resume_log, output, reference, reference_losses)
            leftovers = sorted(name for name in os.listdir(os.path.join(output, "MicroNet_M0")) if name.startswith("."))
            origins = {v for v in in_place.values() if v != "-"}
            rows.append({"index": index, "operation": operation, "phase": phase, "crash_status": crashed,
                         "in_place": in_place, "mixed_in_place": len(origins) > 1, "resume_status": status,
                         "outcome": result, "leftovers_after_resume": leftovers,
                         "message": next((line for line in open(resume_log, errors="replace").read().splitlines()
                                          if line.startswith("error:")), "")})
            shutil.rmtree(case, ignore_errors=True)
    return {"operations": operations, "rows": rows}


def table(result: dict) -> str:
    lines = ["| # | operation | crash at | files in place after the crash (epoch of pdparams/pdopt/pdema/pdstates) | resumed run |",
             "|---|---|---|---|---|"]
    for row in result["rows"]:
        place = "/".join(row["in_place"][m] for m in MEMBERS) + (" MIXED" if row["mixed_in_place"] else "")
        resumed = row["outcome"] + (f": {row['message']}" if row["message"] else "")
        crash = row["phase"] if row["crash_status"] == CRASH_STATUS else f"{row['phase']} (did not crash: exit {row['crash_status']})"
        lines.append(f"| {row['index']} | {row['operation']} | {crash} | {place} | {resumed} |")
    counts = {k: sum(r["outcome"] == k for r in result["rows"]) for k in ("equal", "refused", "differs", "failed")}
    mixed = sum(r["mixed_in_place"] for r in result["rows"])
    lines.append(f"\n{len(result['rows'])} crash points: " + ", ".join(f"{v} {k}" for k, v in counts.items())
                 + f"; files in place mixed after {mixed}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    parser.add_argument("--data", help="demo dataset folder (default: written into the scratch folder)")
    parser.add_argument("--json", help="write the matrix as JSON here")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="crash_matrix_")
    os.makedirs(work, exist_ok=True)
    result = crash_matrix(work, args.data)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
