"""``RedisStore``: the ``Store`` and ``CommandStore`` contracts on a Redis server.

Every state change is one Lua script (``_redis_lua``), run with EVALSHA (loaded again
after a server restart empties the script cache), so it applies whole or not at all and no
other client sees it half done. Every process that opens the store is a peer: leases live
in Redis with their deadlines, and a peer's ``lease`` or ``tick`` returns to ready the
leases whose deadline passed (their holder died). The store pickles by URL; each process connects on
first use.

Lost connections are retried with backoff for up to ``timeout`` seconds, then raise
``StoreError``. A put or lease whose reply was lost is retried under the same request id,
so it neither stores twice nor leases messages that nobody receives. Durability is the
server's: see "Server stores" in the README (AOF, ``appendfsync``).
"""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import msgpack

from .._clock import SYSTEM, Clock
from .._errors import ConfigurationError, StoreError
from .._policy import FailedAttempt, Retention, Verdict, decide
from .._records import Counts, Failure, Fault, Leased, LeaseToken, Priority, Record, State
from . import _redis_lua as lua
from ._put_watch import RedisPutWatch
from ._redis_commands import _COMMAND_SCRIPTS, RedisCommands
from ._server import check_options, check_payloads
from ._server_lock import RedisOwnerLock
from ._sqlite_policy import FAILURE_LOG_MAX

if TYPE_CHECKING:
    import redis

T = TypeVar("T")
_FAULTS_MAX = 1000
#: Seconds a fault waits for an unreachable server: the fault Event already says it, and
#: the dispatcher that records it must not stall.
FAULT_PATIENCE = 0.5
_CAUSE_FIELD = {"error": "fe", "crash": "fc", "timeout": "ft"}
_STATE_KEY = {State.DONE: "hist:4", State.EXPIRED: "hist:7", State.DEAD: "dead"}
_SCRIPTS = ("PUT", "LEASE", "SETTLE", "FAIL", "TICK", "COUNTS", "NEXT_DUE", "READ",
            "FINISHED", "REVIVE", "PURGE", "DISCARD", "UNFINISHED", "REQUEUE", "HAS_READY",
            "EXTEND")


def score(x: float) -> str:
    """A float as Redis reads a score (``inf`` as ``+inf``)."""
    if x == float("inf"):
        return "+inf"
    if x == float("-inf"):
        return "-inf"
    return repr(float(x))


