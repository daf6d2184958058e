"""The embedded store: a diskcache directory whose SQLite database also holds the messages.

diskcache creates and configures the directory (WAL journal, settings, metadata) with
eviction turned off; messages live in the ``dq_message`` table of the same database, read
and written with prepared SQL on a per-thread connection because diskcache's key/value
calls cost ~4x a raw statement (see docs/design.md). Every verb is one ``BEGIN IMMEDIATE``
transaction: it fully happens or not at all. diskcache types never leave this module.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Final

import diskcache

from .._errors import ConfigurationError, StoreError, StoreTimeout
from .._records import Counts, Fault, Leased, LeaseToken, Priority, State

FORMAT: Final = 1
_FORMAT_KEY: Final = "durableq.format"
_DB: Final = "cache.db"  # diskcache's database file name
_SYNC: Final = {"normal": "NORMAL", "full": "FULL"}

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS dq_message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT {int(Priority.MEDIUM)},
    due REAL NOT NULL DEFAULT 0,
    key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expiry REAL,
    created REAL NOT NULL,
    body BLOB NOT NULL,
    error BLOB
);
CREATE INDEX IF NOT EXISTS dq_message_order ON dq_message (state, priority, due, id);
CREATE TABLE IF NOT EXISTS dq_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO dq_meta VALUES ('acked_total', 0);
CREATE TABLE IF NOT EXISTS dq_fault (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL
);
"""

_INSERT: Final = (
    "INSERT INTO dq_message (state, priority, due, created, body) "
    f"VALUES ({int(State.READY)}, ?, ?, ?, ?)"
)
_LEASE: Final = f"""
UPDATE dq_message
   SET state = {int(State.IN_FLIGHT)}, attempts = attempts + 1, lease_owner = ?, lease_expiry = ?
 WHERE id IN (SELECT id FROM dq_message
               WHERE state = {int(State.READY)} AND due <= ?
               ORDER BY priority, due, id LIMIT ?)
RETURNING priority, due, id, attempts, body
"""
_ACK: Final = (
    f"DELETE FROM dq_message WHERE id = ? AND attempts = ? AND state = {int(State.IN_FLIGHT)}"
)
_NACK: Final = (
    "UPDATE dq_message SET state = ?, lease_owner = NULL, lease_expiry = NULL "
    f"WHERE id = ? AND attempts = ? AND state = {int(State.IN_FLIGHT)}"
)


