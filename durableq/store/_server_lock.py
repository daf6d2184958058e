"""``exclusive=True`` for server stores: one owner at a time among the processes that ask.

A directory store always has one owner (the directory's lock). A server store's processes
are peers; one that passes ``exclusive=True`` also takes the queue's lock in the server,
and a second such process gets ``QueueLocked`` (or, with ``wait_for_owner=True``, waits
for the lock). Peers that do not ask are not excluded.

- PostgreSQL: a session advisory lock on a connection of its own, held for as long as the
  owner lives; the server releases it when that connection ends (the owner died).
- Redis: a key with a 30 s expiry, renewed every 10 s by a heartbeat thread and deleted at
  release; an owner that dies without releasing holds it until the expiry.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Final

from .._errors import QueueLocked

if TYPE_CHECKING:
    from ._postgres import PostgresStore
    from ._redis import RedisStore

#: Redis: how long a dead owner keeps the lock, and how often a live one renews it.
LOCK_TTL_MS: Final = 30_000
RENEW_S: Final = 10.0
#: Redis: how often a waiting owner tries again (pub/sub cannot tell a key expired).
WAIT_RETRY_S: Final = 0.5

_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisOwnerLock:
    """The ``owner`` key of a ``RedisStore`` queue; see the module docstring."""

    def __init__(self, store: RedisStore, *, wait: bool) -> None:
        self._store, self._key = store, store.prefix + "owner"
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        client = store.redis()
        while not store._retry("owner lock", lambda: client.set(
            self._key, self._token, nx=True, px=LOCK_TTL_MS
        )):
            if not wait:
                holder = store._retry("owner lock", lambda: client.get(self._key))
                raise QueueLocked(repr(store), _pid_of(holder))
            time.sleep(WAIT_RETRY_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, name=f"durableq-owner-lock-{store.name}", daemon=True
        )
        self._thread.start()

    def _renew(self) -> None:
        client = self._store.redis()
        while not self._stop.wait(RENEW_S):
            try:
                client.eval(_RENEW, 1, self._key, self._token, LOCK_TTL_MS)
            except Exception:
                pass  # the server is restarting: the next beat renews (the key has 30 s)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self._store.redis().eval(_RELEASE, 1, self._key, self._token)
        except Exception:
            pass  # unreachable: the key expires by itself


def _pid_of(holder: Any) -> int | None:
    try:
        return int(bytes(holder).decode().split(":")[1])
    except (TypeError, ValueError, IndexError):
        return None


class PostgresOwnerLock:
    """A session advisory lock on the queue's name; see the module docstring."""

    def __init__(self, store: PostgresStore, *, wait: bool) -> None:
        self._con = store.connect()
        fn = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
        row = self._con.execute(
            f"SELECT {fn}(hashtext('durableq-owner'), hashtext(%s))", (store.name,)
        ).fetchone()
        if not wait and not (row and row[0]):
            self._con.close()
            raise QueueLocked(repr(store))

    def release(self) -> None:
        self._con.close()  # ends the session, and with it the lock
