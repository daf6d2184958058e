"""One thread's connection to the queue's owner: asks for messages, hands back acks.

A client is created lazily per (process, thread). It never shares a lock with another
process, so a SIGKILL anywhere cannot wedge the others; when its thread or process ends
cleanly it says ``BYE`` (acking what auto mode holds), and a connection that closes without
``BYE`` tells the owner that its holder crashed.
"""

from __future__ import annotations

import os
import queue as pyqueue
import time
from multiprocessing import util
from multiprocessing.connection import Connection
from typing import Any

from . import _wire as w
from ._errors import OwnerGone
from ._records import LeaseToken


class _Link:
    """What the exit finalizer needs, without a reference back to the client."""

    __slots__ = ("conn", "pending_acks", "pid")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.pid = os.getpid()
        self.pending_acks: list[LeaseToken] = []


def _say_bye(link: _Link) -> None:
    conn = link.conn
    if conn is None or link.pid != os.getpid() or conn.closed:
        return
    try:
        conn.send((w.BYE, link.pending_acks))
    except OSError:
        pass  # the owner is gone: what we held is redelivered when the queue is reopened
    finally:
        link.pending_acks = []
        conn.close()
        link.conn = None


class Client:
    """A thread's session with the owner."""

    def __init__(self, address: str | bytes, secret: bytes, path: str, owner_pid: int) -> None:
        self.address = address
        self.secret = secret
        self.path = path
        self.owner_pid = owner_pid
        self.link = _Link()
        self.pid = self.link.pid
        # Runs when this client is collected (its thread ended) or at clean process exit,
        # before the owner itself stops (exitpriority -10).
        util.Finalize(self, _say_bye, args=(self.link,), exitpriority=10)

    # -- plumbing ---------------------------------------------------------------------------

    def _conn(self) -> Connection:
        conn = self.link.conn
        if conn is None:
            try:
                conn = w.connect(self.address)
                conn.send((w.HELLO, self.secret, os.getpid()))
            except OSError as exc:
                raise OwnerGone(self.path, self.owner_pid) from exc
            self.link.conn = conn
        return conn

    def send(self, frame: tuple[Any, ...]) -> None:
        try:
            self._conn().send(frame)
        except OSError as exc:
            self._lost()
            raise OwnerGone(self.path, self.owner_pid) from exc

    def recv(self) -> tuple[Any, ...]:
        try:
            return self._conn().recv()  # type: ignore[no-any-return]
        except (EOFError, OSError) as exc:
            self._lost()
            raise OwnerGone(self.path, self.owner_pid) from exc

    def _lost(self) -> None:
        if self.link.conn is not None:
            self.link.conn.close()
            self.link.conn = None

    def forget(self) -> None:
        """Drop a connection inherited through fork() without telling the owner anything."""
        conn, self.link.conn = self.link.conn, None
        if conn is not None:
            conn.close()

    def bye(self) -> None:
        _say_bye(self.link)

    # -- verbs ------------------------------------------------------------------------------

    def notify_put(self, n: int) -> None:
        """Tell the owner that ``n`` messages are committed. Best effort: they are durable."""
        try:
            self.send((w.PUT, n))
        except OwnerGone:
            pass

    def ack(self, tokens: list[LeaseToken]) -> None:
        self.send((w.ACK, tokens))

    def nack(self, tokens: list[LeaseToken], requeue: bool) -> None:
        self.send((w.NACK, tokens, requeue))

    def call(self, kind: int, *args: Any) -> Any:
        self.send((kind, *args))
        reply = self.recv()
        if len(reply) == 3:
            raise reply[2]
        return reply[1]

    def join(self) -> None:
        self.send((w.JOIN,))
        self.recv()

    def want(
        self, acks: list[LeaseToken], block: bool, timeout: float | None
    ) -> tuple[LeaseToken, bytes]:
        """Get one message, acking ``acks`` on the way; raises ``queue.Empty``."""
        self.link.pending_acks = []
        if not block:
            self.send((w.WANT, acks, True))
            reply = self.recv()
            if reply[0] == w.EMPTY:
                raise pyqueue.Empty
            return reply[1], reply[2]
        self.send((w.WANT, acks, False))
        if timeout is not None:
            deadline = time.monotonic() + timeout
            while not self._poll(deadline - time.monotonic()):
                if time.monotonic() >= deadline:
                    return self._cancel()
        reply = self.recv()
        return reply[1], reply[2]

    def _poll(self, timeout: float) -> bool:
        try:
            return self._conn().poll(max(0.0, timeout))
        except (EOFError, OSError) as exc:
            self._lost()
            raise OwnerGone(self.path, self.owner_pid) from exc

    def _cancel(self) -> tuple[LeaseToken, bytes]:
        # The owner may have sent a message before it read CANCEL: take it if so.
        self.send((w.CANCEL,))
        got: tuple[LeaseToken, bytes] | None = None
        while True:
            reply = self.recv()
            if reply[0] == w.MSG:
                got = reply[1], reply[2]
            elif reply[0] == w.CANCELLED:
                break
        if got is None:
            raise pyqueue.Empty
        return got
