"""Ctrl-C (SIGINT) and SIGTERM end a tool cleanly: the signal becomes an `Interrupted` exception that the
command line reports in one line (exit status 128 + the signal's number: 130, 143), so the code on its way
out (removing staging folders, stopping DataLoader workers, releasing the output folder's lock) runs as
for any other error.

Raised from the signal handler, it would hit wherever the main thread is: inside Paddle's DataLoader (whose
workers the same Ctrl-C ends, so its queue fails too), inside a fork callback that swallows it, or in one
rank of several while the others wait for it in a collective. So once training or evaluation runs
(`stop_between_steps()`), a signal is only recorded, and the loops stop at their next step
(`engine/rank_agreement.py`: every rank at the same one); a block that must not be cut in two (a
checkpoint save) defers it to its end. A repeated SIGTERM while stopping is ignored
(`paddle.distributed.launch` sends up to three in a row); a second Ctrl-C stops at once, abandoning a
deferred block (a checkpoint save left half-done is finished or discarded as a unit at the next start)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was stopped by a signal. A BaseException, as KeyboardInterrupt is: `except Exception`
    blocks on its way out do not swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal_name(signum)}")

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return "SIGINT (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name


class _State:
    """What the handler knows: blocks deferring signals, a signal waiting for their end (or for the next
    step), one raised."""

    deferring = 0
    pending: Optional[int] = None
    raised: Optional[int] = None
    between_steps = False
    owner = 0  # the process that installed the handler


def _handle(signum: int, frame) -> None:
    if os.getpid() != _State.owner:  # a forked child (a DataLoader worker) inherited the handler
        _child_default(signum)
    if _State.raised is not None or _State.pending is not None:
        if signum == signal.SIGINT:  # a second Ctrl-C: stop now
            sys.stderr.write("interrupted again: stopping at once\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        return
    _expect_children_to_stop()
    if _State.deferring or _State.between_steps:
        _State.pending = signum
        return
    raise stopped_by(signum)


def _expect_children_to_stop() -> None:
    """A signal sent to the whole process group (a terminal's Ctrl-C, `kill -- -PGID`, the launcher) also
    ends the DataLoader workers, which Paddle's SIGCHLD handler would report as a crash (a SystemError
    raised wherever the main process is); while stopping, a child's end is no news."""
    if hasattr(signal, "SIGCHLD"):  # a handler that does nothing: SIG_DFL would make Python report a pending one
        signal.signal(signal.SIGCHLD, _ignore)


def _ignore(signum: int, frame) -> None:
    pass


def _child_default(signum: int) -> None:
    """What a forked child does without our handler: a DataLoader worker ends quietly on KeyboardInterrupt
    (Paddle's worker loop expects it, and the main process stops it anyway), so it gets one for either
    signal; any other child gets Python's default (KeyboardInterrupt for SIGINT, death for SIGTERM)."""
    from paddle.io import get_worker_info

    if signum == signal.SIGINT or get_worker_info() is not None:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def stopped_by(signum: int) -> Interrupted:
    """The Interrupted to raise for `signum` (later signals count as repeats)."""
    _State.raised, _State.pending = signum, None
    return Interrupted(signum)


def stop_between_steps() -> None:
    """From now on (training, evaluation) a signal is only recorded, for `pending()`: the loops raise it
    at their next step (on every rank at the same one)."""
    _State.between_steps = True


def pending() -> Optional[int]:
    """The signal received and not yet raised, if any."""
    return _State.pending


def raise_pending() -> None:
    """Raise a signal still pending (at the end of a run: it arrived after the last step)."""
    if _State.pending is not None:
        raise stopped_by(_State.pending)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block (entered in the main thread), SIGINT and SIGTERM raise `Interrupted` (unless the
    process was started with them ignored); the previous handlers are restored after it. Elsewhere than in
    the main thread it does nothing (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    restored = SIGNALS + ((signal.SIGCHLD,) if hasattr(signal, "SIGCHLD") else ())
    previous = {signum: signal.getsignal(signum) for signum in restored}
    for signum in SIGNALS:
        if previous[signum] is not signal.SIG_IGN:  # ignored by the caller (nohup, a background job): left so
            signal.signal(signum, _handle)
    _State.deferring, _State.pending, _State.raised, _State.between_steps = 0, None, None, False
    _State.owner = os.getpid()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a signal does not cut: a signal arriving inside it is raised as `Interrupted` when it
    ends (unless it ended with an error of its own, which then goes first; between steps: at the next
    step)."""
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1
    if not _State.deferring and not _State.between_steps:
        raise_pending()
