"""``RabbitMQStore``'s put wakeups and its exclusive-owner lock.

- ``LogWatch``: the store's follower thread applies every peer's events; when one may have
  made messages ready (put, nack, retry, revive, tick) it writes a byte to each watch's
  pipe, which the dispatcher blocks on beside its other descriptors: no polling. Result
  watches (``watch_results``) are woken likewise by ack, nack and fail.
- ``RabbitMQOwnerLock`` (``Queue(exclusive=True)``): an *exclusive* queue
  ``durableq.<name>.owner`` declared on a connection of its own. RabbitMQ lets one
  connection at a time hold an exclusive queue of a name (others get RESOURCE_LOCKED) and
  deletes it when that connection ends, so a dead owner's lock is gone as soon as the
  broker sees its connection close (at once for a killed process; for a lost host, when
  TCP notices). Heartbeats are off on that connection: nobody reads it between the
  acquisition and the release.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from .._errors import QueueLocked, StoreError
from ._rabbitmq_log import import_pika

if TYPE_CHECKING:
    from ._rabbitmq import RabbitMQStore

#: How often a waiting owner (``wait_for_owner=True``) tries the lock again.
WAIT_RETRY_S: Final = 0.5
#: Events after which messages may have become ready.
WAKING: Final = frozenset({"put", "nack", "fail", "revive", "tick", "requeue_expired"})
#: Events after which results may have been kept (``watch_results``).
SETTLING: Final = frozenset({"ack", "nack", "fail"})


class LogWatch:
    """A pipe the follower writes to when messages may have become ready."""

    def __init__(self, watches: set[LogWatch], lock: threading.Lock) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._watches, self._lock = watches, lock
        with lock:
            watches.add(self)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._w, b"\0")  # a full pipe already says it

    def fileno(self) -> int:
        return self._r

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._r, 4096):
                pass

    def close(self) -> None:
        with self._lock:
            if self not in self._watches:
                return
            self._watches.discard(self)
        os.close(self._r)
        os.close(self._w)


class RabbitMQOwnerLock:
    """The queue's exclusive-owner lock; see the module docstring."""

    def __init__(self, store: RabbitMQStore, *, wait: bool) -> None:
        pika = import_pika()
        self._queue = f"durableq.{store.name}.owner"
        params = pika.URLParameters(store.url)
        params.heartbeat = 0
        params.connection_attempts = 1
        while True:
            try:
                self._con: Any = pika.BlockingConnection(params)
            except pika.exceptions.AMQPError as exc:
                raise StoreError(f"rabbitmq store {store.name!r}: cannot take the owner "
                                 f"lock: {exc!r}") from exc
            try:
                self._con.channel().queue_declare(self._queue, exclusive=True)
                return
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._con.close()
                if exc.reply_code != 405:  # RESOURCE_LOCKED: another connection owns it
                    raise StoreError(f"rabbitmq store {store.name!r}: cannot take the owner "
                                     f"lock: {exc!r}") from exc
                if not wait:
                    raise QueueLocked(repr(store)) from None
            time.sleep(WAIT_RETRY_S)  # no notice of another connection's close: retry

    def release(self) -> None:
        """Give the lock up (closing the connection deletes the exclusive queue)."""
        with contextlib.suppress(Exception):
            self._con.close()
