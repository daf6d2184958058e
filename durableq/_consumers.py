"""The dispatcher's view of its consumers, and how it deals messages among them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from . import _wire as w
from ._records import LeaseToken
from ._wakeup import FrameReader

T = TypeVar("T")


@dataclass(eq=False)
class Consumer:
    conn: Connection | None
    pid: int = 0
    authed: bool = False
    held: dict[int, LeaseToken] = field(default_factory=dict)
    waiting: bool = False
    credit: int = 0
    nowait: bool = False
    said_bye: bool = False
    reader: FrameReader | None = None  # once it said hello: its frames, off ``conn``

    def send(self, frame: tuple[Any, ...]) -> None:
        if self.conn is None:
            raise OSError("orphaned leases have no connection")
        w.send(self.conn, frame)


@dataclass
class Counters:
    delivered: int = 0
    acked: int = 0
    nacked: int = 0
    stale_acks: int = 0
    redelivered_after_crash: int = 0
    expired_leases: int = 0


def share(items: Sequence[T], credits: Sequence[int]) -> list[list[T]]:
    """Deal ``items`` round-robin to consumers, none past its credit.

    Every item goes to someone as long as ``len(items) <= sum(credits)`` (the lease asked
    for no more): a small backlog spreads over the waiting consumers instead of filling
    the first one's buffer.
    """
    hands: list[list[T]] = [[] for _ in credits]
    open_seats = [i for i, credit in enumerate(credits) if credit > 0]
    k = 0
    for item in items:
        if not open_seats:
            raise ValueError(f"{len(items)} items for credits summing to {sum(credits)}")
        k %= len(open_seats)
        seat = open_seats[k]
        hands[seat].append(item)
        if len(hands[seat]) >= credits[seat]:
            del open_seats[k]
        else:
            k += 1
    return hands