def _opt(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _num(x: bytes | None) -> float | None:
    return None if x is None else float(x)


def import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise ConfigurationError(
            'redis:// needs "redis": pip install "durableq[redis]"'
        ) from exc
    return redis


class RedisStore(RedisCommands):
    """Messages and commands in Redis (redis-py), shared by every process and host.

    Args:
        url: the server, e.g. ``"redis://127.0.0.1:6379/0"``.
        name: the queue's name: its keys start with ``dq:{name}:``.
        timeout: seconds to keep retrying an operation while the server is unreachable
            (restarting) before raising ``StoreError``.

    Raises:
        ConfigurationError: redis-py is not installed.
    """

    shared: ClassVar[bool] = True
    #: Every process that opens the store is a peer: leases of others are not recovered
    #: at open, only once their deadline passes.
    peers: ClassVar[bool] = True

    def __init__(self, url: str, *, name: str = "durableq", timeout: float = 10.0) -> None:
        import_redis()
        timeout = check_options(name, timeout, forbidden="}")
        self.url, self.name, self.timeout = url, name, timeout
        self._init_process_state()

    def _init_process_state(self) -> None:
        self.prefix = f"dq:{{{self.name}}}:"
        self.retention = Retention()
        self.clock: Clock = SYSTEM
        self._lock = threading.Lock()
        self._pid = -1
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._rng = random.Random()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.name, self.timeout = state["url"], state["name"], state["timeout"]
        self._init_process_state()

    def __repr__(self) -> str:
        return f"RedisStore({self.where!r}, name={self.name!r})"

    @property
    def where(self) -> str:
        """The URL without its password, for messages and ``repr``."""
        parts = urllib.parse.urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    # -- connection and retries ----------------------------------------------------------

    def redis(self) -> redis.Redis:
        """This process's client (a fresh one after fork)."""
        client = self._client
        if client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    r = import_redis()
                    self._client = r.Redis.from_url(
                        self.url, socket_timeout=max(self.timeout, 30.0),
                        socket_connect_timeout=5.0, health_check_interval=30,
                    )
                    scripts = {n: getattr(lua, n) for n in _SCRIPTS}
                    scripts.update({"c_" + n: s for n, s in _COMMAND_SCRIPTS.items()})
                    self._scripts = {
                        n: self._client.register_script(s) for n, s in scripts.items()
                    }
                    self._pid = os.getpid()
                client = self._client
        assert client is not None
        return client

    def _retry(self, what: str, fn: Callable[[], T], patience: float | None = None) -> T:
        """Run ``fn``, retrying while the server is unreachable; ``StoreError`` once
        ``patience`` (default ``timeout``) passes or for any other server error."""
        r = import_redis()
        deadline = time.monotonic() + (self.timeout if patience is None else patience)
        pause = 0.02
        while True:
            try:
                return fn()
            except (r.ConnectionError, r.TimeoutError) as exc:
                # BusyLoadingError (the server replays its AOF) is a ConnectionError too.
                if time.monotonic() + pause > deadline:
                    raise StoreError(
                        f"redis at {self.where} unreachable for {self.timeout:g} s during "
                        f"{what}: {exc}"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
            except r.RedisError as exc:
                raise StoreError(f"redis at {self.where} failed {what}: {exc}") from exc

    def _run(self, script: str, *args: Any) -> Any:
        self.redis()
        return self._retry(script.lower(), lambda: self._scripts[script](args=[self.prefix, *args]))

    def _trim_args(self, now: float) -> list[str]:
        r = self.retention
        return [
            "1" if r.keeps else "0",
            "" if r.count is None else str(r.count),
            "" if r.age is None else repr(now - r.age),
            str(FAILURE_LOG_MAX),
        ]

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
        ids = self._run(
            "PUT", uuid.uuid4().hex, repr(self.clock.time()), int(priority), repr(float(due)),
            _opt(deadline), _opt(bump), _opt(expires), len(payloads), *payloads,
        )
        return [int(i) for i in ids]

    def lease(
        self, owner: str, n: int, *, now: float, ttl: float, max_priority: int = Priority.LOW
    ) -> list[Leased]:
        if n <= 0:
            return []
        rows = self._run("LEASE", uuid.uuid4().hex, repr(now), score(now + ttl), n,
                         int(max_priority))
        return [Leased(LeaseToken(int(i), int(a)), bytes(p)) for i, a, p in rows]

    def _settle(self, tokens: Sequence[LeaseToken], mode: int,
                results: Sequence[bytes] | None) -> int:
        if not tokens:
            return 0
        args: list[Any] = [*self._trim_args(self.clock.time()), mode,
                           "0" if results is None else "1"]
        for i, (id_, attempt) in enumerate(tokens):
            args += [id_, attempt] if results is None else [id_, attempt, results[i]]
        return int(self._run("SETTLE", repr(self.clock.time()), *args))

    def ack(self, tokens: Sequence[LeaseToken], *, results: Sequence[bytes] | None = None) -> int:
        return self._settle(tokens, int(State.DONE), results)

    def nack(
        self,
        tokens: Sequence[LeaseToken],
        *,
        requeue: bool,
        results: Sequence[bytes] | None = None,
    ) -> int:
        return self._settle(tokens, int(State.READY if requeue else State.DEAD), results)

    def fail(self, attempts: Sequence[FailedAttempt], *, now: float) -> list[Verdict | None]:
        if not attempts:
            return []
        client = self.redis()

        def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for a in attempts:
                pipe.hmget(self.prefix + f"m:{a.token.id:020d}", "st", "at", "pr", "due",
                           _CAUSE_FIELD[a.cause])
            return pipe.execute()

        verdicts: list[Verdict | None] = []
        args: list[Any] = []
        for a, (st, at, pr, due, failed) in zip(attempts, self._retry("fail", read),
                                                strict=True):
            if st != b"3" or at is None or int(at) != a.token.attempt:
                verdicts.append(None)
                continue
            v = decide(a.policy, cause=a.cause, count=int(failed) + 1, retryable=a.retryable,
                       delay=a.delay, priority=int(pr), due=float(due), now=now, rng=self._rng)
            result = a.result(v.failures) if callable(a.result) else a.result
            entry = b"" if a.failure is None else msgpack.packb(list(a.failure))
            args += [a.token.id, a.token.attempt, _CAUSE_FIELD[a.cause], v.failures,
                     "1" if v.retry else "0", repr(float(v.due)), v.priority,
                     b"" if v.retry or result is None else b"r" + bytes(result), entry]
            verdicts.append(v)
        if args:
            applied = iter(self._run("FAIL", repr(now), *self._trim_args(now), *args))
            # A verdict the script could not apply lost a race with another settle: stale.
            verdicts = [v if v is None or next(applied) else None for v in verdicts]
        return verdicts

    def failures(
        self, *, since: float | None = None, limit: int | None = None, id: int | None = None
    ) -> list[Failure]:
        client = self.redis()
        raw = self._retry("failures", lambda: client.lrange(self.prefix + "failures", 0, -1))
        found = [
            f for f in (Failure(*msgpack.unpackb(x)) for x in raw)
            if (since is None or f.time >= since) and (id is None or f.id == id)
        ]
        return found[-limit:] if limit else ([] if limit == 0 else found)

    def tick(self, now: float) -> list[int]:
        return [int(i) for i in self._run("TICK", repr(now), *self._trim_args(now))]

    def _records(self, ids: Sequence[int]) -> list[Record | None]:
        if not ids:
            return []
        now = self.clock.time()
        out: list[Record | None] = []
        for id_, f in zip(ids, self._run("READ", *ids), strict=True):
            st, pr, due, at, cr, fi, dl, ex, lt, p = f
            if st is None:
                out.append(None)
                continue
            state = State(int(st))
            if state == State.READY and float(due) > now:
                state = State.SCHEDULED
            out.append(Record(id_, state, Priority(int(pr)), float(due), int(at), float(cr),
                              _num(fi), _num(dl), _num(ex), lt == b"1", bytes(p)))
        return out

    def records(
        self, states: Sequence[State], *, since: float | None = None, limit: int | None = None
    ) -> list[Record]:
        keys = [_STATE_KEY[s] for s in dict.fromkeys(states) if s in _STATE_KEY]
        if not keys or limit == 0:
            return []
        ids = self._run("FINISHED", "-inf" if since is None else score(since),
                        -1 if limit is None else limit, *keys)
        found = [r for r in self._records([int(i) for i in ids]) if r is not None]
        found.sort(key=lambda r: (r.finished or 0.0, r.id), reverse=True)
        return found[:limit] if limit is not None else found

    def record(self, id: int) -> Record | None:
        (rec,) = self._records([id])
        return rec

    def revive(self, ids: Sequence[int] | None, *, now: float) -> list[int]:
        if ids is not None and not ids:
            return []
        args = ["*"] if ids is None else list(ids)
        return sorted(int(i) for i in self._run("REVIVE", repr(now), *args))

    def purge(self, states: Sequence[State], *, older_than: float | None = None) -> int:
        keys = [_STATE_KEY[s] for s in dict.fromkeys(states) if s in _STATE_KEY]
        if not keys:
            return 0
        limit = "+inf" if older_than is None else score(older_than)
        return int(self._run("PURGE", limit, *keys))

    def discard(self, ids: Sequence[int]) -> int:
        return int(self._run("DISCARD", *ids)) if ids else 0

    def unfinished(self, upto: int) -> list[int]:
        return sorted(int(i) for i in self._run("UNFINISHED", upto))

    def results(self, upto: int) -> dict[int, bytes]:
        client = self.redis()
        raw = self._retry("results", lambda: client.hgetall(self.prefix + "results"))
        return {int(k): v for k, v in raw.items() if isinstance(v, bytes) and int(k) <= upto}

    def extend_leases(self, tokens: Sequence[LeaseToken], *, until: float) -> int:
        """Push the deadline of the leases still held to ``until``; returns how many."""
        if not tokens:
            return 0
        return int(self._run("EXTEND", score(until), *(x for t in tokens for x in t)))

    def results_of(self, ids: Sequence[int]) -> dict[int, bytes]:
        if not ids:
            return {}
        client = self.redis()
        raw = self._retry("results", lambda: client.hmget(self.prefix + "results", list(ids)))
        return {i: r for i, r in zip(ids, raw, strict=True) if isinstance(r, bytes)}

    def forget(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        client = self.redis()
        return int(self._retry("forget", lambda: client.hdel(self.prefix + "results", *ids)))

    def requeue_expired(self, now: float) -> int:
        return int(self._run("REQUEUE", score(now)))

    def has_ready(self, now: float) -> bool:
        return bool(self._run("HAS_READY", score(now)))

    def next_due(self, now: float) -> float | None:
        """Also the earliest lease deadline: a peer's expired lease is returned by ``tick``."""
        found = self._run("NEXT_DUE", repr(now))
        return None if found is None else float(found)

    def counts(self) -> Counts:
        now = self.clock.time()
        c = self._run("COUNTS", repr(now))
        bands = [(int(c[2 * b]), int(c[2 * b + 1])) for b in range(3)]
        in_flight, dead, done, expired, put_total, acked, late = (int(x) for x in c[6:13])
        heads = [float(h) for h in c[13:16] if h]
        ready = sum(r for r, _ in bands)
        return Counts(
            ready=ready,
            in_flight=in_flight,
            dead=dead,
            put_total=put_total,
            acked_total=acked,
            scheduled=sum(w for _, w in bands) - ready,
            done=done,
            expired=expired,
            late_total=late,
            by_priority={p.name.lower(): bands[p][1] for p in Priority},
            next_due=self.next_due(now),
            oldest_ready_age=max(0.0, now - min(heads)) if heads else None,
        )

    def record_fault(self, fault: Fault) -> None:
        key = self.prefix + "faults"
        try:
            client = self.redis()

            def push() -> None:
                pipe = client.pipeline(transaction=True)
                pipe.rpush(key, msgpack.packb(list((fault.kind, fault.time, fault.detail))))
                pipe.ltrim(key, -_FAULTS_MAX, -1)
                pipe.execute()

            self._retry("record_fault", push, FAULT_PATIENCE)
        except StoreError:
            pass  # best effort: the fault Event and the process's own list still say it

    def faults(self, limit: int = 100) -> list[Fault]:
        client = self.redis()
        raw = self._retry("faults", lambda: client.lrange(self.prefix + "faults", -limit, -1))
        return [Fault(*msgpack.unpackb(x)) for x in raw]

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()
        self.command_close()

    def owner_lock(self, *, wait: bool) -> RedisOwnerLock:
        """The queue's exclusive-owner lock (``Queue(exclusive=True)``)."""
        return RedisOwnerLock(self, wait=wait)

    def watch_puts(self) -> RedisPutWatch:
        """A subscription that wakes whoever waits on it when messages become ready."""
        return RedisPutWatch(self)

    def watch_results(self) -> RedisPutWatch:
        """A subscription that wakes whoever waits on it when results are kept."""
        return RedisPutWatch(self, "done")

    def drop(self) -> None:
        """Delete every key of this queue (messages, commands, counters). For tests and
        for retiring a queue; irreversible."""
        client = self.redis()

        def delete() -> None:
            keys = list(client.scan_iter(match=self.prefix.replace("{", "\\{").replace(
                "}", "\\}") + "*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i:i + 500])

        self._retry("drop", delete)
