"""The ``Store`` protocol: bytes in, bytes out, a few atomic verbs, one transaction each.

The queue owns serialization, leases in memory and policy; a store owns only durable state.
Stores: ``DiskcacheStore`` (default, embedded SQLite through diskcache) and ``MemoryStore``
(in-process reference and benchmark baseline). Both also implement ``CommandStore``, the
per-target command state behind ``durableq.CommandQueue``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from .._clock import Clock
from .._policy import FailedAttempt, Retention, Verdict
from .._records import Counts, Failure, Fault, Leased, LeaseToken, Priority, Record, State


@runtime_checkable
class Store(Protocol):
    """Durable message state. Every method is atomic: it fully happens or not at all.

    ``shared`` says whether the store may be pickled into another process and used there
    directly (diskcache reopens by path); a store that is not shared is reached by other
    processes through the owner. A store may set ``durable = False`` (``MemoryStore``):
    nothing in it outlives the owner, so a producer elsewhere does not wait for the owner
    to store its put, as with ``multiprocessing.Queue``'s feeder thread.
    """

    shared: ClassVar[bool]
    #: What the owner keeps of done and expired messages and of the failure log.
    retention: Retention
    #: The owner's clock (``durableq.ManualClock`` in tests): put, finish and expiry times.
    clock: Clock

    def put_many(
        self,
        payloads: Sequence[bytes],
        *,
        priority: int = Priority.MEDIUM,
        due: float = 0.0,
        deadline: float | None = None,
        bump: float | None = None,
        expires: float | None = None,
    ) -> list[int]:
        """Commit ``payloads`` as ready messages in one transaction; return their ids in order.

        ``due``: not deliverable before; ``deadline``: a delivery after it is counted late;
        ``bump``: from then on the message is HIGH; ``expires``: undelivered by then, it
        becomes expired and never runs.
        """
        ...

    def lease(
        self, owner: str, n: int, *, now: float, ttl: float, max_priority: int = Priority.LOW
    ) -> list[Leased]:
        """Move up to ``n`` ready, unexpired messages, in (priority, due, id) order, to
        in-flight; only bands up to ``max_priority`` (lazy mode's bypass: HIGH alone).

        Each lease increments the message's attempt count, which becomes its token's attempt.
        """
        ...

    def fail(self, attempts: Sequence[FailedAttempt], *, now: float) -> list[Verdict | None]:
        """Apply failed attempts: each is retried (perhaps later, perhaps demoted) or buried
        as dead under its policy (``_policy.decide``) and logged, in one transaction. Stale
        tokens get ``None``."""
        ...

    def failures(
        self, *, since: float | None = None, limit: int | None = None, id: int | None = None
    ) -> list[Failure]:
        """The failure log, oldest first: entries since ``since``, of message ``id``, at most
        the newest ``limit``."""
        ...

    def tick(self, now: float) -> list[int]:
        """Bump messages whose deadline window opened to HIGH, expire undelivered ones past
        their expiry; returns the ids that expired."""
        ...

    def records(
        self, states: Sequence[State], *, since: float | None = None, limit: int | None = None
    ) -> list[Record]:
        """Finished messages (done, expired, dead) in ``states`` finished since ``since``,
        newest first."""
        ...

    def record(self, id: int) -> Record | None:
        """One message in whatever state it is, or None."""
        ...

    def revive(self, ids: Sequence[int] | None, *, now: float) -> list[int]:
        """Dead messages (all if ``ids`` is None) back to ready with fresh failure budgets."""
        ...

    def purge(self, states: Sequence[State], *, older_than: float | None = None) -> int:
        """Delete finished messages in ``states`` that finished before ``older_than``."""
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

    def results_of(self, ids: Sequence[int]) -> dict[int, bytes]:
        """The kept results of those of ``ids`` that have one (an executor asks for the
        tasks it awaits that a peer may have run)."""
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
        """The earliest time after ``now`` when a scheduled message comes due, a deadline
        window opens or an expiry passes."""
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
from ._postgres import PostgresStore  # noqa: E402
from ._rabbitmq import RabbitMQStore  # noqa: E402
from ._redis import RedisStore  # noqa: E402

#: URL schemes ``open_store`` knows, and the store each opens.
SCHEMES: dict[str, type[RedisStore] | type[PostgresStore] | type[RabbitMQStore]] = {
    "redis": RedisStore, "rediss": RedisStore,
    "postgresql": PostgresStore, "postgres": PostgresStore,
    "amqp": RabbitMQStore, "amqps": RabbitMQStore,
}


def open_store(url: str, *, name: str = "durableq") -> Store:
    """The server store a URL names: ``redis://`` or ``rediss://`` -> ``RedisStore``,
    ``postgresql://`` or ``postgres://`` -> ``PostgresStore``, ``amqp://`` or ``amqps://``
    -> ``RabbitMQStore``, holding the queue ``name``.

    Raises:
        ValueError: the URL has another scheme (a directory is not a URL: use ``path=``).
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    store_class = SCHEMES.get(scheme)
    if store_class is None:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ValueError(f"not a store URL: {url.split('@')[-1]!r}; use one of {known}")
    return store_class(url, name=name)


__all__ = [
    "CommandCounts",
    "CommandRow",
    "CommandStore",
    "CommandWatch",
    "DiskcacheStore",
    "MemoryStore",
    "PostgresStore",
    "RabbitMQStore",
    "RedisStore",
    "Store",
    "open_store",
]
