"""An exclusive inter-process lock on a store directory (``fcntl.flock`` on ``<dir>/.lock``).

The kernel drops a flock when its holder dies (even by ``kill -9``), so a crashed
writer never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from ..errors import StoreLockedError, StoreReadOnlyError

LOCK_NAME = ".lock"
#: errors that mean "this directory cannot be written" (read-only mount, no permission)
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def read_only_error(directory: Path, doing: str, exc: OSError | None = None) -> StoreReadOnlyError:
    """The one message for work that needs a write on a read-only store."""
    why = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
    return StoreReadOnlyError(
        f"store at {directory} is read-only{why}; {doing} needs a write",
        hint="fully cached work (embed of cached items, train, eval, predict, cache info/verify/search) runs "
             "read-only; for this, remount it read-write or point HEADSTART_HOME (--store) at a writable copy")


class StoreLock:
    """``with StoreLock(dir, timeout):`` holds the directory's write lock."""

    def __init__(self, directory: Path, timeout: float = 60.0, poll: float = 0.05) -> None:
        self.path = Path(directory) / LOCK_NAME
        self.timeout = timeout
        self.poll = poll
        self._fd: int | None = None

    def acquire(self) -> "StoreLock":
        """Take the lock (:class:`StoreLockedError` after ``timeout``; :class:`StoreReadOnlyError` when the
        directory cannot be written, so nobody can be writing it either)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in READ_ONLY_ERRNOS:
                raise read_only_error(self.path.parent, "taking the write lock", exc) from None
            raise
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise StoreLockedError(
                        f"feature store {self.path.parent} is locked by another writer{holder}; "
                        f"waited {self.timeout:g} s",
                        hint="wait for the other `headstart` process to finish, or pass a longer lock timeout",
                    ) from None
                time.sleep(self.poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(directory: Path) -> bool:
    """True when some process holds ``directory``'s write lock right now."""
    path = Path(directory) / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