class DiskcacheStore:
    """Messages in a diskcache directory; survives SIGKILL of any process (``sync="full"``:
    also power loss).

    Args:
        path: the queue directory, created 0700 when missing.
        sync: ``"normal"`` survives process crashes; ``"full"`` fsyncs every commit.
        size_limit: passed to diskcache; eviction is always off, so it never drops a message.
        timeout: seconds to wait for the database write lock before ``StoreTimeout``.
    """

    shared: ClassVar[bool] = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: str = "normal",
        size_limit: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        if sync not in _SYNC:
            raise ConfigurationError(f"sync must be 'normal' or 'full', not {sync!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.sync = sync
        self.timeout = timeout
        self._local = threading.local()
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        try:
            # Never evict: a queue that drops work loses data, whatever size_limit says.
            cache = diskcache.Cache(
                self.path,
                eviction_policy="none",
                cull_limit=0,
                size_limit=size_limit if size_limit is not None else 2**62,
                sqlite_synchronous=2 if sync == "full" else 1,
            )
            try:
                cache.add(_FORMAT_KEY, FORMAT)
                stored = cache.get(_FORMAT_KEY)
            finally:
                cache.close()
            if stored != FORMAT:
                raise ConfigurationError(
                    f"{self.path} holds queue format {stored!r}; this durableq reads {FORMAT}"
                )
            self._connection().executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open queue store {self.path}: {exc}") from exc

    # -- connections and transactions -------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        con: sqlite3.Connection | None = getattr(local, "con", None)
        if con is None or local.pid != os.getpid():
            # A connection must never cross fork(): open a fresh one in each process.
            con = sqlite3.connect(
                os.path.join(self.path, _DB),
                timeout=self.timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            con.execute("PRAGMA journal_mode = WAL")
            con.execute(f"PRAGMA synchronous = {_SYNC[self.sync]}")
            local.con, local.pid = con, os.getpid()
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        con = self._connection()
        try:
            con.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
        except sqlite3.Error as exc:
            raise self._error("begin", exc) from exc
        try:
            yield con
        except BaseException as exc:
            con.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._error("write", exc) from exc
            raise
        try:
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise self._error("commit", exc) from exc

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._error("read", exc) from exc

    def _error(self, step: str, exc: sqlite3.Error) -> StoreError:
        if "locked" in str(exc) or "busy" in str(exc):
            return StoreTimeout(
                f"{self.path} stayed locked for {self.timeout:g} s during {step}; "
                "raise timeout= or look for a stuck process"
            )
        return StoreError(f"{step} failed on {self.path}: {exc}")

    # -- the verbs ----------------------------------------------------------------------

    def put_many(
        self, payloads: Sequence[bytes], *, priority: int = Priority.MEDIUM, due: float = 0.0
    ) -> list[int]:
        now = time.time()
        rows = [(priority, due, now, payload) for payload in payloads]
        with self._write() as con:
            con.executemany(_INSERT, rows)
            (last,) = con.execute("SELECT last_insert_rowid()").fetchone()
        return list(range(last - len(rows) + 1, last + 1))

    def lease(self, owner: str, n: int, *, now: float, ttl: float) -> list[Leased]:
        with self._write() as con:
            rows = con.execute(_LEASE, (owner, now + ttl, now, n)).fetchall()
        rows.sort()  # RETURNING has no order: restore (priority, due, id)
        return [Leased(LeaseToken(row[2], row[3]), row[4]) for row in rows]

    def ack(self, tokens: Sequence[LeaseToken]) -> int:
        if not tokens:
            return 0
        with self._write() as con:
            applied = con.executemany(_ACK, tokens).rowcount
            con.execute(
                "UPDATE dq_meta SET value = value + ? WHERE name = 'acked_total'", (applied,)
            )
        return applied

    def nack(self, tokens: Sequence[LeaseToken], *, requeue: bool) -> int:
        if not tokens:
            return 0
        state = int(State.READY if requeue else State.DEAD)
        with self._write() as con:
            return con.executemany(_NACK, [(state, *t) for t in tokens]).rowcount

    def requeue_expired(self, now: float) -> int:
        with self._write() as con:
            return con.execute(
                f"UPDATE dq_message SET state = {int(State.READY)}, lease_owner = NULL, "
                f"lease_expiry = NULL WHERE state = {int(State.IN_FLIGHT)} AND lease_expiry < ?",
                (now,),
            ).rowcount

    def has_ready(self, now: float) -> bool:
        return bool(
            self._read(
                f"SELECT 1 FROM dq_message WHERE state = {int(State.READY)} AND due <= ? LIMIT 1",
                (now,),
            )
        )

    def counts(self) -> Counts:
        by_state = dict(self._read("SELECT state, count(*) FROM dq_message GROUP BY state"))
        put_total = self._read("SELECT seq FROM sqlite_sequence WHERE name = 'dq_message'")
        (acked,) = self._read("SELECT value FROM dq_meta WHERE name = 'acked_total'")[0]
        return Counts(
            ready=by_state.get(State.READY, 0),
            in_flight=by_state.get(State.IN_FLIGHT, 0),
            dead=by_state.get(State.DEAD, 0),
            put_total=put_total[0][0] if put_total else 0,
            acked_total=acked,
        )

    def record_fault(self, fault: Fault) -> None:
        try:
            with self._write() as con:
                con.execute(
                    "INSERT INTO dq_fault (time, kind, detail) VALUES (?, ?, ?)",
                    (fault.time, fault.kind, fault.detail),
                )
        except StoreError:
            pass  # the store is what failed; the caller keeps the fault in memory too

    def faults(self, limit: int = 100) -> list[Fault]:
        rows = self._read(
            "SELECT kind, time, detail FROM dq_fault ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [Fault(*row) for row in reversed(rows)]

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None and self._local.pid == os.getpid():
            con.close()
        self._local = threading.local()

    # -- pickling: by path, reconnecting in the new process --------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "sync": self.sync, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.sync, self.timeout = state["path"], state["sync"], state["timeout"]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"DiskcacheStore({self.path!r}, sync={self.sync!r})"
