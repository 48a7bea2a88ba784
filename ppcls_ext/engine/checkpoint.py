"""Checkpoints in PaddleClas's layout, written and read as one unit.

A checkpoint `<dir>/<name>` is PaddleClas's four files: `<name>.pdparams` (weights), `.pdopt` (optimizer
and LR schedule), `.pdema` and `.pdstates` (epoch, best metrics, counters). With EMA, `.pdparams` holds
the EMA weights and `.pdema` the trained model's, as PaddleClas's `save_model` writes them and its
`init_model` reads them back.

One unit: a save writes all its files into `<dir>/.<name>.saving/`, commits them by renaming that folder
to `<dir>/.<name>.committed/` (one atomic rename), then moves them into place, `.pdstates` last.
`recover_checkpoints` finishes a committed save and deletes an uncommitted one that a killed run left
behind, so the files in place always come from one save. `.pdstates` also records the SHA-256 of each
file of its save; loading checks them, so files mixed by hand, by another process or by an older
version's interrupted save are refused in one line instead of resumed.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import paddle

from ..config import ConfigError
from ..weights import file_sha256
from .log import logger

MEMBERS = ("pdparams", "pdopt", "pdema", "pdstates")  # in the order a save moves them into place
MANIFEST = "checkpoint"  # the .pdstates entry that names the save's files: {"format": 2, "files": {member: sha256}}
FORMAT = 2  # 1 (no manifest): written before checkpoints were units, with the trained weights always in .pdparams
_SAVING, _COMMITTED = ".saving", ".committed"
_OLD_TEMPORARY = re.compile(r"^\..+\.(pdparams|pdopt|pdema|pdstates)\.\d+\.tmp$")  # format 1's per-file temporaries
from ..safe_load import load_paddle_file


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_checkpoint_file(path: str) -> Any:
    """The one place that unpickles a checkpoint file (restricted: tensors and containers only), as a one-line
    error if unreadable or refused."""
    try:
        return load_paddle_file(path)
    except Exception as error:  # unpickling raises many types for truncated, foreign or refused files
        raise ConfigError(f"Global.checkpoints: {path} is not readable: {_first_line(error)}") from error


def _fsync_directory(path: str) -> None:
    """Make renames in `path` durable (POSIX; Windows cannot open a folder)."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write(obj: Any, path: str) -> str:
    """paddle.save `obj` to `path`, flushed to disk; its SHA-256."""
    paddle.save(obj, path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return file_sha256(path)


def _member_path(directory: str, name: str, member: str) -> str:
    return os.path.join(directory, f"{name}.{member}")


def _finish_save(directory: str, name: str) -> None:
    """Move a committed save's files into place (`.pdstates` last) and delete the files of an earlier save
    that this one does not have. Safe to repeat after a crash at any point."""
    committed = os.path.join(directory, f".{name}{_COMMITTED}")
    states_path = _member_path(committed, name, "pdstates")
    if not os.path.exists(states_path):
        states_path = _member_path(directory, name, "pdstates")
    states = read_checkpoint_file(states_path)
    manifest = states.get(MANIFEST) if isinstance(states, Mapping) else None
    members = manifest.get("files") if isinstance(manifest, Mapping) else None
    if not isinstance(members, Mapping):
        raise ConfigError(f"{states_path} has no manifest of its save: not a checkpoint this program wrote; nothing "
                          "was moved")
    for member in MEMBERS[:-1]:
        if member not in members and os.path.exists(_member_path(directory, name, member)):
            os.remove(_member_path(directory, name, member))
    for member in MEMBERS:
        if os.path.exists(_member_path(committed, name, member)):
            os.replace(_member_path(committed, name, member), _member_path(directory, name, member))
    _fsync_directory(directory)
    os.rmdir(committed)


def save_checkpoint(prefix: str, model_state: Mapping[str, Any], states: Mapping[str, Any],
                    optimizer_state: Optional[Mapping[str, Any]] = None,
                    ema_state: Optional[Mapping[str, Any]] = None) -> None:
    """Write the checkpoint `prefix` (`<dir>/<name>`) as one unit: the trained weights, the training
    states (epoch, counters) and, for a resumable checkpoint, the optimizer state and EMA weights."""
    directory, name = os.path.split(os.path.abspath(prefix))
    os.makedirs(directory, exist_ok=True)
    files = {"pdparams": model_state if ema_state is None else ema_state, "pdopt": optimizer_state,
             "pdema": None if ema_state is None else model_state}
    staging = os.path.join(directory, f".{name}{_SAVING}")
    committed = os.path.join(directory, f".{name}{_COMMITTED}")
    if os.path.isdir(committed):  # a save of this checkpoint that an earlier run could not finish
        _finish_save(directory, name)
    if os.path.isdir(staging):
        shutil.rmtree(staging)
    os.mkdir(staging)
    try:
        digests = {member: _write(obj, _member_path(staging, name, member)) for member, obj in files.items() if obj is not None}
        _write({**states, MANIFEST: {"format": FORMAT, "files": digests}}, _member_path(staging, name, "pdstates"))
        _fsync_directory(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.rename(staging, committed)  # the commit: from here on the save is finished, now or at the next start
    _fsync_directory(directory)
    _finish_save(directory, name)


def recover_checkpoints(directory: str) -> List[str]:
    """Finish the committed saves and delete the uncommitted ones (and older versions' temporary files)
    that a killed run left in `directory`; one line per thing done."""
    done: List[str] = []
    if not os.path.isdir(directory):
        return done
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry.startswith(".") and entry.endswith((_COMMITTED, _SAVING)) and os.path.islink(path):
            raise ConfigError(f"{path} is a symbolic link (to {os.readlink(path)}), not a save this program made: "
                              "nothing was moved or deleted; remove the link and start again")
        if entry.startswith(".") and entry.endswith(_COMMITTED) and os.path.isdir(path):
            name = entry[1:-len(_COMMITTED)]
            _finish_save(directory, name)
            done.append(f"finished the interrupted save of {os.path.join(directory, name)}")
        elif entry.startswith(".") and entry.endswith(_SAVING) and os.path.isdir(path):
            shutil.rmtree(path)
            done.append(f"deleted the unfinished save {path}")
        elif _OLD_TEMPORARY.match(entry):
            os.remove(path)
            done.append(f"deleted the partial file {path}")
    return done


def _check_format1(prefix: str, states: Mapping[str, Any], optimizer_state: Optional[Mapping[str, Any]]) -> None:
    """A checkpoint without a manifest: its optimizer's LR-schedule step must be the states' step."""
    schedule_step = (optimizer_state or {}).get("LR_Scheduler", {}).get("last_epoch")
    if schedule_step is not None and "step" in states and int(schedule_step) != int(states["step"]):
        raise ConfigError(f"Global.checkpoints: {prefix}.pdopt is at step {int(schedule_step)} but {prefix}.pdstates "
                          f"at step {int(states['step'])} (epoch {states.get('epoch')}): the files come from different "
                          "saves; resume from another checkpoint")
    logger.warning("%s was written by an older version of ppcls_ext: its files cannot be checked to come from one save",
                   prefix)


def load_checkpoint(prefix: str, with_optimizer: bool = True, with_ema: bool = False) -> Dict[str, Any]:
    """The checkpoint `prefix` (with or without `.pdparams`) to resume from, checked to be one save:
    {"states", "model", "optimizer" (with_optimizer), "ema" (with_ema)}."""
    if prefix.endswith(".pdparams"):
        prefix = prefix[: -len(".pdparams")]
    directory, name = os.path.split(os.path.abspath(prefix))
    if os.path.isdir(os.path.join(directory, f".{name}{_COMMITTED}")):
        raise ConfigError(f"Global.checkpoints: a save of {prefix} was interrupted and not finished; training with "
                          f"Global.output_dir above {directory} finishes it")
    if not os.path.isfile(prefix + ".pdstates"):
        found = [m for m in MEMBERS if os.path.isfile(f"{prefix}.{m}")]
        raise ConfigError(f"Global.checkpoints={prefix!r}: cannot resume, missing {prefix}.pdstates"
                          + (f" (found {', '.join(found)})" if found else " (no checkpoint files there)"))
    states = read_checkpoint_file(prefix + ".pdstates")
    if not isinstance(states, Mapping):
        raise ConfigError(f"Global.checkpoints: {prefix}.pdstates does not hold training states")
    manifest = states.get(MANIFEST)
    if manifest and not (isinstance(manifest, Mapping) and isinstance(manifest.get("files"), Mapping)):
        raise ConfigError(f"Global.checkpoints: {prefix}.pdstates has a malformed manifest ({MANIFEST!r}); resume from "
                          "another checkpoint")
    members = manifest["files"] if manifest else {m: None for m in MEMBERS[:-1] if os.path.isfile(f"{prefix}.{m}")}
    # which file holds what: the EMA weights move to .pdparams when there are any (PaddleClas's layout, format 2)
    roles = {"model": "pdema" if manifest and "pdema" in members else "pdparams",
             "ema": ("pdparams" if manifest else "pdema") if "pdema" in members else None}
    wanted = {"model": roles["model"]}
    if with_optimizer:
        wanted["optimizer"] = "pdopt"
    if with_ema:
        if roles["ema"] is None:
            raise ConfigError(f"Global.checkpoints: {prefix} was saved without EMA weights (no .pdema); resume it "
                              "without the EMA section or from a checkpoint of a run with EMA")
        wanted["ema"] = roles["ema"]
    missing = [f"{prefix}.{m}" for m in wanted.values() if m not in members or not os.path.isfile(f"{prefix}.{m}")]
    if missing:
        hint = " (best_model holds weights only: resume from latest or epoch_N)" if "pdopt" in str(missing) else ""
        raise ConfigError(f"Global.checkpoints={prefix!r}: cannot resume, missing {', '.join(missing)}{hint}")
    for member in wanted.values():
        if manifest and file_sha256(f"{prefix}.{member}") != members[member]:
            raise ConfigError(f"Global.checkpoints: {prefix}.{member} is not the file that {prefix}.pdstates (epoch "
                              f"{states.get('epoch')}) was saved with: the files come from different saves; resume "
                              "from another checkpoint")
    loaded = {role: read_checkpoint_file(f"{prefix}.{member}") for role, member in wanted.items()}
    if not manifest:
        _check_format1(prefix, states, loaded.get("optimizer"))
    return {"states": states, **loaded}


def cast_to_model_dtypes(state: Mapping[str, Any], model: paddle.nn.Layer) -> Dict[str, Any]:
    """`state` with each tensor in the dtype of the model's own tensor of that name: float16 for the
    parameters of an AMP-O2-decorated model, whose `state_dict()` shows float32 copies (decorate's
    `save_dtype` hooks) but whose `set_state_dict` needs float16."""
    dtypes = {name: tensor.dtype for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())}
    cast = {}
    for key, value in state.items():
        if key in dtypes and isinstance(value, (paddle.Tensor, np.ndarray)):
            tensor = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)
            value = tensor.astype(dtypes[key]) if tensor.dtype != dtypes[key] else tensor
        cast[key] = value
    return cast


def _rename_by_prefix(state: Mapping[str, Any], renames: Mapping[str, str]) -> Dict[str, Any]:
    """Rename keys of the form `<old>_<suffix>` (and `<old>` itself) to `<new>_<suffix>`, longest `<old>`
    first; other keys are kept."""
    olds = sorted(renames, key=len, reverse=True)
    result: Dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Mapping) and key == "master_weights":
            value = _rename_by_prefix(value, renames)
        old = next((o for o in olds if key == o or key.startswith(o + "_")), None)
        result[renames[old] + key[len(old):] if old else key] = value
    return result


def portable_optimizer_state(state: Mapping[str, Any], model: paddle.nn.Layer) -> Dict[str, Any]:
    """Paddle keys optimizer state by generated parameter names (`conv2d_24.w_0_velocity_0`), which
    depend on construction order; store it under structured names (`stem.conv.weight_velocity_0`)."""
    return _rename_by_prefix(state, {param.name: name for name, param in model.named_parameters()})


def restore_optimizer_state(state: Mapping[str, Any], model: paddle.nn.Layer) -> Dict[str, Any]:
    """The inverse of `portable_optimizer_state` for `model` as built now."""
    return _rename_by_prefix(state, {name: param.name for name, param in model.named_parameters()})
