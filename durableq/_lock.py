"""The one-owner lock: a POSIX record lock on ``owner.lock`` in the queue directory.

``lockf`` locks belong to the process, are not inherited by fork() and vanish with the
process however it dies, so a SIGKILLed owner never leaves a stale lock behind. They are
per process, so a registry also refuses a second owner inside one process.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading

from ._errors import QueueLocked

_owned: set[str] = set()
_owned_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # lockf locks are not inherited by fork(), so neither is our record of them; and the
    # lock guarding it may have been held by a thread that does not exist in the child.
    global _owned_lock
    _owned.clear()
    _owned_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class OwnerLock:
    """Held by the process that owns a queue directory, for as long as it owns it."""

    def __init__(self, directory: str, *, wait: bool) -> None:
        self.path = os.path.join(directory, "owner.lock")
        self.directory = directory
        with _owned_lock:
            if directory in _owned:
                raise QueueLocked(directory, os.getpid())
            _owned.add(directory)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = self._read_pid()
                os.close(self._fd)
                raise QueueLocked(directory, owner) from None
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, str(os.getpid()).encode(), 0)
        except BaseException:
            with _owned_lock:
                _owned.discard(directory)
            raise

    def _read_pid(self) -> int | None:
        try:
            return int(os.pread(self._fd, 32, 0) or b"0") or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        with _owned_lock:
            if self.directory not in _owned:
                return
            _owned.discard(self.directory)
        os.close(self._fd)  # closing drops the lockf lock


def owner_status(directory: str) -> tuple[int | None, bool]:
    """The pid recorded by the current or last owner of ``directory``, and whether a live
    process holds the lock now.

    Never opens the lock file in the process that owns it: closing any descriptor of a
    file drops every lockf lock the process holds on it.
    """
    directory = os.path.abspath(directory)
    with _owned_lock:
        if directory in _owned:
            return os.getpid(), True
    try:
        fd = os.open(os.path.join(directory, "owner.lock"), os.O_RDONLY)
    except OSError:
        return None, False
    try:
        pid = int(os.pread(fd, 32, 0) or b"0") or None
        # F_GETLK asks who would block a write lock, without taking any lock ourselves.
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))[0]
        return pid, l_type != fcntl.F_UNLCK
    except (OSError, ValueError):
        return None, False
    finally:
        os.close(fd)
