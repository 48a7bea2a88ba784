"""Output paths checked before any work is done, so that a run that could not write its results fails at
its start with one line naming the path, not at its end with a traceback."""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator, Union

from .config import ConfigError


def check_writable_file(path: str, what: str) -> None:
    """`path` can be written as a file: it is not a folder and its folder exists and takes a new file
    (tried by creating and removing one, which also covers read-only file systems)."""
    if os.path.isdir(path):
        raise ConfigError(f"{what} {path}: is a directory, expected a file path")
    try:
        if os.path.exists(path):
            with open(path, "a", encoding="utf-8"):
                pass
        else:
            with open(path, "x", encoding="utf-8"):
                pass
            os.remove(path)
    except OSError as error:
        raise ConfigError(f"{what} {path}: cannot write there ({error.strerror})") from error


def ensure_directory(path: str, what: str) -> None:
    """Create the folder `path` (and its parents) unless it exists, as a ConfigError naming `what` when
    that is impossible (a file in the way, no permission)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{what}: cannot create directory {path} ({error.strerror})") from error


@contextlib.contextmanager
def replaced_atomically(path: Union[str, "os.PathLike[str]"]) -> Iterator[str]:
    """A temporary path beside `path` for the block to write; renamed onto `path` in one step when the block
    succeeds and removed when it fails, so `path` is always either the old complete file or the new one."""
    path = os.fspath(path)
    temporary = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def replace_directory(new: str, target: str) -> None:
    """Move the finished folder `new` to `target`, replacing a previous `target` as a whole: at every moment
    `target` is the old folder or the new one (or, for an instant between two renames, absent)."""
    if not os.path.exists(target):
        os.replace(new, target)
        return
    old = f"{target}.old-{os.getpid()}"
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
