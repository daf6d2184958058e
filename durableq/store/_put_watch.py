"""Wakeups for a server store's peers: a commit anywhere wakes every peer's dispatcher.

``RedisStore`` publishes on ``P..'put'`` and ``PostgresStore`` notifies its queue's channel
whenever messages become ready (put, requeue, retry, revive); both also publish on a
second channel (``P..'done'``, ``results_channel``) whenever results are kept, which an
executor awaiting tasks its peers run watches (``watch_results``). A ``PutWatch`` is one
subscription, on a connection of its own, that the dispatcher adds to the objects it
blocks on (``fileno()``): no polling. While the server is unreachable the watch has no
descriptor (``fileno()`` is -1) and tries again at most once a second; meanwhile the
dispatcher's safety re-check still finds new messages.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from ._server import redis_pubsub

if TYPE_CHECKING:
    from ._postgres import PostgresStore
    from ._redis import RedisStore

#: Seconds between attempts to subscribe again while the server is unreachable.
RETRY: Final = 1.0


class PutWatch:
    """One subscription; subclasses connect, name the descriptor and drain it."""

    def __init__(self) -> None:
        self._retry_at = 0.0
        self._conn: Any = None

    def _connect(self) -> Any:
        raise NotImplementedError

    def _fd(self) -> int:
        raise NotImplementedError

    def _drain(self) -> None:
        raise NotImplementedError

    def fileno(self) -> int:
        """The descriptor to wait on, or -1 while the server is unreachable."""
        if self._conn is None and time.monotonic() >= self._retry_at:
            try:
                self._conn = self._connect()
            except Exception:  # unreachable (or refusing): try again later
                self._retry_at = time.monotonic() + RETRY
        try:
            return self._fd() if self._conn is not None else -1
        except Exception:
            self._lost()
            return -1

    def drain(self) -> None:
        """Consume what arrived (any number of commits: one wakeup is enough)."""
        try:
            self._drain()
        except Exception:  # the server went away: subscribe again when it is back
            self._lost()

    def _lost(self) -> None:
        conn, self._conn = self._conn, None
        self._retry_at = time.monotonic() + RETRY
        try:
            conn.close()
        except Exception:
            pass  # already broken

    def close(self) -> None:
        if self._conn is not None:
            self._lost()


class RedisPutWatch(PutWatch):
    def __init__(self, store: RedisStore, topic: str = "put") -> None:
        super().__init__()
        self._store, self._channel = store, store.prefix + topic

    def _connect(self) -> Any:
        pubsub = redis_pubsub(self._store.redis())
        pubsub.subscribe(self._channel)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=1.0)
            if msg is not None and msg["type"] == "subscribe":
                return pubsub
        pubsub.close()
        raise TimeoutError("no confirmation of the subscription")

    def _fd(self) -> int:
        # redis-py has no public accessor for a PubSub's socket; _sock has been its name
        # since 2.x. Without it the watch is off and the safety re-check remains.
        return int(self._conn.connection._sock.fileno())

    def _drain(self) -> None:
        while self._conn.get_message(timeout=0) is not None:
            pass


class PostgresPutWatch(PutWatch):
    def __init__(self, store: PostgresStore, results: bool = False) -> None:
        super().__init__()
        self._store, self._results = store, results

    def _connect(self) -> Any:
        from ._postgres import channel, results_channel

        name = self._store.name
        con = self._store.connect()
        con.execute(f'LISTEN "{results_channel(name) if self._results else channel(name)}"')
        return con

    def _fd(self) -> int:
        return int(self._conn.fileno())

    def _drain(self) -> None:
        for _ in self._conn.notifies(timeout=0):
            pass
