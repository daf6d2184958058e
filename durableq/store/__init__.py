"""The ``Store`` protocol: bytes in, bytes out, a few atomic verbs, one transaction each.

The queue owns serialization, leases in memory and policy; a store owns only durable state.
Stores: ``DiskcacheStore`` (default, embedded SQLite through diskcache) and ``MemoryStore``
(in-process reference and benchmark baseline). Both also implement ``CommandStore``, the
per-target command state behind ``durableq.CommandQueue``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from .._records import Counts, Fault, Leased, LeaseToken, Priority


@runtime_checkable
class Store(Protocol):
    """Durable message state. Every method is atomic: it fully happens or not at all.

    ``shared`` says whether the store may be pickled into another process and used there
    directly (diskcache reopens by path); a store that is not shared is reached by other
    processes through the owner.
    """

    shared: ClassVar[bool]

    def put_many(
        self, payloads: Sequence[bytes], *, priority: int = Priority.MEDIUM, due: float = 0.0
    ) -> list[int]:
        """Commit ``payloads`` as ready messages in one transaction; return their ids in order."""
        ...

    def lease(self, owner: str, n: int, *, now: float, ttl: float) -> list[Leased]:
        """Move up to ``n`` ready messages, in (priority, due, id) order, to in-flight.

        Each lease increments the message's attempt count, which becomes its token's attempt.
        """
        ...

    def ack(self, tokens: Sequence[LeaseToken], *, results: Sequence[bytes] | None = None) -> int:
        """Finish the leased messages; stale tokens are ignored. Returns how many applied.

        ``results`` (one per token) are kept, in the same transaction, until ``forget``.
        """
        ...

    def nack(
        self,
        tokens: Sequence[LeaseToken],
        *,
        requeue: bool,
        results: Sequence[bytes] | None = None,
    ) -> int:
        """Return leased messages to ready (``requeue``) or to dead; stale tokens are ignored.

        ``results`` are kept as for ``ack`` (a dead message's final outcome).
        """
        ...

    def discard(self, ids: Sequence[int]) -> int:
        """Remove messages that are still ready (never in flight ones); returns how many."""
        ...

    def unfinished(self, upto: int) -> list[int]:
        """Ids up to ``upto`` that are ready or in flight, ascending."""
        ...

    def results(self, upto: int) -> dict[int, bytes]:
        """The kept results of messages with ids up to ``upto``."""
        ...

    def forget(self, ids: Sequence[int]) -> int:
        """Drop the kept results of ``ids``; returns how many existed."""
        ...

    def requeue_expired(self, now: float) -> int:
        """Return every in-flight message whose lease expired before ``now`` to ready."""
        ...

    def has_ready(self, now: float) -> bool:
        """Whether a message is ready for delivery."""
        ...

    def counts(self) -> Counts:
        """Counts per state and lifetime totals."""
        ...

    def next_due(self, now: float) -> float | None:
        """The earliest due time after ``now`` of a waiting (scheduled) message, if any."""
        ...

    def record_fault(self, fault: Fault) -> None:
        """Append ``fault`` to the durable fault log (best effort: never raises)."""
        ...

    def faults(self, limit: int = 100) -> list[Fault]:
        """The most recent faults, oldest first."""
        ...

    def close(self) -> None:
        """Release connections held by this process."""
        ...


from ._commandstore import CommandCounts, CommandRow, CommandStore, CommandWatch  # noqa: E402
from ._diskcache import DiskcacheStore  # noqa: E402
from ._memory import MemoryStore  # noqa: E402

__all__ = [
    "CommandCounts",
    "CommandRow",
    "CommandStore",
    "CommandWatch",
    "DiskcacheStore",
    "MemoryStore",
    "Store",
]
