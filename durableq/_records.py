"""Plain records shared by the store, the owner and the consumers."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, NamedTuple


class State(IntEnum):
    """Where a stored message is in its life. Stored as an integer: never renumber."""

    READY = 0
    SCHEDULED = 1
    HELD = 2
    IN_FLIGHT = 3
    DONE = 4
    FAILED = 5
    DEAD = 6
    EXPIRED = 7  #: not delivered before its ``ttl`` / ``expires_at``; never runs
    QUARANTINED = 8  #: failed its HMAC check: kept aside, never deserialized


class Priority(IntEnum):
    """Delivery bands; lower values are delivered first."""

    HIGH = 0
    MEDIUM = 1
    LOW = 2


class LeaseToken(NamedTuple):
    """Names one delivery: the message id and its attempt number (a fencing token).

    Every redelivery increments ``attempt``, so an ack carrying an older attempt is stale
    and ignored by the store.
    """

    id: int
    attempt: int


class Leased(NamedTuple):
    """A message handed out by ``Store.lease``."""

    token: LeaseToken
    payload: bytes


@dataclass(frozen=True, slots=True)
class Counts:
    """Message counts per state and lifetime totals of a store."""

    ready: int
    in_flight: int
    dead: int
    put_total: int
    acked_total: int
    scheduled: int = 0  #: stored, waiting for their due time
    done: int = 0  #: finished and kept as history
    expired: int = 0  #: not delivered before their expiry; kept as history
    late_total: int = 0  #: deliveries made after the message's deadline
    #: ready plus scheduled messages per band: ``{"high": n, "medium": n, "low": n}``
    by_priority: dict[str, int] = field(default_factory=dict)
    next_due: float | None = None  #: epoch time the next scheduled message comes due
    oldest_ready_age: float | None = None  #: seconds the oldest ready message has waited
    quarantined: int = 0  #: records that failed their HMAC check, kept aside

    def as_dict(self) -> dict[str, Any]:
        """The counts as the ``stats()`` keys every queue, executor and reader share."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Failure(NamedTuple):
    """One failed attempt, as the durable failure log keeps it."""

    time: float
    id: int  #: the message (task) id
    name: str  #: the task's function, or "" for a plain message
    attempt: int
    cause: str  #: "error" (raised or nacked), "crash" (its process died), "timeout"
    type: str  #: exception type name ("" when there was none)
    message: str
    traceback: str
    pid: int  #: the consumer or worker process, 0 when unknown


@dataclass(frozen=True, slots=True)
class Record:
    """A stored message as the reading verbs return it (``history``, ``dead_letters``)."""

    id: int
    state: State
    priority: Priority
    due: float
    attempts: int
    created: float
    finished: float | None  #: when it was acked, expired or buried
    deadline: float | None
    expires: float | None
    late: bool  #: delivered after its deadline
    body: Any  #: bytes from a store; the decoded object from a queue


@dataclass(frozen=True, slots=True)
class Fault:
    """Something that went wrong: a consumer died holding messages, the store failed, ..."""

    kind: str
    time: float
    detail: str
