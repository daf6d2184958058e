"""When and in which band a message is delivered: priority names and due times, checked
where the user passes them.

Delivery order is (priority, due time, id). An immediate put is due when it is put, so a
scheduled message that came due at 9:00 goes ahead of one put at 9:05 in its band;
``front=True`` makes a message due "before everything" (minus its put time: the newest
front message leads).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from ._records import Priority

_NAMES = {p.name.lower(): p for p in Priority}
_last = 0.0
_last_lock = threading.Lock()


def priority_of(value: Any) -> Priority:
    """``"high"``/``"medium"``/``"low"`` (any case), a ``Priority`` or its int; None: MEDIUM."""
    if value is None:
        return Priority.MEDIUM
    if isinstance(value, str) and value.lower() in _NAMES:
        return _NAMES[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2:
        return Priority(value)
    raise ValueError(
        f"priority must be 'high', 'medium', 'low' or a durableq.Priority, not {value!r}"
    )


def now() -> float:
    """Wall-clock time that never goes back within this process, so that due times keep
    each producer's puts in order even if the system clock is stepped back."""
    global _last
    t = time.time()
    with _last_lock:
        if t <= _last:
            t = _last + 1e-6
        _last = t
    return t


def due_of(
    not_before: dt.datetime | float | int | None = None,
    delay: float | int | None = None,
    front: bool = False,
) -> float:
    """The due time of a message put now (epoch seconds; negative for ``front``)."""
    if not_before is not None and delay is not None:
        raise ValueError("pass not_before= or delay=, not both")
    if front and (not_before is not None or delay is not None):
        raise ValueError("front=True delivers a message next in its band; it cannot be scheduled")
    t = now()
    if front:
        return -t
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
            raise ValueError(f"delay must be a number of seconds >= 0, not {delay!r}")
        return t + float(delay)
    if not_before is None:
        return t
    if isinstance(not_before, dt.datetime):
        return max(t, not_before.timestamp())  # naive datetimes are local time, as in Python
    if isinstance(not_before, int | float) and not isinstance(not_before, bool):
        return max(t, float(not_before))
    raise TypeError(
        f"not_before must be a datetime or epoch seconds, not {type(not_before).__name__}"
    )
