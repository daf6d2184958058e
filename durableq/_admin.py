"""Reads and repairs of a queue's failure policy state, shared by Queue, Executor and Pool:
the failure log and its report, dead letters, history and replay.

Each is one call on the store (atomic there); the owner runs them on its own thread, so a
repair that makes messages ready is seen by its next delivery round at once.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from ._records import Failure, Record, State
from ._report import ErrorGroup, group
from .store import Store

#: ``history(state=...)`` names.
FINISHED = {"done": State.DONE, "expired": State.EXPIRED, "dead": State.DEAD}


def since_of(since: Any, now: float) -> float | None:
    """``since=``: None, epoch seconds, a datetime, or a timedelta (that long ago)."""
    if since is None:
        return None
    if isinstance(since, datetime.timedelta):
        return now - since.total_seconds()
    if isinstance(since, datetime.datetime):
        return since.timestamp()
    if isinstance(since, int | float) and not isinstance(since, bool):
        return float(since)
    raise TypeError(f"since must be a datetime, a timedelta or epoch seconds, not {since!r}")


def states_of(state: Any) -> list[State]:
    """``state=``: None (all finished), a name, a ``State`` or several of them."""
    if state is None:
        return list(FINISHED.values())
    items = [state] if isinstance(state, str | State) else list(state)
    out = []
    for item in items:
        if isinstance(item, State) and item in FINISHED.values():
            out.append(item)
        elif isinstance(item, str) and item.lower() in FINISHED:
            out.append(FINISHED[item.lower()])
        else:
            raise ValueError(f"state must be one of {sorted(FINISHED)}, not {item!r}")
    return out


def _ids(ids: Any) -> list[int] | None:
    if ids is None:
        return None
    if isinstance(ids, int):
        ids = [ids]
    out = list(ids)
    bad = [i for i in out if not isinstance(i, int) or isinstance(i, bool)]
    if bad:
        raise TypeError(f"message ids are ints, not {bad[0]!r}")
    return out


def failures(store: Store, now: float, since: Any = None, limit: int | None = 100) -> list[Failure]:
    return store.failures(since=since_of(since, now), limit=limit)


def report(store: Store, now: float, since: Any = None) -> list[ErrorGroup]:
    return group(store.failures(since=since_of(since, now)))


def dead_letters(store: Store, now: float, limit: int | None = None) -> list[Record]:
    return store.records([State.DEAD], limit=limit)


def retry_dead(store: Store, now: float, ids: Any = None) -> list[int]:
    return store.revive(_ids(ids), now=now)


def purge_dead(store: Store, now: float, older_than: Any = None) -> int:
    cutoff = None
    if older_than is not None:
        if isinstance(older_than, datetime.timedelta):
            cutoff = now - older_than.total_seconds()
        elif isinstance(older_than, int | float) and not isinstance(older_than, bool):
            cutoff = now - float(older_than)
        else:
            raise TypeError(f"older_than must be seconds or a timedelta, not {older_than!r}")
    return store.purge([State.DEAD], older_than=cutoff)


def history(
    store: Store, now: float, since: Any = None, state: Any = None, limit: int | None = None
) -> list[Record]:
    return store.records(states_of(state), since=since_of(since, now), limit=limit)


def replay(store: Store, now: float, ids: Any) -> list[int]:
    """Put copies of finished messages as new messages; returns the new ids in order."""
    wanted = _ids(ids)
    if not wanted:
        raise ValueError("replay needs the ids of finished messages")
    records: list[Record] = []
    for id_ in wanted:
        rec = store.record(id_)
        if rec is None or rec.state not in FINISHED.values():
            raise ValueError(f"message {id_} is not a finished (done, expired, dead) message")
        records.append(rec)
    return [
        store.put_many([rec.body], priority=int(rec.priority), due=now)[0] for rec in records
    ]


_VERBS: dict[str, Any] = {
    f.__name__: f
    for f in (failures, report, dead_letters, retry_dead, purge_dead, history, replay)
}


def admin(store: Store, name: str, args: Sequence[Any], now: float) -> Any:
    """Run the verb ``name`` with ``args`` (positional, as the public methods pass them)."""
    verb = _VERBS.get(name)
    if verb is None:
        raise ValueError(f"unknown queue operation {name!r}")
    return verb(store, now, *args)
