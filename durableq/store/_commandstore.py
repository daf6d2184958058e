"""The ``CommandStore`` protocol: durable per-target command state, beside ``Store``.

``durableq.CommandQueue`` owns serialization, validation and the clock; a command store
owns only the state, in a few atomic verbs (one transaction each): insert, keyed upsert
(latest intent wins), hold until confirmed, drain by target (delivered, or leased until
acked), expire. Payloads are bytes. ``tests/test_command_store_contract.py`` is the
contract every implementation passes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, NamedTuple, Protocol, runtime_checkable

from .._errors import CommandNotFound, CommandStateError, DurableQError
from .._records import LeaseToken, State

_READY, _HELD, _IN_FLIGHT = int(State.READY), int(State.HELD), int(State.IN_FLIGHT)


class CommandRow(NamedTuple):
    """A stored command as a store hands it out."""

    id: int
    target: str
    command_type: str | None
    payload: bytes
    created_at: float
    expires_at: float | None
    requires_confirmation: bool
    confirmed: bool
    attempt: int  #: deliveries so far, this one included for rows a drain returned


class CommandCounts(NamedTuple):
    """Unexpired commands per state, and expired ones awaiting ``command_expire``."""

    ready: int
    held: int  #: waiting for confirmation
    in_flight: int  #: drained with a lease, not yet acked
    expired: int
    quarantined: int = 0  #: failed their HMAC check, set aside (stores that sign records)


class CommandWatch(Protocol):
    """A subscription to one target's commands; ``wait`` returns early when one may be ready.

    Subscribe first, then look, then wait: a command committed after the subscription
    began always ends the wait, so a consumer never sleeps through one.
    """

    def wait(self, timeout: float | None) -> bool:
        """Block until a command for the target may have become ready, or ``timeout``
        seconds pass; ``True`` if woken. Spurious wakeups are allowed."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> CommandWatch: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class CommandStore(Protocol):
    """Durable command state. Every verb is atomic: it fully happens or not at all.

    A command is *ready* (deliverable), *held* (waiting for ``command_confirm``) or *in
    flight* (drained with a lease, not yet acked). Delivered and cancelled commands are
    removed; ids are never reused, so an id at or below ``command_last_id`` that is gone
    was delivered, cancelled or expired. Expired commands (``expires_at <= now``) are never
    returned, before or after ``command_expire`` removes them.
    """

    def command_put(
        self,
        target: str,
        payload: bytes,
        *,
        command_type: str | None,
        expires_at: float | None,
        hold: bool,
        now: float,
    ) -> int:
        """Insert a command (``hold``: until confirmed); returns its id."""
        ...

    def command_upsert(
        self, target: str, command_type: str, payload: bytes, *, expires_at: float | None,
        now: float,
    ) -> int:
        """Replace the payload and expiry of the ready command that an earlier upsert of
        ``(target, command_type)`` stored, keeping its id and place, or insert one.

        Atomic across processes: there is never more than one such command.
        """
        ...

    def command_pending(
        self, target: str, *, now: float, held_only: bool = False
    ) -> list[CommandRow]:
        """Unexpired commands not delivered and not out on a live lease, oldest first
        (``held_only``: the ones waiting for confirmation)."""
        ...

    def command_drain(
        self, target: str, *, now: float, limit: int | None, lease: float | None, holder: int
    ) -> list[CommandRow]:
        """Take the ready commands of ``target``, oldest first, in one transaction.

        Without ``lease`` they are removed (delivered). With it they go in flight until
        ``command_ack``; an in-flight command whose lease ran out, or whose ``holder``
        process has died, is taken again (its ``attempt`` grows). A retaken upserted
        command that a newer upsert superseded is dropped instead.
        """
        ...

    def command_ack(self, tokens: Sequence[LeaseToken]) -> int:
        """Finish in-flight commands (token: id and attempt); stale tokens are ignored."""
        ...

    def command_nack(self, tokens: Sequence[LeaseToken]) -> int:
        """Return in-flight commands to ready (oldest-first order by id is kept)."""
        ...

    def command_confirm(self, command_id: int, *, now: float) -> str:
        """Release a held command to the next drain. Returns its target.

        Raises ``CommandNotFound`` for an id never issued, ``CommandStateError`` for one
        delivered, cancelled, expired, in flight or not needing confirmation.
        """
        ...

    def command_cancel(self, command_id: int, *, now: float) -> str:
        """Remove a ready or held command. Returns its target. Raises as confirm."""
        ...

    def command_expire(self, now: float) -> int:
        """Remove the commands expired at ``now``; returns how many."""
        ...

    def command_counts(self, now: float) -> CommandCounts:
        """Counts per state."""
        ...

    def command_watch(self, target: str) -> CommandWatch:
        """Subscribe to ``target``: put, upsert, confirm and nack wake its watchers, in any
        process the store is shared with."""
        ...

    def command_close(self) -> None:
        """Release what this process holds for commands (connections)."""
        ...


def missing_error(operation: str, command_id: int, last_id: int) -> DurableQError:
    """The error for an id with no stored command: gone if issued (ids are never reused),
    else unknown."""
    if 0 < command_id <= last_id:
        return CommandStateError(
            command_id, operation, "it was delivered, cancelled or removed after expiring"
        )
    return CommandNotFound(command_id)


#: The column order of the row tuples ``select_live`` and ``to_row`` take.
ROW_LAYOUT: Final = (
    "id", "target", "type", "payload", "created", "expires", "hold", "state", "attempt",
    "keyed", "holder", "deadline",
)


def holder_alive(pid: int | None) -> bool:
    """Whether the process holding a lease may still ack it (same host: queue dirs are local)."""
    if pid is None or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def select_live(
    rows: Sequence[Sequence[Any]], now: float,
    alive: Callable[[int | None], bool] = holder_alive,
) -> tuple[list[Any], list[int]]:
    """Split one target's unexpired rows, oldest first, into the live ones and the ids of
    superseded ones.

    Rows are tuples laid out as ``ROW_LAYOUT``. In-flight rows are live only once their
    lease ran out or their holder died (``alive``; a replicated store judges that once, at
    the requester, so every replica decides alike); such a row, if an upsert whose type a
    newer ready upsert replaced meanwhile, is superseded instead.
    """
    newer_keyed = {r[2] for r in rows if r[9] and r[7] == _READY}
    out: list[Any] = []
    superseded: list[int] = []
    for r in rows:
        if r[7] == _IN_FLIGHT:
            if r[11] > now and alive(r[10]):
                continue
            if r[9] and r[2] in newer_keyed:
                superseded.append(r[0])
                continue
        out.append(r)
    return out, superseded


def to_row(r: Sequence[Any], attempt: int | None = None) -> CommandRow:
    """A ``ROW_LAYOUT`` tuple as a ``CommandRow`` (with ``attempt`` if given)."""
    hold = bool(r[6])  # positional: keywords cost a third of a drain's Python time
    return CommandRow(r[0], r[1], r[2], r[3], r[4], r[5], hold, hold and r[7] != _HELD,
                      r[8] if attempt is None else attempt)


def check_state(operation: str, command_id: int, state: int, expires: float | None,
                now: float) -> None:
    """Raise ``CommandStateError`` if a stored command cannot be confirmed or cancelled."""
    if state == _IN_FLIGHT:
        raise CommandStateError(
            command_id, operation, "it is being delivered (drained with ack=True, not acked)"
        )
    if expires is not None and expires <= now:
        raise CommandStateError(command_id, operation, "it expired")
