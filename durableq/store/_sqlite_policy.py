"""The embedded store's failure-policy, scheduling and history verbs (a mixin of
``DiskcacheStore``): retries and dead letters, deadline bumps and expiry, the failure log,
history reads and repairs, and the counts behind ``stats()``.

Everything here runs on the ledger connection, which has the message file attached as
``q``; a verb that changes both files writes them in one transaction.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .._policy import CAUSES, FailedAttempt, Verdict, decide
from .._records import Counts, Failure, Priority, Record, State
from ._numbers import put_total_sql
from ._putlog import drains_first
from ._sqlite import guarded

if TYPE_CHECKING:
    from .._clock import Clock
    from .._policy import Retention

_T = TypeVar("_T")
#: For ledger transactions that also write the message file: take both write locks at
#: the start (waiting for a producer's commit there), never halfway, where SQLite can only
#: answer "busy" at once.
_BOTH: Final = "BEGIN IMMEDIATE"
_READY, _IN_FLIGHT, _DONE, _DEAD, _EXPIRED = (
    int(s) for s in (State.READY, State.IN_FLIGHT, State.DONE, State.DEAD, State.EXPIRED)
)
#: The failure log keeps at most this many entries (and no older than the history age).
FAILURE_LOG_MAX: Final = 100_000
_WAITING: Final = f"m.state = {_READY} AND (d.state IS NULL OR d.state = {_READY})"
_RECORD: Final = (
    "SELECT id, state, priority, due, attempts, created, finished, deadline, expires, flags, "
    "body, mac FROM q.dq_message"
)
#: The first deliverable message of a band (for the oldest ready age).
_FIRST: Final = f"""
SELECT m.id, 0, 0, 0, m.created
  FROM q.dq_message AS m LEFT JOIN dq_delivery AS d ON d.id = m.id
 WHERE m.state = {_READY} AND m.priority = ? AND m.due <= ?
   AND (d.state IS NULL OR d.state = {_READY}) AND (m.expires IS NULL OR m.expires > ?)
 ORDER BY m.due, m.id LIMIT 1
"""
_EXPIRE: Final = f"""
INSERT INTO dq_delivery (id, attempts, state, expiry)
SELECT m.id, coalesce(d.attempts, m.attempts), {_EXPIRED}, ?
  FROM q.dq_message AS m INDEXED BY dq_message_expires
  LEFT JOIN dq_delivery AS d ON d.id = m.id
 WHERE m.expires <= ? AND {_WAITING}
