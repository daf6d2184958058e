"""``durableq.inspect(path)``: a read-only look at a queue directory, owned or not.

It never takes ownership and never writes: it reads the store through SQLite's WAL, which
does not block the owner or the producers. The ``durableq`` command is a thin layer over it.
"""

from __future__ import annotations

import os
from typing import Any

from ._errors import QueueNotFound
from ._lock import owner_status
from ._records import Fault
from .store import DiskcacheStore

_FILES = ("cache.db", "owner.db")


class Inspector:
    """Read-only queries on one queue directory."""

    def __init__(self, path: str, store: DiskcacheStore) -> None:
        self.path = path
        self._store = store

    def stats(self) -> dict[str, Any]:
        """Counts per state, lifetime totals, and the owner's pid and whether it is alive."""
        pid, alive = owner_status(self.path)
        return {
            "path": self.path,
            **self._store.counts().as_dict(),
            "owner_pid": pid,
            "owner_alive": alive,
        }

    def faults(self, limit: int = 100) -> list[Fault]:
        """The queue's fault log, oldest first."""
        return self._store.faults(limit)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def inspect(path: str | os.PathLike[str]) -> Inspector:
    """Open the queue at ``path`` for reading.

    Raises:
        QueueNotFound: ``path`` does not exist or holds no durableq queue.
    """
    full = os.path.abspath(os.fspath(path))
    if not os.path.isdir(full):
        raise QueueNotFound(full, "no such directory")
    missing = [name for name in _FILES if not os.path.isfile(os.path.join(full, name))]
    if missing:
        raise QueueNotFound(full, f"{', '.join(missing)} missing")
    return Inspector(full, DiskcacheStore.attach(full))
