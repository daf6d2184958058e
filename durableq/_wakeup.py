"""A self-pipe that wakes a thread blocked in ``multiprocessing.connection.wait``, and a
``wait`` that keeps its poll object from one call to the next."""

from __future__ import annotations

import os
import select
import struct
import threading
from collections.abc import Sequence
from typing import Any

_READY = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL


class Wakeup:
    """``fileno()`` goes in the waiter's ``wait()`` list; any thread calls ``set()``.

    Non-blocking (a full pipe already means "wake up"), and safe to ``set()`` after
    ``close()``: a closed descriptor number may already belong to another file.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._r

    def set(self) -> None:
        with self._lock:
            if self._w < 0:
                return
            try:
                os.write(self._w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wakeups already

    def clear(self) -> None:
        """Read the pending wakeups; call once ``wait()`` returned this object."""
        os.read(self._r, 4096)

    def close(self) -> None:
        with self._lock:
            if self._w >= 0:
                os.close(self._r)
                os.close(self._w)
                self._w = -1

    def forget(self) -> None:
        """``close`` in a forked child, where a thread of the parent may have held the
        lock at fork()."""
        self._lock = threading.Lock()
        self.close()


class Waiter:
    """``multiprocessing.connection.wait`` for a loop that waits on the same objects round
    after round: the poll object is built again only when the objects change, where
    ``wait`` builds and fills a selector on every call (a dispatcher's round costs more in
    that than in anything else it does for a short task).

    Objects are file descriptors (ints: process sentinels) or have ``fileno()``.
    """

    def __init__(self) -> None:
        self._objects: tuple[Any, ...] = ()
        self._poll = select.poll()
        self._by_fd: dict[int, Any] = {}

    def wait(self, objects: Sequence[Any], timeout: float | None) -> list[Any]:
        """The objects ready to read (or closed), waiting up to ``timeout`` seconds."""
        key = tuple(objects)
        if key != self._objects:
            poll = select.poll()
            by_fd = {}
            for obj in key:
                fd = obj if isinstance(obj, int) else obj.fileno()
                poll.register(fd, select.POLLIN | select.POLLPRI)
                by_fd[fd] = obj
            self._objects, self._poll, self._by_fd = key, poll, by_fd
        events = self._poll.poll(None if timeout is None else max(0.0, timeout) * 1000)
        return [self._by_fd[fd] for fd, flags in events if flags & _READY]


_SHORT, _LONG = struct.Struct("!i"), struct.Struct("!Q")


class FrameReader:
    """Reads the frames a ``multiprocessing`` ``Connection.send_bytes`` wrote, with one
    ``os.read`` for all that arrived, where ``recv_bytes`` makes two system calls per
    frame (and a thread gives up the GIL in each).

    Call ``read()`` once ``wait`` found the descriptor ready: it never blocks for the next
    frame, only for the rest of one that started arriving.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()

    def read(self) -> list[bytes]:
        """The complete frames now readable. Raises ``EOFError`` at the end of the pipe."""
        buf = self._buf
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            raise EOFError
        buf += chunk
        frames: list[bytes] = []
        pos = 0
        while True:
            need = self._frame_at(pos)
            if need is None:
                break
            head, size = need
            if len(buf) - pos - head < size:
                # A frame's first bytes came: the sender is writing the rest now.
                while len(buf) - pos - head < size:
                    more = os.read(self.fd, max(size - (len(buf) - pos - head), 1 << 16))
                    if not more:  # it died mid-frame: the next read raises EOFError
                        del buf[:pos]
                        return frames
                    buf += more
            frames.append(bytes(buf[pos + head : pos + head + size]))
            pos += head + size
        del buf[:pos]
        return frames

    def _frame_at(self, pos: int) -> tuple[int, int] | None:
        """(header length, payload length) of the frame starting at ``pos``, once its
        header is complete."""
        buf = self._buf
        if len(buf) - pos < 4:
            return None
        (size,) = _SHORT.unpack_from(buf, pos)
        if size != -1:
            return 4, size
        if len(buf) - pos < 12:
            return None
        return 12, _LONG.unpack_from(buf, pos + 4)[0]


def readable(fd: int) -> bool:
    """Whether ``fd`` has data (or its end closed) right now, in one system call."""
    poll = select.poll()
    poll.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poll.poll(0))
