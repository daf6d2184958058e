"""A RabbitMQ stream queue as a durable, totally ordered event log (pika).

``EventLog.append`` publishes one event with publisher confirms: it returns once the
broker has written it. Appends of concurrent callers are committed together (group
commit): while one publishes and waits for its confirm, the others queue their events,
and the next of them publishes all of those as one message, under one confirm. A follower
thread consumes the stream from an offset, with manual acks (a stream's flow-control
credit), and hands every message, in log order, to ``apply``; after a lost connection it
reconnects with backoff and resumes at the next offset, so no message is skipped or
applied twice. Appends retry with backoff for up to ``timeout`` seconds while the broker
is unreachable, then raise ``StoreError``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from .._errors import ConfigurationError, StoreError

log = logging.getLogger("durableq.rabbitmq")

#: Events the broker may send ahead of the follower's acks: more hides the round trip of
#: each ack, but a reconnect re-sends whatever was in flight (skipped by offset).
PREFETCH: Final = 2000
#: Events acked at once: a stream's acks are only credit, so fewer of them cost less.
ACK_EVERY: Final = 256
#: At most this many bytes of queued events go in one message (one confirm).
BATCH_BYTES: Final = 1 << 20
#: Longest pause between two reconnect attempts.
BACKOFF_CAP: Final = 0.5


def import_pika() -> Any:
    try:
        import pika
    except ImportError as exc:
        raise ConfigurationError(
            'amqp:// needs "pika": pip install "durableq[rabbitmq]"'
        ) from exc
    return pika


def _fatal(exc: BaseException) -> bool:
    """Errors that retrying cannot cure: bad credentials, no access to the vhost."""
    pika = import_pika()
    e = pika.exceptions
    return isinstance(exc, e.ProbableAuthenticationError | e.AuthenticationError
                      | e.ProbableAccessDeniedError)


def _transient(exc: BaseException) -> bool:
    pika = import_pika()
    e = pika.exceptions
    return isinstance(exc, e.AMQPConnectionError | e.AMQPChannelError | OSError) and not _fatal(exc)


class _Append:
    """One caller's events waiting for a group commit, and how it ended."""

    __slots__ = ("body", "done", "error")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.done = False
        self.error: BaseException | None = None


