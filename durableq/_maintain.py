"""``durableq.maintain(path)``: the repairs an operator runs on a queue directory, beside
its owner if one runs.

Every repair is one atomic store verb, the same the owner uses, so a concurrent owner
never loses a message or delivers one twice because of it: ``revive`` and ``quarantine``
touch only messages that are dead or waiting, ``replay`` and ``import`` put new messages
as any producer does, and requeueing leases takes the owner lock first, so it only ever
happens while no owner runs. A running Queue owner sees messages revived, replayed or
imported here within its safety re-check (5 s) while consumers wait; a ``durableq
worker`` service is woken at once; any other executor sees them at its next submit or
restart.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

from ._errors import StoreTimeout
from ._inspect import PAGE, STATE_NAMES, Inspector, check_queue
from ._lock import OwnerLock
from ._records import Priority, Record, State
from .store import DiskcacheStore

#: ``durableq export`` line format; ``import`` refuses newer ones.
EXPORT_VERSION: Final = 1
#: States whose messages ``import`` puts back as ready or scheduled by default.
UNFINISHED: Final = (State.READY, State.SCHEDULED, State.IN_FLIGHT)
FINISHED: Final = (State.DONE, State.DEAD, State.EXPIRED)
#: ``progress(done, total)``
Progress = Callable[[int, int], None]
#: Seconds a repair keeps retrying while the owner or producers hold the locks it needs.
RETRY_FOR: Final = 30.0
T = TypeVar("T")


class Maintainer(Inspector):
    """The read-only queries plus the repairs."""

    def retry_dead(self, ids: Sequence[int] | None = None) -> list[int]:
        """Dead messages (all when ``ids`` is None) back to ready, with fresh failure
        budgets; returns the ids revived."""
        wanted = None if ids is None else list(ids)
        return self._woken(list(self._retry(self._admin, "retry_dead", wanted)))

    def purge_dead(
        self, older_than: float | None = None, progress: Progress | None = None
    ) -> int:
        """Delete dead messages that died more than ``older_than`` seconds ago (all when
        None); returns how many. With ``progress`` (called with the count deleted so far
        and the total), it deletes oldest first, ``PAGE`` at a time: short transactions
        beside a live owner, and a bar that moves."""
        if progress is None:
            return int(self._retry(self._admin, "purge_dead", older_than))
        cutoff = float("inf") if older_than is None else time.time() - older_than
        times = sorted(
            r.finished for r in self.walk([State.DEAD])
            if r.finished is not None and r.finished < cutoff
        )
        steps = [times[i] for i in range(PAGE, len(times), PAGE)] + [cutoff]
        done = 0
        progress(0, len(times))
        for step in steps:
            done += self._retry(self._store.purge, [State.DEAD], older_than=min(step, cutoff))
            progress(done, len(times))
        return done

    def replay(self, ids: Sequence[int]) -> list[int]:
        """Put copies of finished (done, dead, expired) messages as new ready messages;
        returns the new ids in order.

        Raises:
            ValueError: an id names no finished message; nothing is put then.
        """
        new = [self._retry(self._admin, "replay", [i])[0] for i in ids]  # one put each
        return self._woken(new)

    def _retry(self, verb: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store verb, again while another process's transaction holds a lock it
        needs (the owner's, a producer's). Each verb is one transaction, rolled back whole
        when it fails, so running it again is safe."""
        delay, end = 0.001, time.monotonic() + RETRY_FOR
        while True:
            try:
                return verb(*args, **kwargs)
            except StoreTimeout:
                if time.monotonic() >= end:
                    raise
                time.sleep(delay)  # the other transaction is short: back off and retry
                delay = min(delay * 2, 0.05)

    def _woken(self, ids: list[int]) -> list[int]:
        """Wake the ``durableq worker`` or ``Queue`` owning this queue when messages
        became ready (a no-op without one): their dispatchers watch its FIFOs."""
        if ids and any(ids):
            from ._service import wake_service

            wake_service(self.path)
        return ids

    def quarantine(self, ids: Sequence[int], reason: str) -> list[int]:
        """Bury waiting messages among ``ids`` as dead with ``reason`` in the failure log
        (``retry_dead`` brings them back); returns the ids buried."""
        return self._retry(self._store.quarantine, list(ids), now=time.time(), reason=reason)

    def requeue_orphans(self) -> int:
        """Return every in-flight message to ready, as the next owner would at start-up.

        Takes the owner lock for the moment it works, so it never races an owner.

        Raises:
            QueueLocked: a live process owns the queue: its leases are not orphans.
        """
        lock = OwnerLock(self.path, wait=False)
        try:
            return self._retry(self._store.requeue_expired, float("inf"))
        finally:
            lock.release()

    def put_records(self, lines: Iterable[dict[str, Any]], *, finished: bool = False) -> int:
        """Put exported messages (``durableq export`` lines, parsed) as new messages, with
        their priority, due time, deadline and expiry; unfinished ones only unless
        ``finished``. Returns how many were put. Attempts start again at 0.

        Raises:
            ValueError: a line is not an export line this version reads.
        """
        count = 0
        for line in lines:
            state, body, opts = _import_line(line)
            if state in FINISHED and not finished:
                continue
            self._retry(self._store.put_many, [body], **opts)
            count += 1
        self._woken([count])
        return count


def export_line(rec: Record) -> dict[str, Any]:
    """One message as a ``durableq export`` line (a JSON object)."""
    return {
        "v": EXPORT_VERSION,
        "id": rec.id,
        "state": rec.state.name.lower(),
        "priority": rec.priority.name.lower(),
        "due": rec.due,
        "attempts": rec.attempts,
        "created": rec.created,
        "finished": rec.finished,
        "deadline": rec.deadline,
        "expires": rec.expires,
        "body": base64.b64encode(rec.body).decode(),
    }


def _import_line(line: dict[str, Any]) -> tuple[State, bytes, dict[str, Any]]:
    if not isinstance(line, dict) or line.get("v") != EXPORT_VERSION:
        version = line.get("v") if isinstance(line, dict) else None
        raise ValueError(f"not a durableq export line of version {EXPORT_VERSION}: v={version!r}")
    try:
        state = STATE_NAMES[line["state"]]
        priority = Priority[str(line["priority"]).upper()]
        body = base64.b64decode(line["body"], validate=True)
        opts = {
            "priority": int(priority),
            "due": float(line["due"]),
            "deadline": _opt_float(line.get("deadline")),
            "expires": _opt_float(line.get("expires")),
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"bad export line for message {line.get('id')!r}: {exc!r}") from exc
    return state, body, opts


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def maintain(path: str | os.PathLike[str], *, create: bool = False) -> Maintainer:
    """Open the queue at ``path`` for reading and repairs, beside its owner if one runs.

    Args:
        create: make an empty queue directory if none is there (for ``import``).

    Raises:
        QueueNotFound: ``path`` does not exist or holds no durableq queue (and not
            ``create``).
    """
    if create and not os.path.exists(os.path.join(os.fspath(path), "owner.db")):
        DiskcacheStore(path).close()
    full = check_queue(path)
    return Maintainer(full, DiskcacheStore.attach(full))

