"""``durableq.inspect(path)``: a read-only look at a queue directory, owned or not.

It never takes ownership and never writes: it reads the store through SQLite's WAL, which
does not block the owner or the producers. The queries carry the names the owning
``Queue``/``Executor`` offers (``failures``, ``report``, ``dead_letters``, ``history``), and
the ``durableq`` command is a thin layer over them. ``durableq.maintain(path)`` adds the
repairs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ._admin import admin, since_of
from ._admin_api import Since
from ._errors import QueueNotFound
from ._lock import owner_status
from ._records import Counts, Failure, Fault, Record, State
from ._report import ErrorGroup
from .store import DiskcacheStore

_FILES = ("cache.db", "owner.db")
#: States that ``messages()`` and ``export`` walk when none are named.
ALL_STATES = (
    State.READY, State.SCHEDULED, State.IN_FLIGHT, State.DEAD, State.DONE, State.EXPIRED
)
#: State names as the command line and the JSON output spell them.
STATE_NAMES = {s.name.lower(): s for s in ALL_STATES}
#: Messages read per page when walking a whole queue.
PAGE = 1000


class Inspector:
    """Read-only queries on one queue directory."""

    def __init__(self, path: str, store: DiskcacheStore) -> None:
        self.path = path
        self._store = store
        #: Records found failing their HMAC while reading (they are left out of every
        #: read): kept here, not written to the queue's fault log, since reading writes
        #: nothing.
        self.integrity_faults: list[Fault] = []
        store.on_integrity_fault = self.integrity_faults.append

    def owner(self) -> tuple[int | None, bool]:
        """The pid of the current or last owner, and whether a live process owns it now."""
        return owner_status(self.path)

    def stats(self, window: float = 0.0) -> dict[str, Any]:
        """Counts per state and priority band, lifetime totals, the oldest ready message's
        age, and the owner's pid and whether it is alive.

        With ``window`` > 0, the counts are read twice that many seconds apart and
        ``rates`` holds puts, acks and failed attempts per second over it (None otherwise).
        """
        start, first = time.time(), self._store.counts()
        rates = None
        if window > 0:
            time.sleep(window)  # the rate is defined over this interval: nothing to wait on
            end, last = time.time(), self._store.counts()
            failed = len(self._store.failures(since=start))
            span = max(end - start, 1e-9)
            rates = {
                "put": (last.put_total - first.put_total) / span,
                "ack": (last.acked_total - first.acked_total) / span,
                "fail": failed / span,
            }
            first = last
        pid, alive = self.owner()
        return {
            "path": self.path,
            **first.as_dict(),
            "rates": rates,
            "owner_pid": pid,
            "owner_alive": alive,
        }

    def messages(
        self, states: Sequence[State] = ALL_STATES, *, after: int = 0, limit: int = 100
    ) -> list[Record]:
        """Messages in ``states`` with ids above ``after``, ascending, at most ``limit``
        (a page: pass the last id as ``after`` for the next)."""
        return self._store.listing(states, now=time.time(), after=after, limit=limit)

    def walk(self, states: Sequence[State] = ALL_STATES, page: int = PAGE) -> Iterator[Record]:
        """Every message in ``states``, by id, read a page at a time."""
        after = 0
        while True:
            batch = self.messages(states, after=after, limit=page)
            if not batch:  # not "shorter than a page": forged records are left out of one
                return
            yield from batch
            after = batch[-1].id

    def message(self, id: int) -> Record | None:
        """One message in whatever state it is (None if there is no such message)."""
        page = self.messages(ALL_STATES, after=id - 1, limit=1)
        return page[0] if page and page[0].id == id else None

    def failures(
        self, since: Since = None, limit: int | None = 100, id: int | None = None
    ) -> list[Failure]:
        """Failed attempts from the durable failure log, oldest first: since ``since`` (a
        datetime, a timedelta ago or epoch seconds), at most the newest ``limit``; only
        message ``id``'s when given."""
        if id is not None:
            return self._store.failures(since=since_of(since, time.time()), limit=limit, id=id)
        return list(self._admin("failures", since, limit))

    def report(self, since: Since = None) -> list[ErrorGroup]:
        """Recurring errors: failures grouped by exception type, masked message and raising
        frame, most frequent first."""
        return list(self._admin("report", since))

    def dead_letters(self, limit: int | None = None) -> list[Record]:
        """Dead messages as the owner has collected them, newest first (bodies as stored
        bytes: ``messages([State.DEAD])`` also lists those not collected yet)."""
        return list(self._admin("dead_letters", limit))

    def history(
        self, since: Since = None, state: str | Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Finished messages kept as history, newest first: ``state`` ``"done"``,
        ``"expired"``, ``"dead"`` (or several; None: all). Bodies as stored bytes."""
        return list(self._admin("history", since, state, limit))

    def stuck_leases(self, before: float, limit: int = 100) -> list[tuple[int, float]]:
        """``(id, lease expiry)`` of in-flight messages whose lease ran out before epoch
        ``before``: leases a live owner should have taken back."""
        return self._store.expired_leases(before, limit)

    def tallies(self) -> dict[str, int]:
        """Lifetime totals and counts in flight, dead and expired: cheap enough to read
        every second on any backlog (``counts()`` scans waiting messages)."""
        return self._store.tallies()

    def verify(self) -> dict[str, Any]:
        """Check every stored record against its HMAC, changing nothing: ``{"checked": n,
        "failed": [message ids], "failed_results": [ids], "quarantined": n}``.

        Raises:
            ConfigurationError: the directory has no key (and none was given).
        """
        return self._store.verify()

    def counts(self) -> Counts:
        """Counts per state and lifetime totals, as ``stats()`` shows them."""
        return self._store.counts()

    def _admin(self, name: str, *args: Any) -> Any:
        return admin(self._store, name, args, time.time())

    def faults(self, limit: int = 100) -> list[Fault]:
        """The queue's fault log, oldest first."""
        return self._store.faults(limit)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<durableq.Inspector {self.path}>"


def check_queue(path: str | os.PathLike[str]) -> str:
    """The absolute path of the queue directory ``path``.

    Raises:
        QueueNotFound: ``path`` does not exist or holds no durableq queue.
    """
    full = os.path.abspath(os.fspath(path))
    if not os.path.isdir(full):
        raise QueueNotFound(full, "no such directory")
    missing = [name for name in _FILES if not os.path.isfile(os.path.join(full, name))]
    if missing:
        raise QueueNotFound(full, f"{', '.join(missing)} missing")
    return full


def inspect(path: str | os.PathLike[str]) -> Inspector:
    """Open the queue at ``path`` for reading, beside its owner if one runs.

    Raises:
        QueueNotFound: ``path`` does not exist or holds no durableq queue.
    """
    full = check_queue(path)
    return Inspector(full, DiskcacheStore.attach(full))
