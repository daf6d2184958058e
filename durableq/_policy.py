"""Pure failure policy: what happens to a message after a failed attempt.

Budgets are per cause, so a flaky network call and a task that kills its worker are not
handled alike: ``retries`` counts exceptions (and nacks), ``max_attempts`` counts deliveries
whose process died, ``timeout_retries`` counts timeouts. Each retry waits an exponential
backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter") and
demotes the message one band unless ``demote=False``. Stores call ``decide`` inside the
transaction that applies it, so the decision and its effect are one atomic step.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from ._records import Failure, LeaseToken, Priority

ERROR: Final = "error"
CRASH: Final = "crash"
TIMEOUT: Final = "timeout"
CAUSES: Final = (ERROR, CRASH, TIMEOUT)


def _budget(name: str, value: int | None) -> None:
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF
    ):
        raise ValueError(
            f"{name} must be None (unlimited) or an int from 0 to 65535, not {value!r}"
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failed attempts are retried.

    Args:
        retries: retries after an exception or a nack; ``None`` means no limit.
        max_attempts: deliveries whose consumer or worker died (crashes) before the message
            is dead; ``None`` means no limit.
        timeout_retries: retries after a timeout; ``None`` means no limit.
        backoff: base delay in seconds; attempt ``n`` waits up to ``backoff * 2 ** (n - 1)``.
        backoff_cap: the longest wait, in seconds.
        jitter: wait a uniformly random time up to that bound ("full jitter"), so many
            failing messages do not come back at the same instant.
        demote: each failed attempt moves the message one band down (HIGH, MEDIUM, LOW).
        retry_on: exception types worth retrying; any other exception makes the message
            dead at once.
    """

    retries: int | None = None
    max_attempts: int | None = None
    timeout_retries: int | None = None
    backoff: float = 0.0
    backoff_cap: float = 300.0
    jitter: bool = True
    demote: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
            object.__setattr__(self, "retry_on", retry_on)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise TypeError(f"retry_on must be exception types, not {self.retry_on!r}")
        _budget("retries", self.retries)
        _budget("timeout_retries", self.timeout_retries)
        if self.max_attempts is not None:
            _budget("max_attempts", self.max_attempts)
            if self.max_attempts < 1:
                raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts!r}")
        for name in ("backoff", "backoff_cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")

    def allows(self, cause: str, count: int) -> bool:
        """Whether the ``count``-th failure of this cause may be retried."""
        if cause == CRASH:
            return self.max_attempts is None or count < self.max_attempts
        limit = self.timeout_retries if cause == TIMEOUT else self.retries
        return limit is None or count <= limit

    def delay(self, count: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``count`` (1-based)."""
        if self.backoff <= 0:
            return 0.0
        bound = min(self.backoff_cap, self.backoff * 2.0 ** min(count - 1, 64))
        return (rng or random).uniform(0.0, bound) if self.jitter else bound


#: The queue's default: nacked and crashed messages come back at once, without limit.
QUEUE_DEFAULT: Final = RetryPolicy()


class Verdict(NamedTuple):
    """What became of a failed attempt."""

    retry: bool  #: back to ready (or scheduled); False: dead
    due: float  #: when it is deliverable again (retries only)
    priority: int  #: its band from now on
    failures: int  #: failures of this cause so far, this one included


class FailedAttempt(NamedTuple):
    """A failed delivery handed to ``Store.fail``: what failed, why, and under which policy."""

    token: LeaseToken
    cause: str  #: ERROR, CRASH or TIMEOUT
    policy: RetryPolicy
    failure: Failure | None = None  #: logged when given
    retryable: bool = True  #: False: the exception is not one the policy retries
    delay: float | None = None  #: explicit wait (``nack(delay=...)``) instead of the backoff
    #: Kept as the final outcome if the message ends dead; a callable gets the failure
    #: count of this cause (a crash's outcome says how many crashes it took).
    result: bytes | Callable[[int], bytes] | None = None


def decide(
    policy: RetryPolicy,
    *,
    cause: str,
    count: int,
    retryable: bool,
    delay: float | None,
    priority: int,
    due: float,
    now: float,
    rng: random.Random | None = None,
) -> Verdict:
    """The verdict on the ``count``-th failure of ``cause`` for a message in ``priority``
    that was due at ``due``. An explicit ``delay`` (``nack(delay=...)``) replaces the backoff;
    a retry without a wait keeps the message's place in its band."""
    if not (retryable and policy.allows(cause, count)):
        return Verdict(False, due, priority, count)
    if policy.demote:
        priority = min(priority + 1, int(Priority.LOW))
    wait = policy.delay(count, rng) if delay is None else delay
    return Verdict(True, now + wait if wait > 0 else due, priority, count)


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history (done and expired messages) and failure log a queue keeps.

    ``count``: the newest N; ``age``: seconds; either may be ``None`` (no limit of that
    kind); whichever limit is hit first drops the oldest. Dead letters are kept until
    purged, whatever this says: they wait for someone to look at them.
    """

    count: int | None = 10_000
    age: float | None = 7 * 86_400.0

    @property
    def keeps(self) -> bool:
        return self.count != 0 and self.age != 0

    @classmethod
    def of(cls, value: Any) -> Retention:
        """From ``history=``: a Retention, a count (int; 0 keeps none), an age (seconds as a
        float, or a timedelta), a ``(count, age)`` pair, or None (keep everything)."""
        if isinstance(value, Retention):
            return value
        if value is None:
            return cls(None, None)
        if isinstance(value, bool):
            raise TypeError("history must be a count, an age, (count, age) or None, not a bool")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"history count must be >= 0, not {value!r}")
            return cls(value, None if value else 0.0)
        if isinstance(value, datetime.timedelta):
            value = value.total_seconds()
        if isinstance(value, float):
            if not value >= 0:
                raise ValueError(f"history age must be >= 0 seconds, not {value!r}")
            return cls(None, value)
        if isinstance(value, tuple) and len(value) == 2:
            count, age = cls.of(value[0]), cls.of(value[1])
            return cls(count.count, age.age)
        raise TypeError(
            f"history must be a count, an age (seconds or timedelta), (count, age) or None, "
            f"not {value!r}"
        )


#: The default ``history=``: 10,000 messages or 7 days, whichever is smaller.
DEFAULT_RETENTION: Final = Retention()
