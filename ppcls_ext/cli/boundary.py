"""What every command line does at its boundary: an error it reports (`errors.REPORTED`) is one line on
stderr, `error: ...`, and the exit status of its class (`errors.exit_status`); an inference run in which
images failed says how many."""
from __future__ import annotations

import sys
from typing import Sequence

from ..errors import exit_status


def error_line(error: BaseException) -> str:
    """The message of a user error as one line. An error re-raised from a DataLoader worker carries the
    worker's traceback in its message; its last line is the error itself."""
    text = str(error).strip()
    if "Traceback (most recent call last)" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def report(error: BaseException) -> int:
    """Print `error: <its one line>` on stderr; returns the exit status of its class."""
    print(f"error: {error_line(error)}", file=sys.stderr)
    return exit_status(error)


def report_failures(results: Sequence[dict]) -> int:
    """Print 'N of M images failed' on stderr when any image failed (its result is an 'error' entry);
    the exit status: 2 when every image failed, else 0."""
    failed = sum("error" in result for result in results)
    if not failed:
        return 0
    every = failed == len(results)
    print(f"{'error' if every else 'warning'}: {failed} of {len(results)} images failed (see their 'error' entries)",
          file=sys.stderr)
    return 2 if every else 0
