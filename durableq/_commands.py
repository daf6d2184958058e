"""``CommandQueue``: durable per-target command queues for targets that may be offline.

Commands for devices, tenants or endpoints wait in the store until their target drains
them: plain ones, latest-intent ones (one undelivered command per target and type, its
payload replaced by each update), and ones held until confirmed. Every state change is a
store transaction, so all of it survives SIGKILL of any process. The queue owns
validation, serialization and the clock; the store (``CommandStore``) owns the state.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from ._records import Fault, LeaseToken
from ._serializer import Serializer, get_serializer
from .store import DiskcacheStore
from .store._commandstore import CommandCounts, CommandRow, CommandStore

#: Longest a ``consume()`` sleeps without looking at the store: bounds how late it sees a
#: lease running out (no wakeup marks that) or a wakeup lost with a crashed producer.
FALLBACK_WAIT: Final = 1.0


@dataclass(frozen=True, slots=True)
class PendingCommand:
    """A command as ``pending``, ``drain`` and ``consume`` return it.

    ``attempt`` counts deliveries: 0 for a command never drained, 1 on its first drain,
    more when a drained command came back (``ack=True`` and no ack in time).
    """

    id: int
    target: str
    command_type: str | None
    payload: Any
    created_at: float
    expires_at: float | None
    requires_confirmation: bool
    confirmed: bool
    attempt: int = 0

    @property
    def token(self) -> LeaseToken:
        """The delivery's fencing token: ``ack``/``nack`` of an older attempt are ignored."""
        return LeaseToken(self.id, self.attempt)


