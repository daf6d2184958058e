"""One thread's connection to the queue's owner: asks for messages, hands back acks.

A client is created lazily per (process, thread). It never shares a lock with another
process, so a SIGKILL anywhere cannot wedge the others; when its thread or process ends
cleanly it says ``BYE`` (acking what it finished), and a connection that closes without
``BYE`` tells the owner that its holder crashed.

Speed comes from not waiting: messages arrive in batches into a local buffer (the batch
grows while the consumer keeps up and falls back to one when it is slow, so a slow consumer
does not sit on work others could do), and acks travel back in batches, one-way.
"""

from __future__ import annotations

import collections
import os
import queue as pyqueue
import time
import weakref
from collections.abc import Callable
from multiprocessing import util
from multiprocessing.connection import Connection
from typing import Any

from . import _wire as w
from ._errors import OwnerGone
from ._records import LeaseToken

#: Most messages a consumer may hold unread. More saves round trips for tiny messages, but
#: a message in one consumer's buffer waits for it even while another consumer is idle.
PREFETCH_MAX = 256
#: A batch that emptied sooner than this means the consumer is fast: double the next one.
FAST_REFILL = 0.005
#: Acks are held back at most this many, or this long, while messages flow from the buffer.
ACK_BATCH = 128
ACK_DELAY = 0.010
#: Puts after which a producer tells the owner even when no consumer waits: the owner then
#: drains the put logs, so that a backlog is in the message table before anyone asks.
ANNOUNCE_EVERY = 1024


class _Link:
    """What the exit finalizer needs, without a reference back to the client."""

    __slots__ = ("acks", "buffer", "conn", "handed", "pid", "settle_on_exit", "wait_at_exit")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.pid = os.getpid()
        self.acks: list[LeaseToken] = []  # finished, not yet sent
        self.settle_on_exit: list[LeaseToken] = []  # delivered, acked by a clean exit
        self.buffer: collections.deque[tuple[LeaseToken, bytes]] = collections.deque()
        self.handed = False  # puts handed over (HAND) that the owner may not have stored
        self.wait_at_exit = True  # for them; False after the queue's cancel_join_thread()


def _say_bye(link: _Link) -> None:
    conn = link.conn
    if conn is None or link.pid != os.getpid() or conn.closed:
        return
    unread = [token for token, _ in link.buffer]
    try:
        if link.handed and link.wait_at_exit:
            # Leave only once the owner stored what we handed over: a process that saw
            # this one end (join(), then a sentinel put) must find our puts ahead of its
            # own, as multiprocessing.Queue flushes its feeder at exit.
            w.send(conn, (w.CALL, "sync"))
            while (reply := w.recv(conn))[0] != w.RESULT:
                if reply[0] == w.MSGS:  # an answer to a WANT cut short: give it back
                    unread += [LeaseToken(*token) for token, _ in reply[1]]
            link.handed = False
        w.send(conn, (w.BYE, link.acks + link.settle_on_exit, unread))
    except (OSError, EOFError):
        pass  # the owner is gone: what we held is redelivered when the queue is reopened
    finally:
        link.acks, link.settle_on_exit = [], []
        link.buffer.clear()
        conn.close()
        link.conn = None