ON CONFLICT (id) DO UPDATE SET state = {_EXPIRED}, expiry = excluded.expiry
"""


def drop_messages(
    con: sqlite3.Connection, table: str, ids: Collection[int], top: int | None
) -> None:
    """Delete the message rows ``ids`` of ``table`` (``dq_message``, or ``q.dq_message`` on
    the ledger connection), in the caller's transaction. The newest row, ``top``, stays as
    an empty tombstone instead: SQLite picks max(id) + 1 for a new row, and an id must never
    come back (the ledger and the lease tokens are keyed by it); AUTOINCREMENT would cost a
    second write on every put. Older tombstones go."""
    con.executemany(f"DELETE FROM {table} WHERE id = ?", [(i,) for i in ids if i != top])
    if top is not None and top in ids:
        con.execute(
            f"DELETE FROM {table} WHERE state = {_DONE} AND finished IS NULL AND id < ?", (top,)
        )
        con.execute(
            f"UPDATE {table} SET state = {_DONE}, body = x'', finished = NULL, bump = NULL, "
            "expires = NULL WHERE id = ?",
            (top,),
        )


def _record(row: Sequence[Any]) -> Record:
    id_, state, priority, due, attempts, created, finished, deadline, expires, flags = row[:10]
    body = row[10]  # a mac may follow
    return Record(
        id_, State(state), Priority(priority), due, attempts, created, finished, deadline,
        expires, bool(flags & 1), body,
    )


#: When the next scheduled message comes due, a deadline window opens or an expiry passes:
#: SQLite's many-argument min() skips NULLs only as an aggregate, hence the UNION ALL.
_EVENTS: Final = [
    "SELECT (SELECT min(bump) FROM q.dq_message WHERE bump IS NOT NULL) AS at",
    "SELECT (SELECT min(expires) FROM q.dq_message WHERE expires > ?1)",
]
_NEXT_DUE: Final = "SELECT min(at) FROM (" + " UNION ALL ".join(
    [
        f"SELECT (SELECT min(due) FROM q.dq_message WHERE state = {_READY} "
        f"AND priority = {int(p)} AND due > ?1) AS at"
        for p in Priority
    ]
    + _EVENTS
) + ")"
_PUT_TOTAL: Final = put_total_sql("q.")
#: History: finished rows that retention may drop (dead letters stay until purged).
_HISTORY: Final = f"finished IS NOT NULL AND state IN ({_DONE}, {_EXPIRED})"
_NEXT_EVENT: Final = "SELECT min(at) FROM (" + " UNION ALL ".join(_EVENTS) + ")"


class PolicyVerbs:
    """Mixed into ``DiskcacheStore``; relies on its connections and transactions."""

    retention: Retention
    clock: Clock
    _uncollected: int
    _rng = random.Random()

    if TYPE_CHECKING:
        def _ledger(self) -> sqlite3.Connection: ...
        def _messages(self) -> sqlite3.Connection: ...
        def _busy_retry(self, step: str, fn: Callable[[], _T]) -> _T: ...
        def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...
        def _write(self, con: sqlite3.Connection, begin: str = ...) -> Any: ...
        def collect(self, *, wait: bool = True) -> int: ...
        def _result_mac(self, id_: int, body: bytes) -> bytes: ...
        def quarantined_count(self) -> int: ...
        def _authentic(self, rows: Sequence[Any]) -> list[Any]: ...

    # -- failures -------------------------------------------------------------------------

    @guarded
    def fail(self, attempts: Sequence[FailedAttempt], *, now: float) -> list[Verdict | None]:
        """Apply failed attempts under their policies: retry (maybe later, maybe demoted)
        or bury as dead; log each one. Stale tokens get ``None`` and change nothing."""
        if not attempts:
            return []
        con = self._ledger()
        out: list[Verdict | None] = []
        with self._write(con, _BOTH):
            for a in attempts:
                row = con.execute(
                    "SELECT d.attempts, d.state, d.errors, d.crashes, d.timeouts, m.priority, "
                    "m.due FROM dq_delivery AS d JOIN q.dq_message AS m ON m.id = d.id "
                    "WHERE d.id = ?",
                    (a.token.id,),
                ).fetchone()
                if row is None or row[0] != a.token.attempt or row[1] != _IN_FLIGHT:
                    out.append(None)
                    continue
                counters = dict(zip(CAUSES, row[2:5], strict=True))
                counters[a.cause] += 1
                verdict = decide(
                    a.policy, cause=a.cause, count=counters[a.cause], retryable=a.retryable,
                    delay=a.delay, priority=row[5], due=row[6], now=now, rng=self._rng,
                )
                state = _READY if verdict.retry else _DEAD
                con.execute(
                    "UPDATE dq_delivery SET state = ?, expiry = ?, errors = ?, crashes = ?, "
                    "timeouts = ? WHERE id = ?",
                    (state, None if verdict.retry else now, *counters.values(), a.token.id),
                )
                if (verdict.priority, verdict.due) != (row[5], row[6]):
                    con.execute(
                        "UPDATE q.dq_message SET priority = ?, due = ? WHERE id = ?",
                        (verdict.priority, verdict.due, a.token.id),
                    )
                if not verdict.retry:
                    self._uncollected += 1
                    result = a.result(verdict.failures) if callable(a.result) else a.result
                    if result is not None:
                        con.execute(
                            "INSERT OR REPLACE INTO dq_result (id, body, mac) VALUES (?, ?, ?)",
                            (a.token.id, result, self._result_mac(a.token.id, result)),
                        )
                if a.failure is not None:
                    con.execute(
                        "INSERT INTO dq_failure (time, msg, name, attempt, cause, type, "
                        "message, traceback, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        a.failure,
                    )
                out.append(verdict)
        return out

    @guarded
    def failures(
        self, *, since: float | None = None, limit: int | None = None, id: int | None = None
    ) -> list[Failure]:
        """Logged failed attempts, oldest first: since a time, of one message, the newest
        ``limit``."""
        where, args = ["time >= ?"], [since if since is not None else float("-inf")]
        if id is not None:
            where.append("msg = ?")
            args.append(id)
        rows = self._read(
            "SELECT time, msg, name, attempt, cause, type, message, traceback, pid "
            f"FROM dq_failure WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*args, -1 if limit is None else limit),
        )
        return [Failure(*r) for r in reversed(rows)]

    # -- time: deadlines and expiry ----------------------------------------------------------

    @guarded
    @drains_first
    def tick(self, now: float) -> list[int]:
        """Bump messages whose deadline window opened to HIGH and expire undelivered ones
        past their expiry. Returns the ids that expired; writes nothing when none is due."""
        bump = self._read("SELECT 1 FROM q.dq_message WHERE bump <= ? LIMIT 1", (now,))
        expired = [i for (i,) in self._read(
            "SELECT m.id FROM q.dq_message AS m INDEXED BY dq_message_expires "
            "LEFT JOIN dq_delivery AS d ON d.id = m.id "
            f"WHERE m.expires <= ? AND {_WAITING}",
            (now,),
        )]
        if not (bump or expired):
            return []
        con = self._ledger()
        with self._write(con, _BOTH):
            con.execute(
                f"UPDATE q.dq_message SET priority = {int(Priority.HIGH)}, bump = NULL "
                "WHERE bump <= ?",
                (now,),
            )
            if expired:
                con.execute(_EXPIRE, (now, now))
        self._uncollected += len(expired)
        return expired

    @guarded
    @drains_first
    def next_due(self, now: float) -> float | None:
        """The earliest time after ``now`` when something changes: a scheduled message
        comes due, a deadline window opens, an expiry passes. One index seek each, so time
        and memory stay flat however many messages wait."""
        # One statement (each a seek on its own index): five round trips into SQLite, each
        # giving up the GIL, cost a dispatcher that asks after every short lease ~100 us.
        ((at,),) = self._read(_NEXT_DUE, (now,))
        return at  # type: ignore[no-any-return]

    @guarded
    @drains_first
    def next_event(self, now: float) -> float | None:
        """The earliest time after ``now`` when a deadline window opens or an expiry
        passes: what ``tick`` acts on, without the due times of scheduled messages (a
        plain message put a moment after ``now`` would otherwise come due at once, and an
        owner ticking for it ticks again every round)."""
        ((at,),) = self._read(_NEXT_EVENT, (now,))
        return at  # type: ignore[no-any-return]

    # -- reads ---------------------------------------------------------------------------------

    @guarded
    @drains_first
    def counts(self) -> Counts:
        # Waiting messages per band, ready or scheduled: index range counts (no row is
        # read), less the few the ledger or an unapplied expiry takes out of them.
        now = self.clock.time()
        tally: dict[tuple[int, bool], int] = {}
        for band in Priority:
            for later, op in ((False, "<="), (True, ">")):
                (n,) = self._read(
                    f"SELECT count(*) FROM q.dq_message WHERE state = {_READY} "
                    f"AND priority = ? AND due {op} ?",
                    (int(band), now),
                )[0]
                tally[(int(band), later)] = n
        for prio, later, n in self._read(
            "SELECT m.priority, m.due > ?, count(*) FROM dq_delivery AS d "
            f"JOIN q.dq_message AS m ON m.id = d.id WHERE d.state != {_READY} "
            f"AND m.state = {_READY} GROUP BY 1, 2",
            (now,),
        ) + self._read(
            "SELECT m.priority, m.due > ?, count(*) FROM q.dq_message AS m "
            "INDEXED BY dq_message_expires LEFT JOIN dq_delivery AS d ON d.id = m.id "
            f"WHERE m.expires <= ? AND {_WAITING} GROUP BY 1, 2",
            (now, now),
        ):
            tally[(prio, bool(later))] -= n
        waiting = [(later, b, n) for (b, later), n in tally.items()]
        ready = sum(n for later, _, n in waiting if not later)
        by_priority = {p.name.lower(): 0 for p in Priority}
        for _, b, n in waiting:
            by_priority[Priority(b).name.lower()] += n
        con = self._ledger()
        firsts = self._busy_retry("read", lambda: [
            r[4] for band in Priority
            for r in con.execute(_FIRST, (int(band), now, now)).fetchall()
        ])
        oldest = min(firsts, default=None)
        ledger = dict(self._read("SELECT state, count(*) FROM dq_delivery GROUP BY state"))
        kept = dict(self._read(
            "SELECT state, count(*) FROM q.dq_message INDEXED BY dq_message_finished "
            "WHERE finished IS NOT NULL GROUP BY state"
        ))
        (put_total,) = self._read(_PUT_TOTAL)[0]
        meta = dict(self._read("SELECT name, value FROM dq_meta"))
        return Counts(
            ready=ready,
            in_flight=ledger.get(_IN_FLIGHT, 0),
            dead=kept.get(_DEAD, 0) + ledger.get(_DEAD, 0),
            put_total=put_total or 0,
            acked_total=meta["acked_total"],
            scheduled=sum(n for later, _, n in waiting if later),
            done=kept.get(_DONE, 0) + (ledger.get(_DONE, 0) if self.retention.keeps else 0),
            expired=kept.get(_EXPIRED, 0) + ledger.get(_EXPIRED, 0),
            late_total=meta.get("late_total", 0),
            by_priority=by_priority,
            quarantined=self.quarantined_count(),
            next_due=self.next_due(now),
            oldest_ready_age=None if oldest is None else max(0.0, now - oldest),
        )

    @guarded
    @drains_first
    def records(
        self,
        states: Sequence[State],
        *,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Finished messages (done, expired, dead) in ``states``, newest first."""
        if self._uncollected:
            self.collect()
        if self._collected:
            self.trim()
        marks = ",".join("?" * len(states))
        rows = self._read(
            f"{_RECORD} WHERE finished >= ? AND state IN ({marks}) "
            "ORDER BY finished DESC, id DESC LIMIT ?",
            (since if since is not None else float("-inf"), *map(int, states),
             -1 if limit is None else limit),
        )
        return [_record(r) for r in self._authentic(rows)]  # never a forged body

    @guarded
    @drains_first
    def record(self, id: int) -> Record | None:
        """One stored message, whatever its state (its state as the ledger says)."""
        rows = self._read(f"{_RECORD} WHERE id = ? AND length(body) > 0", (id,))
        if not self._authentic(rows):
            return None
        row = list(rows[0])
        ledger = self._read("SELECT state, attempts FROM dq_delivery WHERE id = ?", (id,))
        if ledger:
            row[1], row[4] = ledger[0]
        elif row[1] == _READY and row[3] > self.clock.time():
            row[1] = int(State.SCHEDULED)
        return _record(row)

    # -- repairs -----------------------------------------------------------------------------

    @guarded
    @drains_first
    def revive(self, ids: Sequence[int] | None, *, now: float) -> list[int]:
        """Dead messages (all when ``ids`` is None) back to ready, with fresh failure
        budgets; returns the ids revived."""
        self.collect()
        con = self._ledger()
        with self._write(con, _BOTH):
            if ids is None:
                found = [i for (i,) in con.execute(
                    f"SELECT id FROM q.dq_message WHERE state = {_DEAD} ORDER BY id"
                )]
            else:
                found = [i for i in ids if con.execute(
                    f"SELECT 1 FROM q.dq_message WHERE id = ? AND state = {_DEAD}", (i,)
                ).fetchone()]
            con.executemany(
                f"UPDATE q.dq_message SET state = {_READY}, finished = NULL, due = ? "
                "WHERE id = ?",
                [(now, i) for i in found],
            )
            con.executemany("DELETE FROM dq_delivery WHERE id = ?", [(i,) for i in found])
            con.executemany("DELETE FROM dq_result WHERE id = ?", [(i,) for i in found])
        return found

    @guarded
    @drains_first
    def purge(self, states: Sequence[State], *, older_than: float | None = None) -> int:
        """Delete finished messages in ``states`` that finished before ``older_than``
        (all of them when None); returns how many."""
        self.collect()
        con = self._ledger()
        marks = ",".join("?" * len(states))
        with self._write(con, _BOTH):
            (top,) = con.execute("SELECT max(id) FROM q.dq_message").fetchone()
            ids = [i for (i,) in con.execute(
                f"SELECT id FROM q.dq_message WHERE finished < ? AND state IN ({marks})",
                (older_than if older_than is not None else float("inf"), *map(int, states)),
            )]
            self._delete(con, ids, top)
        return len(ids)

    def _delete(self, con: sqlite3.Connection, ids: Sequence[int], top: int | None) -> None:
        drop_messages(con, "q.dq_message", ids, top)
        con.executemany("DELETE FROM dq_result WHERE id = ?", [(i,) for i in ids])

    @guarded
    def trim(self) -> None:
        """Apply the retention policy now (``collect`` does every ``TRIM_EVERY`` rows)."""
        con = self._messages()
        with self._write(con):
            (top,) = con.execute("SELECT max(id) FROM dq_message").fetchone()
            self._trim(con, top)

    def _trim(self, con: sqlite3.Connection, top: int) -> None:
        """Apply the retention policy to history; ``con`` is the message file, in a write
        transaction. Set-based: one ``DELETE`` over a range of the ``finished`` index (the
        age limit, and the count limit as the (finished, id) of its first row to go), not a
        statement per row (thousands per trim)."""
        self._collected = 0
        r = self.retention
        # What goes is a prefix of the (finished, id) order whichever limit is hit: the
        # older bound is the one that drops more.
        where = ""
        args: tuple[Any, ...] = ()
        if r.age is not None:
            where, args = "finished < ?", (self.clock.time() - r.age,)
        if r.count is not None:
            first = con.execute(
                f"SELECT finished, id FROM dq_message INDEXED BY dq_message_finished "
                f"WHERE {_HISTORY} ORDER BY finished DESC, id DESC LIMIT 1 OFFSET ?",
                (r.count,),
            ).fetchone()
            if first is not None and not (args and first[0] < args[0]):
                where, args = "(finished, id) <= (?, ?)", tuple(first)
        if where:
            where = f"{_HISTORY} AND {where}"
            # The newest row stays, as an empty tombstone (see drop_messages).
            if con.execute(f"SELECT 1 FROM dq_message WHERE id = ? AND {where}",
                           (top, *args)).fetchone():
                drop_messages(con, "dq_message", [top], top)
            con.execute(
                f"DELETE FROM dq_message INDEXED BY dq_message_finished WHERE {where} AND id != ?",
                (*args, top),
            )
        cutoff = self.clock.time() - r.age if r.age is not None else float("-inf")
        self._ledger().execute(
            "DELETE FROM dq_failure WHERE time < ? OR id <= "
            "(SELECT max(id) FROM dq_failure) - ?",
            (cutoff, FAILURE_LOG_MAX),
        )

    # -- the command line's reads and repairs (durableq ls, doctor) ------------------------

    @guarded
    @drains_first
    def listing(
        self, states: Sequence[State], *, now: float, after: int = 0, limit: int = 100
    ) -> list[Record]:
        """Messages in ``states`` with ids above ``after``, ascending, at most ``limit``: one
        page of a keyset walk (shorter when records failing their MAC are left out).
        Finished ones are listed whether or not the owner has collected them yet. Each
        state's query is an index range stopped by ``limit``, so a page costs the same
        whatever the backlog."""
        rows: list[Any] = []
        args = {"now": now, "after": after, "limit": limit}
        for state in set(states):
            for query in _LISTING.get(State(state), ()):
                rows += self._read(f"{_LISTED} {query}", args)  # type: ignore[arg-type]
        rows.sort(key=lambda r: r[0])
        return [_record(r) for r in self._authentic(rows[:limit])]  # never a forged body

    @guarded
    @drains_first
    def tallies(self) -> dict[str, int]:
        """The counts that cost an index seek or a count over a small set, never a scan
        of the backlog: lifetime totals, messages in flight, dead and expired. For
        refreshing views (``durableq top``); ``counts()`` is exact but scans waiting
        messages (about 1 s per million)."""
        (put_total,) = self._read(_PUT_TOTAL)[0]
        meta = dict(self._read("SELECT name, value FROM dq_meta"))
        ledger = dict(self._read("SELECT state, count(*) FROM dq_delivery GROUP BY state"))
        kept = dict(self._read(
            f"SELECT state, count(*) FROM q.dq_message WHERE state IN ({_DEAD}, {_EXPIRED}) "
            "GROUP BY state"
        ))
        return {
            "put_total": put_total or 0,
            "acked_total": meta.get("acked_total", 0),
            "late_total": meta.get("late_total", 0),
            "in_flight": ledger.get(_IN_FLIGHT, 0),
            "dead": ledger.get(_DEAD, 0) + kept.get(_DEAD, 0),
            "expired": ledger.get(_EXPIRED, 0) + kept.get(_EXPIRED, 0),
        }

    @guarded
    def expired_leases(self, before: float, limit: int = 100) -> list[tuple[int, float]]:
        """``(id, lease expiry)`` of in-flight messages whose lease ran out before
        ``before``, oldest id first: leases a live owner should have taken back."""
        rows = self._read(
            f"SELECT id, expiry FROM dq_delivery WHERE state = {_IN_FLIGHT} AND expiry < ? "
            "ORDER BY id LIMIT ?",
            (before, limit),
        )
        return [(i, e) for i, e in rows]

    @guarded
    def quarantine(self, ids: Sequence[int], *, now: float, reason: str) -> list[int]:
        """Bury waiting (ready or scheduled) messages among ``ids`` as dead, logging
        ``reason`` as their failure; in-flight and finished ones are left alone. Returns the
        ids buried. ``revive`` brings them back."""
        con = self._ledger()
        done: list[int] = []
        with self._write(con, _BOTH):
            for i in ids:
                row = con.execute(
                    "SELECT coalesce(d.attempts, m.attempts) FROM q.dq_message AS m "
                    f"LEFT JOIN dq_delivery AS d ON d.id = m.id WHERE m.id = ? AND {_WAITING}",
                    (i,),
                ).fetchone()
                if row is None:
                    continue
                con.execute(
                    "INSERT INTO dq_delivery (id, attempts, state, expiry) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, "
                    "expiry = excluded.expiry",
                    (i, row[0], _DEAD, now),
                )
                con.execute(
                    "INSERT INTO dq_failure (time, msg, name, attempt, cause, type, message, "
                    "traceback, pid) VALUES (?, ?, '', ?, 'error', 'Quarantined', ?, '', ?)",
                    (now, i, row[0], reason, os.getpid()),
                )
                done.append(i)
        self._uncollected += len(done)
        return done

    _collected: int