class CommandQueue:
    """Per-target command queues in a durable store.

    Args:
        path: a queue directory (``DiskcacheStore(path)``; commands go to its
            ``commands.db``). Give ``path`` or ``store``.
        store: a ``CommandStore``, e.g. ``durableq.MemoryStore()`` (one process, not
            durable) or a ``DiskcacheStore`` shared with a ``Queue``.
        serializer: ``"auto"`` (msgpack, pickle fallback; bytes stay bytes), ``"msgpack"``,
            ``"pickle"`` or an object with ``dumps``/``loads``.
        lease: seconds a command drained with ``ack=True`` waits for its ack before a
            later drain takes it again (sooner if the draining process died).
        sync: ``"normal"`` survives process crashes, ``"full"`` also power loss (with ``path``).
        trusted: open ``path`` even if another user could write to it (see
            ``durableq.UnsafePath``); otherwise that raises.
        clock: wall-clock seconds (``time.time``); expiry and leases are compared to it.

    Raises:
        ValueError: neither or both of ``path`` and ``store``; a bad ``lease``.
        TypeError: ``store`` lacks the command verbs.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        store: CommandStore | None = None,
        serializer: str | Serializer = "auto",
        lease: float = 30.0,
        sync: str = "normal",
        trusted: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (path is None) == (store is None):
            raise ValueError("CommandQueue needs path= (a queue directory) or store=, not both")
        if store is not None and not isinstance(store, CommandStore):
            raise TypeError(f"store {store!r} does not implement the CommandStore verbs")
        self._lease = _seconds("lease", lease)
        self._owns_store = store is None
        self._store: CommandStore = (
            DiskcacheStore(path, sync=sync, trusted=trusted) if store is None else store
        )
        self._serializer = get_serializer(serializer)
        self._clock = clock

    # -- producers ------------------------------------------------------------------------

    def enqueue(
        self, target: str, payload: Any, ttl: float | None = None,
        command_type: str | None = None,
    ) -> int:
        """Store a command for ``target``, deliverable at its next drain; returns its id.

        ``ttl``: seconds until it expires undelivered (``None``: never). Returns once the
        command is committed.
        """
        return self._put(target, payload, ttl, command_type, hold=False)

    def enqueue_or_update(
        self, target: str, command_type: str, payload: Any, ttl: float | None = None
    ) -> int:
        """Latest intent wins: replace the payload and expiry of the undelivered command of
        ``command_type`` that an earlier ``enqueue_or_update`` stored for ``target`` (it keeps
        its id and place in line), or store a new one. Returns its id.

        Atomic across threads and processes: never two undelivered commands from
        ``enqueue_or_update`` of one type for one target. ``enqueue`` with the same
        ``command_type`` always adds a command of its own.
        """
        _text("target", target)
        _text("command_type", command_type)
        now = self._clock()
        return self._store.command_upsert(
            target, command_type, self._serializer.dumps(payload),
            expires_at=_expiry(ttl, now), now=now,
        )

    def enqueue_with_confirmation(
        self, target: str, command_type: str | None, payload: Any, ttl: float | None = None
    ) -> int:
        """Store a command held back until ``confirm(id)``; drains skip it until then."""
        return self._put(target, payload, ttl, command_type, hold=True)

    def _put(
        self, target: str, payload: Any, ttl: float | None, command_type: str | None, *,
        hold: bool,
    ) -> int:
        _text("target", target)
        if command_type is not None:
            _text("command_type", command_type)
        now = self._clock()
        return self._store.command_put(
            target, self._serializer.dumps(payload), command_type=command_type,
            expires_at=_expiry(ttl, now), hold=hold, now=now,
        )

    def confirm(self, command_id: int) -> None:
        """Release a held command: the target's next drain delivers it (idempotent).

        Raises:
            CommandNotFound: no command ever had this id.
            CommandStateError: it was delivered, cancelled or expired, is in flight, or
                does not require confirmation.
        """
        self._store.command_confirm(_id(command_id), now=self._clock())

    def cancel(self, command_id: int) -> None:
        """Remove a command that is waiting (ready or held) so it is never delivered.

        Raises:
            CommandNotFound: no command ever had this id.
            CommandStateError: it was delivered, cancelled or cleaned up, or is in flight.
        """
        self._store.command_cancel(_id(command_id), now=self._clock())

    # -- consumers ------------------------------------------------------------------------

    def pending(self, target: str) -> list[PendingCommand]:
        """``target``'s unexpired, undelivered commands, oldest first, marking nothing:
        ready ones, held ones (see ``requires_confirmation``/``confirmed``) and drained ones
        whose lease lapsed. Commands out on a live lease are not listed."""
        _text("target", target)
        return self._decode(self._store.command_pending(target, now=self._clock()))

    def pending_confirmations(self, target: str) -> list[PendingCommand]:
        """``target``'s unexpired commands waiting for ``confirm``, oldest first."""
        _text("target", target)
        return self._decode(
            self._store.command_pending(target, now=self._clock(), held_only=True)
        )

    def drain(
        self, target: str, *, ack: bool = False, limit: int | None = None
    ) -> list[PendingCommand]:
        """Take ``target``'s ready commands (not held, unexpired), oldest first.

        One transaction: two concurrent drains never get the same command. Without ``ack``
        they are delivered (removed) at once. With ``ack=True`` they stay in flight until
        ``ack()``; ``nack()``, a lease running out or the draining process dying puts them
        back for the next drain: at-least-once for a send that may crash halfway.
        """
        _text("target", target)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ValueError(f"limit must be a positive int or None, not {limit!r}")
        rows = self._store.command_drain(
            target, now=self._clock(), limit=limit, lease=self._lease if ack else None,
            holder=os.getpid(),
        )
        return self._decode(rows)

    def ack(self, commands: PendingCommand | Iterable[PendingCommand]) -> int:
        """Finish commands from ``drain(ack=True)``; returns how many were still in flight
        under that delivery (a late ack after redelivery is ignored)."""
        return self._store.command_ack(_tokens(commands))

    def nack(self, commands: PendingCommand | Iterable[PendingCommand]) -> int:
        """Put commands from ``drain(ack=True)`` back, for the next drain; returns how many."""
        return self._store.command_nack(_tokens(commands))

    def consume(self, target: str, timeout: float | None = None) -> Iterator[PendingCommand]:
        """Yield ``target``'s commands as they become ready, from any process's enqueue.

        Stops once ``timeout`` seconds pass with no command (``None``: never). Each command
        is drained with a lease and acked when you ask for the next one; the one you hold
        when you leave the loop goes back to the queue (``ack()`` it first if it was sent),
        so a crash mid-send redelivers it. Producers wake this consumer through the store
        (a FIFO per consumer for a directory store); a lapsed lease is seen within
        ``FALLBACK_WAIT`` seconds.
        """
        _text("target", target)
        limit = None if timeout is None else _seconds("timeout", timeout, zero=True)
        with self._store.command_watch(target) as watch:  # subscribe before looking
            idle_since = time.monotonic()
            while True:
                batch = self.drain(target, ack=True)
                if batch:
                    yield from self._hand_out(batch)
                    idle_since = time.monotonic()
                    continue
                left = FALLBACK_WAIT
                if limit is not None:
                    remaining = idle_since + limit - time.monotonic()
                    if remaining <= 0:
                        return
                    left = min(left, remaining)
                watch.wait(left)

    def _hand_out(self, batch: list[PendingCommand]) -> Iterator[PendingCommand]:
        acked = 0
        try:
            for cmd in batch:
                yield cmd
                self.ack(cmd)  # the consumer came back for the next one: this one is done
                acked += 1
        finally:
            if acked < len(batch):
                self.nack(batch[acked:])  # the one held when the loop was left, and the rest

    # -- maintenance ----------------------------------------------------------------------

    def cleanup(self) -> int:
        """Remove expired commands; returns how many. (Expired commands are never returned
        anyway: this only frees their space.)"""
        return self._store.command_expire(self._clock())

    def counts(self) -> CommandCounts:
        """Unexpired commands per state (``ready``, ``held``, ``in_flight``), ``expired``,
        and ``quarantined``: commands set aside for failing their HMAC check (directory
        stores; docs/security.md)."""
        return self._store.command_counts(self._clock())

    def faults(self, limit: int = 100) -> list[Fault]:
        """The store's fault log, oldest first: a command that failed its HMAC check is
        logged there as a ``quarantined`` fault. A directory's log is shared with a
        ``Queue`` kept in it; a store without a fault log gives ``[]``."""
        read = getattr(self._store, "faults", None)
        return [] if read is None else list(read(limit))

    @property
    def store(self) -> CommandStore:
        return self._store

    def close(self) -> None:
        """Release this process's connections (and the store, if the queue opened it)."""
        self._store.command_close()
        if self._owns_store:
            self._store.close()  # type: ignore[attr-defined]

    def __enter__(self) -> CommandQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        if not getattr(self._store, "shared", False):
            raise TypeError(
                f"a CommandQueue over {self._store!r} lives in one process; use path= to "
                "share it with other processes"
            )
        return {"store": self._store, "serializer": self._serializer, "lease": self._lease,
                "clock": self._clock, "owns_store": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._store, self._serializer = state["store"], state["serializer"]
        self._lease, self._clock = state["lease"], state["clock"]
        self._owns_store = state["owns_store"]

    def __repr__(self) -> str:
        return f"CommandQueue(store={self._store!r})"

    def _decode(self, rows: list[CommandRow]) -> list[PendingCommand]:
        loads = self._serializer.loads
        return [
            PendingCommand(r.id, r.target, r.command_type, loads(r.payload), r.created_at,
                           r.expires_at, r.requires_confirmation, r.confirmed, r.attempt)
            for r in rows
        ]


# -- validation: bad input fails before anything is stored ------------------------------------


def _text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")


def _seconds(name: str, value: object, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be {'>= 0' if zero else '> 0'} seconds, not {value!r}")
    return float(value)


def _expiry(ttl: float | None, now: float) -> float | None:
    if ttl is None:
        return None
    seconds = _seconds("ttl", ttl)
    return None if math.isinf(seconds) else now + seconds


def _id(command_id: object) -> int:
    if isinstance(command_id, bool) or not isinstance(command_id, int):
        raise TypeError(f"command id must be an int, not {type(command_id).__name__}")
    return command_id


def _tokens(commands: PendingCommand | Iterable[PendingCommand]) -> list[LeaseToken]:
    if isinstance(commands, PendingCommand):
        return [commands.token]
    tokens = []
    for cmd in commands:
        if not isinstance(cmd, PendingCommand):
            raise TypeError(f"expected PendingCommand records, not {type(cmd).__name__}")
        tokens.append(cmd.token)
    return tokens
