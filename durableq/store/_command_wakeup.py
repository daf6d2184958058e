"""Cross-process wakeups for command consumers: one FIFO per watcher in a directory.

A watcher makes a FIFO named after a hash of its target (``<hash>.<pid>.<n>``), holds
both ends open (the write end keeps ``poll`` from reporting end-of-file) and waits for a
byte. A producer, after its commit, writes one byte to each FIFO of the target: open with
``O_NONBLOCK`` (never blocks: a full FIFO already means "wake up"), write, close. ``ENXIO``
says nobody reads it any more (its process died), so the producer removes it.

FIFOs, not unix sockets: their paths have no 108-byte limit, and a dead watcher's FIFO is
recognised at the next poke. Producers cache the directory listing by its mtime, trusting
it only once the mtime is older than ``RACY_NS`` (file times are coarse: a FIFO created in
the same tick as the cached listing would otherwise be missed, as git's "racy" index
entries would). A watcher is renamed into place only once open, so a producer never
mistakes a new one for a dead one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import select
import threading
import time
from types import TracebackType
from typing import Final

#: Directory mtimes newer than this are not trusted for the cached listing.
RACY_NS: Final = 50_000_000
_serial = itertools.count(1)


def _prefix(target: str) -> str:
    return hashlib.blake2b(target.encode(), digest_size=10).hexdigest()


class FifoWakeups:
    """The watchers of one directory, as producers see them."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._listing: tuple[int, tuple[str, ...]] = (-1, ())

    def watch(self, target: str) -> FifoWatch:
        return FifoWatch(self.directory, _prefix(target))

    def poke(self, targets: set[str] | list[str]) -> None:
        """Wake every watcher of ``targets``; cheap when nobody watches."""
        names = self._names()
        if not names:
            return
        prefixes = {_prefix(t) for t in targets}
        for name in names:
            if name.split(".", 1)[0] in prefixes:
                self._poke_one(os.path.join(self.directory, name))

    def _names(self) -> tuple[str, ...]:
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            return ()
        with self._lock:
            cached_mtime, names = self._listing
            if mtime == cached_mtime:
                return names
        names = tuple(n for n in os.listdir(self.directory) if not n.startswith("."))
        if time.time_ns() - mtime > RACY_NS:
            with self._lock:
                self._listing = (mtime, names)
        return names

    @staticmethod
    def _poke_one(path: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader: its watcher died without cleaning up
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            return  # ENOENT: it closed meanwhile
        try:
            os.write(fd, b"\0")
        except BlockingIOError:
            pass  # full of wakeups already
        finally:
            os.close(fd)


class FifoWatch:
    """One watcher's FIFO; see the module docstring."""

    def __init__(self, directory: str, prefix: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        name = f"{prefix}.{os.getpid()}.{next(_serial)}"
        temp = os.path.join(directory, f".{name}")
        os.mkfifo(temp, 0o600)
        try:
            self._r = os.open(temp, os.O_RDONLY | os.O_NONBLOCK)
            self._w = os.open(temp, os.O_WRONLY | os.O_NONBLOCK)
            self.path = os.path.join(directory, name)
            os.rename(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        self._pid = os.getpid()
        self._poll = select.poll()
        self._poll.register(self._r, select.POLLIN)

    def fileno(self) -> int:
        """The read end, for a caller that polls it among other descriptors."""
        return self._r

    def drain(self) -> None:
        """Read the wakeups that came (after ``fileno()`` polled readable)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 4096):
                pass

    def wait(self, timeout: float | None) -> bool:
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        if not self._poll.poll(ms):
            return False
        self.drain()
        return True

    def close(self) -> None:
        if self._r < 0:
            return
        if self._pid == os.getpid():  # a forked child's copy must not remove the parent's
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._r)
        os.close(self._w)
        self._r = self._w = -1

    def __enter__(self) -> FifoWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
