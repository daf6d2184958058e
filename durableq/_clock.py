"""Where durableq reads the time: the system clock, or a clock the caller drives.

Every due time, deadline, expiry and backoff is wall-clock epoch seconds, because it is
stored and must mean the same after a restart. Tests (and simulations) pass a
``ManualClock`` and move it with ``advance()``: the owner's timer wakes at once and
re-reads the time, so nothing waits for real seconds to pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """A source of epoch seconds that never goes back."""

    def time(self) -> float: ...


class SystemClock:
    """``time.time()``, made monotonic within the process: a stepped-back system clock
    must not reorder one producer's puts."""

    def __init__(self) -> None:
        self._last = 0.0
        self._lock = threading.Lock()

    def time(self) -> float:
        t = time.time()
        with self._lock:
            if t <= self._last:
                t = self._last + 1e-6
            self._last = t
        return t

    def __reduce__(self) -> str:
        return "SYSTEM"  # one per process: unpickles as this module's instance


SYSTEM = SystemClock()


class ManualClock:
    """A clock that moves only when told to. Owners subscribe to it, so ``advance()``
    wakes their timer; it is meant for one process (a child gets a frozen copy)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def time(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0) and wake every subscriber; returns the time."""
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward; got {seconds!r} seconds")
        with self._lock:
            self._now += seconds
            listeners = list(self._listeners)
            now = self._now
        for wake in listeners:
            wake()
        return now

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` after every ``advance``."""
        with self._lock:
            self._listeners.append(wake)

    def __getstate__(self) -> dict[str, float]:
        return {"now": self._now}

    def __setstate__(self, state: dict[str, float]) -> None:
        self.__init__(state["now"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"
