"""Output paths checked before any work is done, so that a run that could not write its results fails at
its start with one line naming the path, not at its end with a traceback; and files written whole or not
at all, so that a write that fails midway (disk full, file-size limit, read-only folder) leaves the old
file, or none, and one line naming the path and the reason."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import Callable, Iterator, Optional, Union

from .config import ConfigError
from .errors import InternalError, UserError

#: errno values that only a write can raise: an OSError carrying one is a failed write wherever it comes from
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}
_REASONS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "the file-size limit was reached (ulimit -f)",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded"}


class WriteError(UserError, OSError):
    """An output could not be written completely (the old file, if any, was kept); the message is one line
    naming the file and the reason."""


class IncompleteWrite(InternalError, OSError):
    """A written file is not what was written (shorter, or reading back differently): a writer that did
    not report its failure; `writing` turns it into a WriteError."""


def write_reason(error: OSError) -> str:
    """Why a write failed, in words (the file-size limit and read-only file systems named as such)."""
    return _REASONS.get(error.errno, error.strerror or str(error))


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
            _create_and_remove(path)
    except OSError as error:
        raise ConfigError(f"{what} {path}: cannot write there ({write_reason(error)})") from error


def _create_and_remove(path: str) -> None:
    with open(path, "x", encoding="utf-8"):
        pass
    os.remove(path)


def ensure_directory(path: str, what: str) -> None:
    """Create the folder `path` (and its parents) unless it exists, as a ConfigError naming `what` when
    that is impossible (a file in the way, no permission)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{what}: cannot create directory {path} ({error.strerror})") from error


def check_writable_directory(path: str, what: str) -> None:
    """The folder `path` exists (created if need be) and takes new files: one is really created and
    removed, since permissions alone do not tell (a read-only mount, root, ACLs)."""
    ensure_directory(path, what)
    try:
        _create_and_remove(os.path.join(path, f".write-test-{os.getpid()}"))
    except OSError as error:
        raise ConfigError(f"{what}: cannot write in {path} ({write_reason(error)})") from error


@contextlib.contextmanager
def writing(path: Union[str, "os.PathLike[str]"], what: str, kept: str = "the file already there, if any, is kept"
            ) -> Iterator[None]:
    """A block that writes `path` (a file or a folder's files): an OSError of a failed write inside it
    becomes a WriteError naming `what`, `path`, the reason and what was `kept`. Other OSErrors (a file to
    read that is missing, a permission error about another file) pass through unchanged."""
    path = os.fspath(path)
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        if isinstance(error, IncompleteWrite):
            reason = str(error)
        elif error.errno in WRITE_ERRNOS or (error.errno in (errno.EACCES, errno.EPERM) and _names_output(error, path)):
            reason = write_reason(error)
        else:
            raise
        raise WriteError(f"{what}: cannot write {path}: {reason}" + (f"; {kept}" if kept else "")) from error


def _names_output(error: OSError, path: str) -> bool:
    """Whether a permission error is about `path` (or a file inside or beside it), not about a file read."""
    names = [os.path.abspath(os.fspath(name)) for name in (error.filename, error.filename2) if name is not None]
    root = os.path.dirname(os.path.abspath(path))
    return any(name == root or name.startswith(root + os.sep) for name in names)


def check_size(path: str, expected: int) -> None:
    """`path` holds `expected` bytes, else IncompleteWrite (the write was cut short)."""
    size = os.path.getsize(path)
    if size != expected:
        raise IncompleteWrite(f"the write was cut short ({size} of {expected} bytes reached the disk)")


@contextlib.contextmanager
def replaced_atomically(path: Union[str, "os.PathLike[str]"], what: Optional[str] = None,
                        verify: Optional[Callable[[str], None]] = None) -> Iterator[str]:
    """A temporary path beside `path` for the block to write; renamed onto `path` in one step when the block
    succeeds and removed when it fails, so `path` is always either the old complete file or the new one.
    `verify(temporary)` checks the written file before the rename (raise to keep the old one); with
    `what`, a failed write is a WriteError naming it (see `writing`)."""
    path = os.fspath(path)
    temporary = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.partial")
    try:
        with writing(path, what) if what else contextlib.nullcontext():
            yield temporary
            if verify is not None:
                verify(temporary)
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


def write_file_atomically(path: str, data: Union[str, bytes], what: str) -> None:
    """Write `data` (text as UTF-8) to `path` whole or not at all: flushed to disk, its size checked and
    the bytes read back before it replaces the old file; a failed write is one WriteError line."""
    content = data.encode("utf-8") if isinstance(data, str) else data

    def complete(temporary: str) -> None:
        check_size(temporary, len(content))
        with open(temporary, "rb") as f:
            if f.read() != content:
                raise IncompleteWrite("the file does not read back as written")

    with replaced_atomically(path, what, verify=complete) as temporary:
        with open(temporary, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
