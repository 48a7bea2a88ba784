"""Training and evaluation stop between steps, and on several processes together. A rank whose data fails
(a DataError: unreadable images in a row, a batch operator refusing a batch) or that receives Ctrl-C /
SIGTERM would otherwise leave the others blocked in their next collective until it times out (gloo then
aborts the process with a C++ traceback). Before each step the ranks agree that every one has its batch
and none was signalled: one all-reduce of two ints on the CPU (a gloo group of its own, so that on GPUs it
never waits for the device). When a rank's data failed, a second all-reduce carries its message, and every
rank stops with that line; when a rank was signalled, every rank stops as interrupted. One process checks
the same between its steps, without collectives (see `interrupts`)."""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from ..data.dataset import DataError
from ..interrupts import pending, stopped_by

MESSAGE_BYTES = 1024  # the longest message passed to the other ranks (UTF-8)
_GROUP: dict = {}  # the gloo group, created once per process, at the same point on every rank
_END = object()


def _cpu_group():
    if "gloo" not in _GROUP:
        _GROUP["gloo"] = dist.new_group(backend="gloo")
    return _GROUP["gloo"]


def agreed_batches(loader: Any, world_size: int) -> Iterator[Any]:
    """The batches of `loader`, each only once this process (and, with `world_size > 1`, every rank: a
    collective call, every rank iterates its loader alike and they agree once more at the end) has its
    batch and no signal is pending. The loader's iterator is closed when iteration stops early (an error,
    an interrupt), which stops its worker processes."""
    group = _cpu_group() if world_size > 1 else None
    batches = iter(loader)
    try:
        while True:
            failure: Optional[DataError] = None
            try:
                batch = next(batches)
            except StopIteration:
                batch = _END
            except DataError as error:
                failure = error
            except Exception:
                if pending() is None:
                    raise
                batch = _END  # the signal ended the loader's workers too (sent to the process group)
            if group is not None:
                agree(None if failure is None else str(failure), group, world_size)
            elif failure is not None:
                raise failure
            elif pending() is not None:
                raise stopped_by(pending())
            if batch is _END:
                return
            yield batch
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def agree(failure: Optional[str], group: Any, world_size: int) -> None:
    """Every rank says whether its step can go on (`failure` None, no signal pending) or why not. Any
    failure raises a DataError on every rank (the failed rank's message, on the others with `(read by
    process N)`); else any signal raises Interrupted on every rank."""
    flags = paddle.to_tensor([0 if failure is None else 1, pending() or 0], dtype="int32", place=paddle.CPUPlace())
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    failed, signum = (int(value) for value in flags.numpy())
    if failed:
        raise DataError(_failure_message(failure, group, world_size))
    if signum:
        raise stopped_by(signum)


def _failure_message(failure: Optional[str], group: Any, world_size: int) -> str:
    """The message of the first failed rank, as every rank should print it (a second collective)."""
    table = np.zeros((world_size, MESSAGE_BYTES), dtype="int32")
    if failure is not None:
        encoded = np.frombuffer(failure.encode("utf-8")[:MESSAGE_BYTES], dtype=np.uint8)
        table[dist.get_rank(), :len(encoded)] = encoded
    messages = paddle.to_tensor(table, place=paddle.CPUPlace())
    dist.all_reduce(messages, group=group)  # each rank fills its own row: the sum is every rank's message
    if failure is not None:
        return failure
    rows = messages.numpy()
    first = next(rank for rank in range(world_size) if rows[rank].any())
    text = bytes(rows[first].astype(np.uint8)).rstrip(b"\0").decode("utf-8", "ignore")
    return f"{text} (read by process {first})"