class EventLog:
    """Append to and follow one durable stream queue named ``queue``.

    Args:
        url: an AMQP URL, e.g. ``"amqp://user:pass@broker-host:5672/%2F"``.
        queue: the stream queue's name; declared on first use.
        timeout: seconds an append keeps retrying while the broker is unreachable.
        apply: called from the follower thread with ``(offset, body)`` for each event.
        thread_name: the follower thread's name.
    """

    def __init__(self, url: str, queue: str, *, timeout: float,
                 apply: Callable[[int, bytes], None], thread_name: str) -> None:
        self._pika = import_pika()
        self.url, self.queue, self.timeout = url, queue, timeout
        self._apply = apply
        self._thread_name = thread_name
        self._lock = threading.Lock()  # the publishing connection is one thread's at a time
        self._queued = threading.Condition()  # guards _appends and _leading
        self._appends: list[_Append] = []  # waiting for the next group commit
        self._leading = False  # a thread is publishing a group
        self._publisher: tuple[Any, Any] | None = None  # (connection, confirming channel)
        self._follower: threading.Thread | None = None
        self._consumer: tuple[Any, Any] | None = None
        self._closing = threading.Event()
        self.next_offset = 0
        self.connected = threading.Event()  # the follower is consuming
        self.last_error: BaseException | None = None

    def _params(self) -> Any:
        params = self._pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = max(self.timeout, 1.0)
        return params

    def connect(self) -> Any:
        """A new blocking connection to the broker (the caller closes it)."""
        return self._pika.BlockingConnection(self._params())

    @property
    def following(self) -> bool:
        return self._follower is not None

    def _channel(self, con: Any) -> Any:
        channel = con.channel()
        channel.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "stream"})
        return channel

    # -- appending -----------------------------------------------------------------------

    def append(self, body: bytes, what: str) -> None:
        """Publish ``body`` (packed events) and wait for the broker's confirm, together with
        the events other threads append meanwhile; retried across reconnects (an event
        whose confirm was lost may be written twice: events carry request ids)."""
        mine = _Append(body)
        with self._queued:
            self._appends.append(mine)
            while self._leading and not mine.done:
                self._queued.wait()
            if mine.done:  # a leader committed it, or failed to (an error of its own)
                if mine.error is not None:
                    raise StoreError(f"rabbitmq log {self.queue!r} failed {what}: "
                                     f"{mine.error}") from mine.error
                return
            self._leading = True
            group: list[_Append] = []
            size = 0
            while self._appends and (not group or size + len(self._appends[0].body)
                                     <= BATCH_BYTES):
                group.append(self._appends.pop(0))
                size += len(group[-1].body)
        error: BaseException | None = None
        try:
            self._publish(b"".join(a.body for a in group), what)
        except BaseException as exc:
            error = exc
        with self._queued:
            for a in group:
                a.done, a.error = True, error
            self._leading = False
            self._queued.notify_all()
        if error is not None:
            raise error

    def _publish(self, body: bytes, what: str) -> None:
        pika = self._pika
        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        deadline = time.monotonic() + self.timeout
        pause = 0.02
        with self._lock:
            while True:
                try:
                    if self._publisher is None:
                        con = pika.BlockingConnection(self._params())
                        channel = self._channel(con)
                        channel.confirm_delivery()
                        self._publisher = (con, channel)
                    self._publisher[1].basic_publish(
                        "", self.queue, body, props, mandatory=True
                    )
                    return
                except Exception as exc:
                    self._drop_publisher()
                    if not _transient(exc) and not isinstance(exc, pika.exceptions.NackError):
                        raise StoreError(
                            f"rabbitmq log {self.queue!r} failed {what}: {exc!r}"
                        ) from exc
                    if time.monotonic() + pause > deadline:
                        raise StoreError(
                            f"rabbitmq store {self.queue!r} unreachable for {self.timeout:g} s "
                            f"during {what}: {exc!r}"
                        ) from exc
                    time.sleep(pause)  # backoff between reconnects, bounded by the timeout
                    pause = min(pause * 2, BACKOFF_CAP)

    def _drop_publisher(self) -> None:
        pub, self._publisher = self._publisher, None
        if pub is not None:
            try:
                pub[0].close()
            except Exception:
                pass  # already broken: nothing more to release

    # -- following -----------------------------------------------------------------------

    def follow(self, offset: int) -> None:
        """Start the follower thread at ``offset`` (once)."""
        if self._follower is not None:
            return
        self.next_offset = offset
        self._follower = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._follower.start()

    def _run(self) -> None:
        pause = 0.02
        while not self._closing.is_set():
            con = None
            try:
                con = self._pika.BlockingConnection(self._params())
                channel = self._channel(con)
                channel.basic_qos(prefetch_count=PREFETCH)
                channel.basic_consume(self.queue, self._on_message, auto_ack=False,
                                      arguments={"x-stream-offset": self.next_offset})
                self._consumer = (con, channel)
                if self._closing.is_set():
                    break
                self.connected.set()
                pause = 0.02
                channel.start_consuming()  # until close() stops it, or the connection drops
            except Exception as exc:
                self.last_error = exc
                if not _transient(exc):
                    log.error("rabbitmq log %s: follower stopped: %r", self.queue, exc)
                    return
                log.warning("rabbitmq log %s: connection lost (%r); reconnecting",
                            self.queue, exc)
            finally:
                self.connected.clear()
                self._consumer = None
                if con is not None:
                    try:
                        con.close()
                    except Exception:
                        pass  # already broken: nothing more to release
            self._closing.wait(pause)  # backoff: wakes at once on close()
            pause = min(pause * 2, BACKOFF_CAP)

    def _on_message(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        offset = int((props.headers or {}).get("x-stream-offset", self.next_offset))
        if offset >= self.next_offset:  # a reconnect may re-send the tail it already had
            self._apply(offset, body)
            self.next_offset = offset + 1
        if method.delivery_tag % ACK_EVERY == 0:  # credit back in batches, far below PREFETCH
            channel.basic_ack(method.delivery_tag, multiple=True)

    def drop(self) -> None:
        """Delete the stream (every event). Irreversible."""
        with self._lock:
            con = self._pika.BlockingConnection(self._params())
            try:
                con.channel().queue_delete(self.queue)
            finally:
                con.close()

    def close(self) -> None:
        """Stop the follower and close both connections."""
        self._closing.set()
        consumer = self._consumer
        if consumer is not None:
            try:
                consumer[0].add_callback_threadsafe(consumer[1].stop_consuming)
            except Exception:
                pass  # the connection is going down anyway: the thread sees _closing
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join(10)
        with self._lock:
            self._drop_publisher()