class Client:
    """A thread's session with the owner."""

    def __init__(
        self, address: str | bytes, secret: bytes, path: str, owner_pid: int, hungry: Any,
        announced: Any,
    ) -> None:
        self.hungry = hungry
        self.announced = announced
        self.address = address
        self.secret = secret
        self.path = path
        self.owner_pid = owner_pid
        self.link = _Link()
        _live.add(self)
        self._buffer = self.link.buffer
        self._credit = 1
        self._refilled = 0.0
        self._acks_sent = 0.0
        self._unannounced = 0  # puts not told to the owner (notify_put)
        # Runs when this client is collected (its thread ended) or at clean process exit,
        # before the owner itself stops (exitpriority -10).
        util.Finalize(self, _say_bye, args=(self.link,), exitpriority=10)

    # -- plumbing ---------------------------------------------------------------------------

    def _conn(self) -> Connection:
        conn = self.link.conn
        if conn is None:
            try:
                conn = w.connect(self.address)
                conn.send_bytes(w.hello(self.secret))
            except OSError as exc:
                raise OwnerGone(self.path, self.owner_pid) from exc
            self.link.conn = conn
        return conn

    def send(self, frame: tuple[Any, ...]) -> None:
        try:
            w.send(self._conn(), frame)
        except OSError as exc:
            self._lost()
            raise OwnerGone(self.path, self.owner_pid) from exc

    def recv(self) -> tuple[Any, ...]:
        try:
            return w.recv(self._conn())  # type: ignore[no-any-return]
        except (EOFError, OSError) as exc:
            self._lost()
            raise OwnerGone(self.path, self.owner_pid) from exc

    def _poll(self, timeout: float) -> bool:
        try:
            return self._conn().poll(max(0.0, timeout))
        except (EOFError, OSError) as exc:
            self._lost()
            raise OwnerGone(self.path, self.owner_pid) from exc

    def _lost(self) -> None:
        # Whatever was buffered is the owner's again (it requeues on our EOF).
        self._buffer.clear()
        if self.link.conn is not None:
            self.link.conn.close()
            self.link.conn = None

    def forget(self) -> None:
        """Drop a connection inherited through fork() without telling the owner anything."""
        conn, self.link.conn = self.link.conn, None
        self._buffer.clear()
        if conn is not None:
            conn.close()

    def bye(self) -> None:
        _say_bye(self.link)

    @property
    def pid(self) -> int:
        """The process this client belongs to; a forked child makes its own."""
        return self.link.pid

    @property
    def buffered(self) -> int:
        """Messages received for this consumer and not yet handed out."""
        return len(self._buffer)

    # -- verbs ------------------------------------------------------------------------------

    def hand(self, payloads: list[bytes], timing: tuple[Any, ...]) -> None:
        """Give the owner puts to store, without waiting (a store that is not durable);
        the exit (``bye``) waits until it has stored them."""
        self.send((w.HAND, payloads, timing))
        self.link.handed = True

    def notify_put(
        self, n: int, due: float, event: float | None, now: Callable[[], float]
    ) -> None:
        """Tell the owner that ``n`` messages due at ``due`` (bumped or expiring at
        ``event``) are committed. Best effort: they are durable, and the owner finds them
        in the store anyway. A plain put (due by ``now()``, with no later event) says
        nothing while another producer's PUT is on its way (``announced``): the owner's
        round for that PUT clears the flag, then drains the logs, this put's frame too."""
        self._unannounced += n
        if self._unannounced < ANNOUNCE_EVERY:
            if not self.hungry.value:
                return  # no consumer waits: the next WANT looks at the store anyway
            if event is None and due <= now():  # read only when a consumer waits
                if self.announced.value:
                    return
                self.announced.value = 1
        self._unannounced = 0
        try:
            self.send((w.PUT, n, due, event))
        except OwnerGone:
            pass

    def ack(self, tokens: list[LeaseToken], *, now: bool = True) -> None:
        """Queue acks; send them at once (``now``) or with the next batch."""
        self.link.acks.extend(tokens)
        if now or len(self.link.acks) >= ACK_BATCH:
            self.flush_acks()

    def flush_acks(self) -> None:
        if self.link.acks:
            acks, self.link.acks = self.link.acks, []
            self.send((w.ACK, acks))
        self._acks_sent = time.monotonic()

    def nack(
        self,
        tokens: list[LeaseToken],
        requeue: bool,
        delay: float | None = None,
        error: tuple[str, str, str, bool] | None = None,
    ) -> None:
        """A failed attempt: the owner applies the retry policy (``requeue=False``: dead)."""
        self.send((w.NACK, tokens, requeue, delay, error))

    def call(self, kind: int, *args: Any) -> Any:
        self.send((kind, *args))
        reply = self.recv()
        if len(reply) == 3:
            raise reply[2]
        return reply[1]

    def join(self) -> None:
        self.flush_acks()
        self.send((w.JOIN,))
        self.recv()

    def take(self, block: bool, timeout: float | None) -> tuple[LeaseToken, bytes]:
        """Return the next message for this consumer; raises ``queue.Empty``."""
        if self._buffer:
            if self.link.acks and time.monotonic() - self._acks_sent > ACK_DELAY:
                self.flush_acks()
            return self._buffer.popleft()
        now = time.monotonic()
        fast = now - self._refilled < FAST_REFILL
        self._credit = min(self._credit * 2, PREFETCH_MAX) if fast else 1
        acks, self.link.acks = self.link.acks, []
        self._acks_sent = now
        self.send((w.WANT, self._credit, acks, not block))
        if block and timeout is not None:
            deadline = now + timeout
            while not self._poll(deadline - time.monotonic()):
                if time.monotonic() >= deadline:
                    return self._cancel()
        reply = self.recv()
        if reply[0] == w.EMPTY:
            raise pyqueue.Empty
        return self._refill(reply[1])

    def _refill(self, batch: list[tuple[LeaseToken, bytes]]) -> tuple[LeaseToken, bytes]:
        self._refilled = time.monotonic()
        self._buffer.extend(batch)
        return self._buffer.popleft()

    def _cancel(self) -> tuple[LeaseToken, bytes]:
        # The owner may have answered before it read CANCEL: keep that batch if so.
        self.send((w.CANCEL,))
        batch: list[tuple[LeaseToken, bytes]] = []
        while True:
            reply = self.recv()
            if reply[0] == w.MSGS:
                batch = reply[1]
            elif reply[0] == w.CANCELLED:
                break
        if not batch:
            raise pyqueue.Empty
        return self._refill(batch)


#: This process's clients: a forked child closes their connections (``forget``).
_live: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A child of any fork() (not only a multiprocessing one, whose start-up does the same
    through ``Queue._forget_clients``) closes the connections it inherited: kept open, they
    hide the parent's death from the owner, which learns of it from the connection
    closing, and the parent's messages waited for their visibility timeout."""
    for client in list(_live):
        client.forget()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
