"""``PostgresStore``: the ``Store`` and ``CommandStore`` contracts on PostgreSQL (psycopg 3).

One table of messages with their states (``_postgres_sql``), created on first use by
migrations under an advisory lock. Every verb is one transaction; ``lease`` takes ready
rows with ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent peers never wait for each
other nor share a message; ``fail`` locks the rows it judges and calls the pure policy
(``_policy.decide``) on the counters it read. Commits notify the queue's channel
(``LISTEN``/``NOTIFY``) for whoever waits on it.

Every process that opens the store is a peer: leases live in the table with their
deadlines, and a peer's ``lease`` or ``tick`` returns to ready those whose deadline
passed. Lost connections are retried with backoff for up to ``timeout`` seconds, then
raise ``StoreError``; a put or lease whose commit reply was lost is replayed by its
request id.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .._clock import SYSTEM, Clock
from .._errors import ConfigurationError, StoreError
from .._policy import FailedAttempt, Retention, Verdict, decide
from .._records import Counts, Failure, Fault, Leased, LeaseToken, Priority, Record, State
from . import _postgres_sql as sql
from ._postgres_commands import PostgresCommands
from ._put_watch import PostgresPutWatch
from ._server import check_options, check_payloads
from ._server_lock import PostgresOwnerLock
from ._sqlite_policy import FAILURE_LOG_MAX

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")
_FAULTS_MAX = 1000
#: Seconds a fault waits for an unreachable server: the fault Event already says it, and
#: the dispatcher that records it must not stall.
FAULT_PATIENCE = 0.5
#: Requests older than this are not replayed (a retry comes within ``timeout``).
_REQUEST_KEEP = 600.0
#: Acks between two trims of the history to its count (the age is trimmed by ``tick``).
_TRIM_EVERY = 100
#: Puts and leases (in one process) between two sweeps of requests too old to replay.
_SWEEP_EVERY = 1000
_CAUSE_COLUMN = {"error": "failed_error", "crash": "failed_crash", "timeout": "failed_timeout"}
_FIELDS = "id, state, priority, due, attempts, created, finished, deadline, expires, late, payload"


def import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigurationError(
            'postgresql:// needs "psycopg": pip install "durableq[postgres]"'
        ) from exc
    return psycopg


def channel(*parts: str) -> str:
    """A LISTEN/NOTIFY channel name for ``parts`` (identifiers are at most 63 bytes)."""
    return "dq_" + hashlib.blake2b("\0".join(parts).encode(), digest_size=12).hexdigest()


def results_channel(queue: str) -> str:
    """The channel notified when results of ``queue`` are kept (``watch_results``)."""
    return channel("\0results", queue)


def _record(row: Sequence[Any], now: float) -> Record:
    id_, st, pr, due, at, cr, fi, dl, ex, lt, p = row
    state = State(st)
    if state == State.READY and due > now:
        state = State.SCHEDULED
    return Record(id_, state, Priority(pr), due, at, cr, fi, dl, ex, lt, bytes(p))


class PostgresStore(PostgresCommands):
    """Messages and commands in PostgreSQL, shared by every process and host.

    Args:
        url: a libpq connection string, e.g. ``"postgresql://user@db-host/app"``.
        name: the queue's name (rows of many queues share the tables).
        timeout: seconds to keep retrying while the server is unreachable (restarting)
            before raising ``StoreError``.

    Raises:
        ConfigurationError: psycopg is not installed.
    """

    shared: ClassVar[bool] = True
    #: Every process that opens the store is a peer (see ``RedisStore.peers``).
    peers: ClassVar[bool] = True

    def __init__(self, url: str, *, name: str = "durableq", timeout: float = 10.0) -> None:
        import_psycopg()
        timeout = check_options(name, timeout)
        self.url, self.name, self.timeout = url, name, timeout
        self._init_process_state()

    def _init_process_state(self) -> None:
        self.retention = Retention()
        self.clock: Clock = SYSTEM
        self._local = threading.local()
        self._lock = threading.Lock()
        self._cons: list[tuple[int, psycopg.Connection[Any]]] = []  # every thread's
        self._ready = False  # schema checked by this process
        self._rng = random.Random()
        self._acks_since_trim = 0
        self._requests = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.name, self.timeout = state["url"], state["name"], state["timeout"]
        self._init_process_state()

    def __repr__(self) -> str:
        return f"PostgresStore(name={self.name!r})"

    # -- connections, migrations and retries ---------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection (transactions are explicit)."""
        pg = import_psycopg()
        con: psycopg.Connection[Any] = pg.connect(self.url, autocommit=True, connect_timeout=5)
        return con

    def _connection(self) -> psycopg.Connection[Any]:
        local = self._local
        con: psycopg.Connection[Any] | None = getattr(local, "con", None)
        if con is None or local.pid != os.getpid() or con.closed:
            con = self.connect()
            local.con, local.pid = con, os.getpid()
            with self._lock:
                self._cons.append((os.getpid(), con))
            if not self._ready:
                self._migrate(con)
                self._ready = True
        return con

    def _migrate(self, con: psycopg.Connection[Any]) -> None:
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (sql.MIGRATION_LOCK,))
            con.execute("CREATE TABLE IF NOT EXISTS durableq_schema (version integer NOT NULL)")
            row = con.execute("SELECT version FROM durableq_schema").fetchone()
            if row is None:
                con.execute("INSERT INTO durableq_schema VALUES (0)")
            version = 0 if row is None else int(row[0])
            for number, migration in enumerate(sql.MIGRATIONS[version:], version + 1):
                con.execute(migration.encode())  # no parameters: several statements
                con.execute("UPDATE durableq_schema SET version = %s", (number,))
            con.execute("INSERT INTO durableq_queue (queue) VALUES (%s) ON CONFLICT DO NOTHING",
                        (self.name,))

    def _tx(self, what: str, fn: Callable[[psycopg.Connection[Any]], T],
            patience: float | None = None) -> T:
        """Run ``fn`` in one transaction, retrying while the server is unreachable for up
        to ``patience`` (default ``timeout``) seconds."""
        pg = import_psycopg()
        deadline = time.monotonic() + (self.timeout if patience is None else patience)
        pause = 0.02
        while True:
            try:
                con = self._connection()
                with con.transaction():
                    return fn(con)
            except pg.OperationalError as exc:
                # Connection lost (server restarting), or a serialization failure: again.
                self._drop_connection()
                if time.monotonic() + pause > deadline:
                    raise StoreError(
                        f"postgres store {self.name!r} unreachable for {self.timeout:g} s "
                        f"during {what}: {exc}"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
            except pg.Error as exc:
                raise StoreError(f"postgres store {self.name!r} failed {what}: {exc}") from exc

    def _drop_connection(self) -> None:
        con = getattr(self._local, "con", None)
        self._local.con = None
        if con is not None and self._local.pid == os.getpid():
            with self._lock:
                self._cons = [(p, c) for p, c in self._cons if c is not con]
            try:
                con.close()
            except Exception:
                pass  # already broken: nothing more to release

    def _one(self, what: str, query: str, params: Any = None) -> Any:
        return self._tx(what, lambda con: con.execute(query, params).fetchone())

    def _all(self, what: str, query: str, params: Any = None) -> list[Any]:
        return self._tx(what, lambda con: con.execute(query, params).fetchall())

    def _replayed(self, con: psycopg.Connection[Any], request: str) -> Any:
        return con.execute(
            "SELECT ids, attempts FROM durableq_request WHERE queue = %s AND request = %s",
            (self.name, request),
        ).fetchone()

    def _remember(self, con: psycopg.Connection[Any], request: str, ids: list[int],
                  attempts: list[int]) -> None:
        """Keep what a put or lease did, so a retry after a lost reply returns the same."""
        now = time.time()
        con.execute("INSERT INTO durableq_request VALUES (%s, %s, %s, %s, %s)",
                    (self.name, request, ids, attempts, now))
        self._requests += 1
        if self._requests % _SWEEP_EVERY == 0:
            con.execute("DELETE FROM durableq_request WHERE queue = %s AND made < %s",
                        (self.name, now - _REQUEST_KEEP))

    # -- the Store verbs -----------------------------------------------------------------

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
        if not payloads:
            return []
        check_payloads(payloads)
        request, now, q = uuid.uuid4().hex, self.clock.time(), self.name

        def put(con: psycopg.Connection[Any]) -> list[int]:
            prev = self._replayed(con, request)
            if prev is not None:
                return list(prev[0])
            (last,) = con.execute(
                "UPDATE durableq_queue SET last_id = last_id + %s WHERE queue = %s "
                "RETURNING last_id", (len(payloads), q),
            ).fetchone() or (0,)
            ids = list(range(last - len(payloads) + 1, last + 1))
            with con.cursor() as cur:
                cur.executemany(
                    "INSERT INTO durableq_message (queue, id, priority, due, created, deadline,"
                    " bump, expires, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(q, i, int(priority), due, now, deadline, bump, expires, bytes(p))
                     for i, p in zip(ids, payloads, strict=True)],
                )
            self._remember(con, request, ids, [])
            con.execute("SELECT pg_notify(%s, '')", (channel(q),))
            return ids

        return self._tx("put", put)

    def lease(
        self, owner: str, n: int, *, now: float, ttl: float, max_priority: int = Priority.LOW
    ) -> list[Leased]:
        if n <= 0:
            return []
        request = uuid.uuid4().hex

        def lease(con: psycopg.Connection[Any]) -> list[Leased]:
            prev = self._replayed(con, request)
            if prev is not None:
                rows = con.execute(
                    "SELECT id, attempts, payload FROM durableq_message WHERE queue = %s "
                    "AND state = 3 AND id = ANY(%s) ORDER BY priority, due, id",
                    (self.name, prev[0]),
                ).fetchall()
                held = set(zip(prev[0], prev[1], strict=True))
                return [Leased(LeaseToken(i, a), bytes(p)) for i, a, p in rows if (i, a) in held]
            # Leases whose deadline passed (their peer died) go back first.
            con.execute("UPDATE durableq_message SET state = 0, lease_deadline = NULL "
                        "WHERE queue = %s AND state = 3 AND lease_deadline < %s",
                        (self.name, now))
            rows = con.execute(sql.LEASE, {
                "q": self.name, "maxp": int(max_priority), "now": now, "until": now + ttl,
                "n": n,
            }).fetchall()
            rows.sort(key=lambda r: (r[3], r[4], r[0]))
            late = sum(1 for r in rows if r[5])
            if late:
                con.execute("UPDATE durableq_queue SET late = late + %s WHERE queue = %s",
                            (late, self.name))
            if rows:
                self._remember(con, request, [r[0] for r in rows], [r[1] for r in rows])
            return [Leased(LeaseToken(r[0], r[1]), bytes(r[2])) for r in rows]

        return self._tx("lease", lease)

    def _locked(self, con: psycopg.Connection[Any], tokens: Sequence[LeaseToken]) -> list[int]:
        return [r[0] for r in con.execute(sql.LEASED, {
            "q": self.name, "ids": [t[0] for t in tokens], "attempts": [t[1] for t in tokens],
        })]

    def _finish(self, con: psycopg.Connection[Any], ids: list[int], state: State,
                now: float) -> None:
        if state != State.DEAD and not self.retention.keeps:
            con.execute("DELETE FROM durableq_message WHERE queue = %s AND id = ANY(%s)",
                        (self.name, ids))
        else:
            con.execute(
                "UPDATE durableq_message SET state = %s, finished = %s, lease_deadline = NULL "
                "WHERE queue = %s AND id = ANY(%s)", (int(state), now, self.name, ids),
            )

    def _keep_results(self, con: psycopg.Connection[Any], tokens: Sequence[LeaseToken],
                      results: Sequence[bytes] | None, applied: list[int]) -> None:
        if results is None or not applied:
            return
        wanted = set(applied)
        rows = [(self.name, t[0], bytes(r)) for t, r in zip(tokens, results, strict=True)
                if t[0] in wanted]
        with con.cursor() as cur:
            cur.executemany(
                "INSERT INTO durableq_result VALUES (%s, %s, %s) ON CONFLICT (queue, id) "
                "DO UPDATE SET result = excluded.result", rows,
            )
        con.execute("SELECT pg_notify(%s, '')", (results_channel(self.name),))

    def _settle(self, tokens: Sequence[LeaseToken], state: State,
                results: Sequence[bytes] | None) -> int:
        if not tokens:
            return 0
        now = self.clock.time()

        def settle(con: psycopg.Connection[Any]) -> int:
            ids = self._locked(con, tokens)
            if not ids:
                return 0
            if state == State.READY:
                con.execute(
                    "UPDATE durableq_message SET state = 0, lease_deadline = NULL "
                    "WHERE queue = %s AND id = ANY(%s)", (self.name, ids),
                )
            else:
                self._finish(con, ids, state, now)
            self._keep_results(con, tokens, results, ids)
            if state == State.DONE:
                con.execute("UPDATE durableq_queue SET acked = acked + %s WHERE queue = %s",
                            (len(ids), self.name))
            if state == State.READY:
                con.execute("SELECT pg_notify(%s, '')", (channel(self.name),))
            return len(ids)

        applied = self._tx("settle", settle)
        if state == State.DONE:
            self._acks_since_trim += applied
            if self._acks_since_trim >= _TRIM_EVERY:
                self._acks_since_trim = 0
                self._tx("trim", lambda con: self._trim(con, now))
        return applied

    def ack(self, tokens: Sequence[LeaseToken], *, results: Sequence[bytes] | None = None) -> int:
        return self._settle(tokens, State.DONE, results)

    def nack(
        self,
        tokens: Sequence[LeaseToken],
        *,
        requeue: bool,
        results: Sequence[bytes] | None = None,
    ) -> int:
        return self._settle(tokens, State.READY if requeue else State.DEAD, results)

    def fail(self, attempts: Sequence[FailedAttempt], *, now: float) -> list[Verdict | None]:
        if not attempts:
            return []

        def fail(con: psycopg.Connection[Any]) -> list[Verdict | None]:
            ids = [a.token.id for a in attempts]
            rows = {r[0]: r for r in con.execute(
                "SELECT id, state, attempts, priority, due, failed_error, failed_crash, "
                "failed_timeout FROM durableq_message WHERE queue = %s AND id = ANY(%s) "
                "FOR UPDATE", (self.name, ids),
            )}
            out: list[Verdict | None] = []
            for a in attempts:
                row = rows.get(a.token.id)
                if row is None or row[1] != State.IN_FLIGHT or row[2] != a.token.attempt:
                    out.append(None)
                    continue
                column = _CAUSE_COLUMN[a.cause]
                count = row[5 + list(_CAUSE_COLUMN).index(a.cause)] + 1
                v = decide(a.policy, cause=a.cause, count=count, retryable=a.retryable,
                           delay=a.delay, priority=row[3], due=row[4], now=now, rng=self._rng)
                con.execute(
                    f"UPDATE durableq_message SET {column} = %s, priority = %s, due = %s, "
                    "state = %s, finished = %s, lease_deadline = NULL "
                    "WHERE queue = %s AND id = %s",
                    (count, v.priority, v.due, int(State.READY if v.retry else State.DEAD),
                     None if v.retry else now, self.name, a.token.id),
                )
                result = a.result(v.failures) if callable(a.result) else a.result
                if not v.retry and result is not None:
                    self._keep_results(con, [a.token], [result], [a.token.id])
                if a.failure is not None:
                    con.execute(
                        "INSERT INTO durableq_failure (queue, time, id, name, attempt, cause, "
                        "type, message, traceback, pid) VALUES (%s, %s, %s, %s, %s, %s, %s, "
                        "%s, %s, %s)", (self.name, *a.failure),
                    )
                # A row reaches the same verdict only once: mark it as no longer leased.
                rows[a.token.id] = (*row[:1], -1, *row[2:])
                out.append(v)
            if any(v is not None and v.retry for v in out):
                con.execute("SELECT pg_notify(%s, '')", (channel(self.name),))
            self._trim(con, now)
            return out

        return self._tx("fail", fail)

    def failures(
        self, *, since: float | None = None, limit: int | None = None, id: int | None = None
    ) -> list[Failure]:
        if limit == 0:
            return []
        rows = self._all("failures", (
            "SELECT * FROM (SELECT seq, time, id, name, attempt, cause, type, message, "
            "traceback, pid FROM durableq_failure WHERE queue = %(q)s AND time >= %(since)s "
            "AND (%(id)s::bigint IS NULL OR id = %(id)s) ORDER BY seq DESC LIMIT %(limit)s) "
            "AS newest ORDER BY seq"
        ), {"q": self.name, "since": float("-inf") if since is None else since, "id": id,
            "limit": limit})
        return [Failure(*r[1:]) for r in rows]

    def _trim(self, con: psycopg.Connection[Any], now: float) -> None:
        r, q = self.retention, self.name
        if r.age is not None:
            cutoff = now - r.age
            con.execute("DELETE FROM durableq_message WHERE queue = %s AND state IN (4, 7) "
                        "AND finished < %s", (q, cutoff))
            con.execute("DELETE FROM durableq_failure WHERE queue = %s AND time < %s",
                        (q, cutoff))
        if r.count is not None:
            con.execute(
                "DELETE FROM durableq_message WHERE queue = %(q)s AND state IN (4, 7) AND "
                "(finished, id) < (SELECT finished, id FROM durableq_message WHERE queue = "
                "%(q)s AND state IN (4, 7) AND finished IS NOT NULL "
                "ORDER BY finished DESC, id DESC OFFSET %(n)s LIMIT 1)",
                {"q": q, "n": max(r.count - 1, 0)},
            )
        con.execute(
            "DELETE FROM durableq_failure WHERE queue = %(q)s AND seq <= (SELECT seq FROM "
            "durableq_failure WHERE queue = %(q)s ORDER BY seq DESC OFFSET %(n)s LIMIT 1)",
            {"q": q, "n": FAILURE_LOG_MAX},
        )

    def tick(self, now: float) -> list[int]:
        def tick(con: psycopg.Connection[Any]) -> list[int]:
            q = self.name
            con.execute("UPDATE durableq_message SET priority = 0, bump = NULL "
                        "WHERE queue = %s AND bump <= %s", (q, now))
            ids = [r[0] for r in con.execute(
                "SELECT id FROM durableq_message WHERE queue = %s AND state = 0 "
                "AND expires <= %s FOR UPDATE", (q, now),
            )]
            if ids:
                self._finish(con, ids, State.EXPIRED, now)
            requeued = con.execute(
                "UPDATE durableq_message SET state = 0, lease_deadline = NULL WHERE queue = %s "
                "AND state = 3 AND lease_deadline < %s", (q, now),
            ).rowcount
            if requeued:
                con.execute("SELECT pg_notify(%s, '')", (channel(q),))
            con.execute("DELETE FROM durableq_request WHERE queue = %s AND made < %s",
                        (q, time.time() - _REQUEST_KEEP))
            self._trim(con, now)
            return sorted(ids)

        return self._tx("tick", tick)

    def records(
        self, states: Sequence[State], *, since: float | None = None, limit: int | None = None
    ) -> list[Record]:
        rows = self._all("records", (
            f"SELECT {_FIELDS} FROM durableq_message WHERE queue = %s AND state = ANY(%s) "
            "AND finished IS NOT NULL AND finished >= %s ORDER BY finished DESC, id DESC "
            "LIMIT %s"
        ), (self.name, [int(s) for s in states],
            float("-inf") if since is None else since, limit))
        now = self.clock.time()
        return [_record(r, now) for r in rows]

    def record(self, id: int) -> Record | None:
        row = self._one("record", f"SELECT {_FIELDS} FROM durableq_message WHERE queue = %s "
                        "AND id = %s", (self.name, id))
        return None if row is None else _record(row, self.clock.time())

    def revive(self, ids: Sequence[int] | None, *, now: float) -> list[int]:
        def revive(con: psycopg.Connection[Any]) -> list[int]:
            found = [r[0] for r in con.execute(
                "UPDATE durableq_message SET state = 0, finished = NULL, due = %s, "
                "failed_error = 0, failed_crash = 0, failed_timeout = 0 WHERE queue = %s "
                "AND state = 6 AND (%s::bigint[] IS NULL OR id = ANY(%s)) RETURNING id",
                (now, self.name, None if ids is None else list(ids),
                 None if ids is None else list(ids)),
            )]
            con.execute("DELETE FROM durableq_result WHERE queue = %s AND id = ANY(%s)",
                        (self.name, found))
            if found:
                con.execute("SELECT pg_notify(%s, '')", (channel(self.name),))
            return sorted(found)

        return self._tx("revive", revive)

    def purge(self, states: Sequence[State], *, older_than: float | None = None) -> int:
        def purge(con: psycopg.Connection[Any]) -> int:
            ids = [r[0] for r in con.execute(
                "DELETE FROM durableq_message WHERE queue = %s AND state = ANY(%s) AND "
                "finished IS NOT NULL AND finished < %s RETURNING id",
                (self.name, [int(s) for s in states],
                 float("inf") if older_than is None else older_than),
            )]
            con.execute("DELETE FROM durableq_result WHERE queue = %s AND id = ANY(%s)",
                        (self.name, ids))
            return len(ids)

        return self._tx("purge", purge)

    def discard(self, ids: Sequence[int]) -> int:
        return self._tx("discard", lambda con: con.execute(
            "DELETE FROM durableq_message WHERE queue = %s AND state = 0 AND id = ANY(%s)",
            (self.name, list(ids)),
        ).rowcount)

    def unfinished(self, upto: int) -> list[int]:
        return [r[0] for r in self._all(
            "unfinished", "SELECT id FROM durableq_message WHERE queue = %s AND state IN "
            "(0, 3) AND id <= %s ORDER BY id", (self.name, upto),
        )]

    def results(self, upto: int) -> dict[int, bytes]:
        return {r[0]: bytes(r[1]) for r in self._all(
            "results", "SELECT id, result FROM durableq_result WHERE queue = %s AND id <= %s",
            (self.name, upto),
        )}

    def extend_leases(self, tokens: Sequence[LeaseToken], *, until: float) -> int:
        """Push the deadline of the leases still held to ``until``; returns how many."""
        if not tokens:
            return 0

        def extend(con: psycopg.Connection[Any]) -> int:
            ids = self._locked(con, tokens)
            if ids:
                con.execute("UPDATE durableq_message SET lease_deadline = %s WHERE queue = %s "
                            "AND id = ANY(%s)", (until, self.name, ids))
            return len(ids)

        return self._tx("extend", extend)

    def results_of(self, ids: Sequence[int]) -> dict[int, bytes]:
        return {r[0]: bytes(r[1]) for r in self._all(
            "results", "SELECT id, result FROM durableq_result WHERE queue = %s AND "
            "id = ANY(%s)", (self.name, list(ids)),
        )} if ids else {}

    def forget(self, ids: Sequence[int]) -> int:
        return self._tx("forget", lambda con: con.execute(
            "DELETE FROM durableq_result WHERE queue = %s AND id = ANY(%s)",
            (self.name, list(ids)),
        ).rowcount)

    def requeue_expired(self, now: float) -> int:
        def requeue(con: psycopg.Connection[Any]) -> int:
            n = con.execute(
                "UPDATE durableq_message SET state = 0, lease_deadline = NULL WHERE queue = %s "
                "AND state = 3 AND lease_deadline < %s", (self.name, now),
            ).rowcount
            if n:
                con.execute("SELECT pg_notify(%s, '')", (channel(self.name),))
            return n

        return self._tx("requeue_expired", requeue)

    def has_ready(self, now: float) -> bool:
        return self._one("has_ready", (
            "SELECT EXISTS (SELECT 1 FROM durableq_message WHERE queue = %(q)s AND state = 0 "
            "AND due <= %(now)s AND (expires IS NULL OR expires > %(now)s))"
        ), {"q": self.name, "now": now})[0] is True

    def next_due(self, now: float) -> float | None:
        """Also the earliest lease deadline: a peer's expired lease is returned by ``tick``."""
        found = self._one("next_due", sql.NEXT_DUE, {"q": self.name, "now": now})[0]
        return None if found is None else float(found)

    def counts(self) -> Counts:
        now = self.clock.time()
        rows = self._all("counts", sql.COUNTS, {"q": self.name, "now": now})
        totals = self._one("counts", "SELECT last_id, acked, late FROM durableq_queue "
                           "WHERE queue = %s", (self.name,)) or (0, 0, 0)
        waiting = [r for r in rows if r[0] == State.READY]
        by_state: dict[int, int] = {}
        for r in rows:
            by_state[r[0]] = by_state.get(r[0], 0) + r[3]
        by_priority = {p.name.lower(): 0 for p in Priority}
        for r in waiting:
            by_priority[Priority(r[1]).name.lower()] += r[3]
        oldest = min((r[4] for r in waiting if r[2]), default=None)
        ready = sum(r[3] for r in waiting if r[2])
        return Counts(
            ready=ready,
            in_flight=by_state.get(State.IN_FLIGHT, 0),
            dead=by_state.get(State.DEAD, 0),
            put_total=totals[0],
            acked_total=totals[1],
            scheduled=by_state.get(State.READY, 0) - ready,
            done=by_state.get(State.DONE, 0),
            expired=by_state.get(State.EXPIRED, 0),
            late_total=totals[2],
            by_priority=by_priority,
            next_due=self.next_due(now),
            oldest_ready_age=None if oldest is None else max(0.0, now - oldest),
        )

    def record_fault(self, fault: Fault) -> None:
        def record(con: psycopg.Connection[Any]) -> None:
            con.execute("INSERT INTO durableq_fault (queue, kind, time, detail) "
                        "VALUES (%s, %s, %s, %s)",
                        (self.name, fault.kind, fault.time, fault.detail))
            con.execute(
                "DELETE FROM durableq_fault WHERE queue = %(q)s AND seq <= (SELECT seq FROM "
                "durableq_fault WHERE queue = %(q)s ORDER BY seq DESC OFFSET %(n)s LIMIT 1)",
                {"q": self.name, "n": _FAULTS_MAX},
            )

        try:
            self._tx("record_fault", record, FAULT_PATIENCE)
        except StoreError:
            pass  # best effort: the fault Event and the process's own list still say it

    def faults(self, limit: int = 100) -> list[Fault]:
        rows = self._all("faults", (
            "SELECT * FROM (SELECT seq, kind, time, detail FROM durableq_fault WHERE queue = "
            "%s ORDER BY seq DESC LIMIT %s) AS newest ORDER BY seq"
        ), (self.name, limit))
        return [Fault(*r[1:]) for r in rows]

    def close(self) -> None:
        """Close every connection this process opened (one per thread that used it)."""
        with self._lock:
            cons, self._cons = self._cons, []
        self._local = threading.local()
        for pid, con in cons:
            if pid == os.getpid():
                con.close()

    def owner_lock(self, *, wait: bool) -> PostgresOwnerLock:
        """The queue's exclusive-owner lock (``Queue(exclusive=True)``)."""
        return PostgresOwnerLock(self, wait=wait)

    def watch_puts(self) -> PostgresPutWatch:
        """A ``LISTEN`` that wakes whoever waits on it when messages become ready."""
        return PostgresPutWatch(self)

    def watch_results(self) -> PostgresPutWatch:
        """A ``LISTEN`` that wakes whoever waits on it when results are kept."""
        return PostgresPutWatch(self, results=True)

    def drop(self) -> None:
        """Delete every row of this queue (messages, commands, logs). Irreversible."""
        def drop(con: psycopg.Connection[Any]) -> None:
            for table in ("message", "result", "failure", "fault", "request", "command"):
                con.execute(f"DELETE FROM durableq_{table} WHERE queue = %s", (self.name,))
            con.execute("UPDATE durableq_queue SET last_id = 0, acked = 0, late = 0, "
                        "command_last_id = 0 WHERE queue = %s", (self.name,))

        self._tx("drop", drop)
