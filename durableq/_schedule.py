"""When and in which band a message is delivered: priority names and due times, checked
where the user passes them.

Delivery order is (priority, due time, id). An immediate put is due when it is put, so a
scheduled message that came due at 9:00 goes ahead of one put at 9:05 in its band;
``front=True`` makes a message due "before everything" (minus its put time: the newest
front message leads).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from ._clock import SYSTEM, Clock
from ._records import Priority

_NAMES = {p.name.lower(): p for p in Priority}
#: Default ``deadline_window``: a message this close to its deadline is delivered as HIGH.
DEADLINE_WINDOW = 300.0


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


def _epoch(name: str, value: Any) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()  # naive datetimes are local time, as in Python
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{name} must be a datetime or epoch seconds, not {type(value).__name__}")


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def due_of(
    not_before: dt.datetime | float | int | None = None,
    delay: float | int | None = None,
    front: bool = False,
    clock: Clock = SYSTEM,
) -> float:
    """The due time of a message put now (epoch seconds; negative for ``front``)."""
    if not_before is not None and delay is not None:
        raise ValueError("pass not_before= or delay=, not both")
    if front and (not_before is not None or delay is not None):
        raise ValueError("front=True delivers a message next in its band; it cannot be scheduled")
    t = clock.time()
    if front:
        return -t
    if delay is not None:
        return t + _seconds("delay", delay)
    if not_before is None:
        return t
    return max(t, _epoch("not_before", not_before))


class Timing(NamedTuple):
    """Where and when a message is filed: the store's ``put_many`` keywords."""

    priority: int
    due: float
    deadline: float | None = None
    bump: float | None = None
    expires: float | None = None

    def event(self) -> float | None:
        """The earliest later change of state: the bump to HIGH or the expiry."""
        times = [t for t in (self.bump, self.expires) if t is not None]
        return min(times, default=None)


def timing_of(
    *,
    priority: Any = None,
    not_before: Any = None,
    delay: Any = None,
    front: bool = False,
    deadline: Any = None,
    ttl: Any = None,
    expires_at: Any = None,
    window: float = DEADLINE_WINDOW,
    clock: Clock = SYSTEM,
) -> Timing:
    """Check every scheduling option of one put, naming the bad one, and file it."""
    band = priority_of(priority)
    due = due_of(not_before, delay, front, clock)
    now = clock.time()
    if ttl is not None and expires_at is not None:
        raise ValueError("pass ttl= or expires_at=, not both")
    expires = None
    if ttl is not None:
        expires = now + _seconds("ttl", ttl)
    elif expires_at is not None:
        expires = _epoch("expires_at", expires_at)
    end = None if deadline is None else _epoch("deadline", deadline)
    bump = None
    if end is not None:
        bump = end - window
        if bump <= now:
            band, bump = Priority.HIGH, None  # already inside its window
    return Timing(int(band), due, end, bump, expires)
