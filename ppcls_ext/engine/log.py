"""PaddleClas's log format: `[YYYY/MM/DD HH:MM:SS] ppcls_ext INFO: [Train][Epoch e/E][Iter: i/N]...`,
a log file in the output directory, rank 0 only, and VisualDL scalars."""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from typing import Dict, Mapping, Optional

from ..output_paths import WriteError, write_reason, writing

logger = logging.getLogger("ppcls_ext")
_FORMAT = logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt="%Y/%m/%d %H:%M:%S")


def init_logger(log_file: Optional[str] = None, rank: int = 0) -> logging.Logger:
    """Log to stdout (and `log_file`) on rank 0; other ranks log errors only."""
    for handler in list(logger.handlers):
        if getattr(handler, "_ppcls_ext", False):
            logger.removeHandler(handler)
            handler.close()
    handlers = [logging.StreamHandler(sys.stdout)]
    if log_file is not None and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        with writing(log_file, "log file", kept=""):
            handlers.append(LogFile(log_file))
    for handler in handlers:
        handler.setFormatter(_FORMAT)
        handler._ppcls_ext = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    logger.propagate = False
    return logger


class LogFile(logging.FileHandler):
    """The run's log file. A line that cannot be written (disk full, file-size limit) stops the run with
    one WriteError line, where logging would print a traceback on stderr and carry on; the file is not
    written to again."""

    def __init__(self, path: str):
        super().__init__(path, "a", encoding="utf-8")

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        logger.removeHandler(self)
        with contextlib.suppress(OSError):  # closing flushes what could not be written, failing again
            self.close()
        raise WriteError(f"log file: cannot write {self.baseFilename}: {write_reason(error)}") from error


class AverageMeter:
    """Running average of a scalar, weighted by sample counts."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sum, self.count, self.last = 0.0, 0, 0.0

    def update(self, value: float, n: int = 1) -> None:
        self.last = float(value)
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0


def _values(values: Mapping[str, float]) -> str:
    return ", ".join(f"{key}: {value:.5f}" for key, value in values.items())


def train_line(epoch: int, epochs: int, iteration: int, iterations: int, lr_name: str, lr: float,
               values: Mapping[str, float], times: Mapping[str, AverageMeter], batch_size: int,
               eta_seconds: float) -> str:
    """One training progress line, field for field as PaddleClas prints it; `values` are the epoch's
    running means (losses, accuracies)."""
    time_msg = "s, ".join(f"{key}: {meter.avg:.5f}" for key, meter in times.items())
    batch_cost = times["batch_cost"].avg
    ips = batch_size / batch_cost if batch_cost > 0 else 0.0
    eta = datetime.timedelta(seconds=int(max(eta_seconds, 0)))
    return (f"[Train][Epoch {epoch}/{epochs}][Iter: {iteration}/{iterations}]lr({lr_name}): {lr:.8f}, "
            f"{_values(values)}, {time_msg}, ips: {ips:.5f} samples/s, eta: {eta}")


def epoch_line(mode: str, epoch: int, epochs: Optional[int], values: Mapping[str, float]) -> str:
    """The `[Avg]` summary of a training epoch or an evaluation."""
    where = f"[Epoch {epoch}/{epochs}]" if epochs is not None else f"[Epoch {epoch}]"
    return f"[{mode}]{where}[Avg]{_values(values)}"


class ScalarWriter:
    """VisualDL scalars (`Global.use_visualdl`), written by rank 0 under `<output_dir>/vdl`."""

    def __init__(self, logdir: Optional[str]):
        self._writer = None
        if logdir is not None:
            from visualdl import LogWriter

            self._writer = LogWriter(logdir=logdir)

    def add(self, values: Dict[str, float], step: int) -> None:
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag=tag, step=step, value=float(value))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
