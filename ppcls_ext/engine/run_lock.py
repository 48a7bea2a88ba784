"""One training per output folder. Rank 0 holds `<output folder>/train.lock` while it trains: an OS lock
on the file (POSIX `lockf`, which the kernel drops when the process dies, also on NFS) and, inside it,
the holder's PID, host and start time for the messages. A second training in the folder is refused in one
line (two runs would mix their checkpoints there); a lock file that a killed run left behind is taken over
with a notice. Where the file system has no locks, a live PID on this host is what refuses."""
from __future__ import annotations

import atexit
import datetime
import errno
import os
import re
import socket
from typing import Dict, Optional

from ..config import ConfigError
from ..output_paths import write_reason
from .log import logger

try:
    import fcntl
except ImportError:  # Windows: the PID in the file decides alone
    fcntl = None

LOCK_FILE = "train.lock"
_HOLDER = re.compile(r"pid=(?P<pid>\d+) host=(?P<host>\S+)(?: started=(?P<started>\S+))?")
_HELD: Dict[str, "RunLock"] = {}  # by lock path: this process's locks (a second engine in one process shares one)


def _os_lock(fd: int) -> Optional[bool]:
    """Lock the open file exclusively without waiting: True, False when another process holds it, None
    when the file system offers no locks."""
    if fcntl is None:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return False
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _holder(text: str) -> Optional[dict]:
    found = _HOLDER.search(text)
    return found.groupdict() if found else None


def _describe(holder: Optional[dict]) -> str:
    if holder is None:
        return "an unknown process"
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"PID {holder['pid']} on host {holder['host']}{since}"


class RunLock:
    """The lock of one output folder, held by this process until `release()` (or its exit)."""

    def __init__(self, path: str, fd: int):
        self.path, self.fd, self.users = path, fd, 1

    @classmethod
    def acquire(cls, directory: str) -> "RunLock":
        """Take the lock of `directory` or raise a ConfigError naming the training that holds it."""
        path = os.path.realpath(os.path.join(directory, LOCK_FILE))
        if path in _HELD:
            _HELD[path].users += 1
            return _HELD[path]
        for _ in range(10):  # a holder releasing meanwhile removes the file: lock the file that is there
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise ConfigError(f"Global.output_dir: cannot write in {directory} ({write_reason(error)})") from error
            locked = _os_lock(fd)
            previous = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            if locked is False:
                os.close(fd)
                cls._refuse(directory, path, _holder(previous))
            try:
                same_file = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)
        else:
            raise ConfigError(f"Global.output_dir: could not take the lock {path}: it keeps changing")
        lock = cls(path, fd)
        try:
            lock._take_over(directory, _holder(previous), locked)
        except BaseException:
            os.close(fd)
            raise
        _HELD[path] = lock
        return lock

    @staticmethod
    def _refuse(directory: str, path: str, holder: Optional[dict]) -> None:
        raise ConfigError(f"Global.output_dir: {directory} is in use by another training ({_describe(holder)}; lock "
                          f"file {path}): two runs would mix their checkpoints there; wait for it to end or give "
                          f"another -o Global.output_dir=...")

    def _take_over(self, directory: str, holder: Optional[dict], locked: Optional[bool]) -> None:
        """Write this process into the lock file; a holder named there that is gone is announced."""
        here = socket.gethostname()
        if holder is not None and int(holder["pid"]) != os.getpid():
            same_host = holder["host"] == here
            if locked is None and (not same_host or _alive(int(holder["pid"]))):
                self._refuse(directory, self.path, holder)  # no OS locks: a live (or unknowable) holder wins
            gone = "is no longer running" if same_host and not _alive(int(holder["pid"])) else "no longer holds it"
            logger.warning("%s: taking over the lock of a training that ended without releasing it (%s, which %s)",
                           self.path, _describe(holder), gone)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        content = f"pid={os.getpid()} host={here} started={started}\n".encode("utf-8")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, content, 0)

    def release(self) -> None:
        """Give the lock up (the last of this process's users removes the file)."""
        if self.fd is None:
            return
        self.users -= 1
        if self.users > 0:
            return
        try:
            os.remove(self.path)
        except OSError:
            pass  # a folder that became read-only: the next run takes the file over
        os.close(self.fd)
        self.fd = None
        _HELD.pop(self.path, None)


class NoLock:
    """What ranks other than 0 hold: rank 0's lock covers the run."""

    def release(self) -> None:
        pass


def hold_output_folder(directory: str, rank: int):
    """The lock of `directory` for the training of this process (a no-op on ranks other than 0)."""
    return RunLock.acquire(directory) if rank == 0 else NoLock()


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD.values()):
        lock.users = 1
        lock.release()
