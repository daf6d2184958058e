"""A self-pipe that wakes a thread blocked in ``multiprocessing.connection.wait``."""

from __future__ import annotations

import os
import threading


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