_LISTED: Final = f"""
SELECT m.id,
       CASE WHEN d.state IS NOT NULL AND d.state != {_READY} THEN d.state
            WHEN m.state = {_READY} AND m.due > :now THEN {int(State.SCHEDULED)}
            ELSE m.state END,
       m.priority, m.due, coalesce(d.attempts, m.attempts), m.created,
       coalesce(m.finished, CASE WHEN d.state != {_IN_FLIGHT} THEN d.expiry END),
       m.deadline, m.expires, m.flags | coalesce(d.flags, 0), m.body, m.mac
"""
_M_FIRST: Final = "FROM q.dq_message AS m LEFT JOIN dq_delivery AS d ON d.id = m.id WHERE"
_D_FIRST: Final = "FROM dq_delivery AS d JOIN q.dq_message AS m ON m.id = d.id WHERE"
_PAGE_M: Final = "AND m.id > :after ORDER BY m.id LIMIT :limit"
_PAGE_D: Final = "AND d.id > :after ORDER BY d.id LIMIT :limit"


def _finished(state: int) -> tuple[str, str]:
    # Collected into the message file, or still only in the ledger.
    return (
        f"{_M_FIRST} m.state = {state} AND m.finished IS NOT NULL {_PAGE_M}",
        f"{_D_FIRST} d.state = {state} AND m.state = {_READY} {_PAGE_D}",
    )


_LISTING: Final[dict[State, tuple[str, ...]]] = {
    State.READY: (f"{_M_FIRST} {_WAITING} AND m.due <= :now {_PAGE_M}",),
    State.SCHEDULED: (f"{_M_FIRST} {_WAITING} AND m.due > :now {_PAGE_M}",),
    State.IN_FLIGHT: (f"{_D_FIRST} d.state = {_IN_FLIGHT} {_PAGE_D}",),
    State.DONE: _finished(_DONE),
    State.DEAD: _finished(_DEAD),
    State.EXPIRED: _finished(_EXPIRED),
}
