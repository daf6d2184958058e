"""Plain records shared by the store, the owner and the consumers."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import NamedTuple


class State(IntEnum):
    """Where a stored message is in its life. Stored as an integer: never renumber."""

    READY = 0
    SCHEDULED = 1
    HELD = 2
    IN_FLIGHT = 3
    DONE = 4
    FAILED = 5
    DEAD = 6


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
    """Message counts and lifetime totals of a store."""

    ready: int
    in_flight: int
    dead: int
    put_total: int
    acked_total: int
    scheduled: int = 0  #: stored, waiting for their due time

    def as_dict(self) -> dict[str, int]:
        """The counts as the ``stats()`` keys every queue, executor and reader share."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Fault:
    """Something that went wrong: a consumer died holding messages, the store failed, ..."""

    kind: str
    time: float
    detail: str
