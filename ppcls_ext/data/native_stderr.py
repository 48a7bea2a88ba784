"""Read what native code writes to file descriptor 2 during a call: libjpeg (inside OpenCV) reports
recoverable data errors, such as a scan that ends early, only as a line there and still returns an
image, with the missing part made up."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from typing import Callable, Iterator, List, Optional


class NativeStderr:
    """Redirects file descriptor 2 into a temporary file for the length of a `capture()` block. Lines
    that `keep` selects are handed to the caller; all others are written back to the real stderr, so
    nothing else is lost. The descriptor is process-wide: captures are serialised by a lock, and a
    forked child (a DataLoader worker) starts with a fresh lock and file."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._file = None

    @contextlib.contextmanager
    def capture(self, keep: Callable[[str], bool]) -> Iterator[List[str]]:
        """The list yielded receives, when the block ends, the lines written to descriptor 2 inside it
        for which `keep` is true. Without a descriptor 2 to redirect, nothing is captured."""
        kept: List[str] = []
        with self._lock:
            saved = self._redirect()
            try:
                yield kept
            finally:
                if saved is not None:
                    kept += self._restore(saved, keep)

    def _redirect(self) -> Optional[int]:
        if sys.stderr is not None:
            sys.stderr.flush()  # Python's pending output goes to the real stderr first
        try:
            saved = os.dup(2)
        except OSError:  # descriptor 2 is closed
            return None
        if self._file is None:
            self._file = tempfile.TemporaryFile()
        self._file.seek(0)
        self._file.truncate()
        os.dup2(self._file.fileno(), 2)
        return saved

    def _restore(self, saved: int, keep: Callable[[str], bool]) -> List[str]:
        os.dup2(saved, 2)
        os.close(saved)
        self._file.seek(0)
        lines = self._file.read().decode("utf-8", "replace").splitlines(keepends=True)
        passed_on = "".join(line for line in lines if not keep(line.strip()))
        if passed_on:
            os.write(2, passed_on.encode("utf-8"))
        return [line.strip() for line in lines if keep(line.strip())]


native_stderr = NativeStderr()
