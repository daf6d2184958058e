"""The owner's one thread: leases messages to consumers and applies their acks.

::

    PRODUCER (any process/thread)  put(obj) -> serialize -> Store.put_many (committed)
         `-- (PUT, n) on its connection ---------------+           +---------+
    CONSUMER get() -- (WANT, n, acks) -----------------+---------> |  STORE  | the only
                   <-- (MSGS, batch of <= n) ----+     |           +---------+ durable truth
    DISPATCHER THREAD (owner process)            |     v              ^    |
        wait([listener, wakeup, *connections], timeout=next lease expiry)  |
          |-- Store.ack(batch) / Store.nack(batch) ------------------+    |
          |-- Store.lease(n waiting consumers) <---------------------------+
          |-- send one MSGS frame to each waiting consumer ----------------> (back to CONSUMER)
          `-- connection closed without BYE: that consumer crashed:
                Store.nack(its leases, requeue) at once, fault recorded, Event set

- **Producers** commit to the store themselves, or through the owner (``RPUT``) when the
  store is not shared or ``sync="full"``: the owner commits every producer's puts of a
  round in one transaction, so concurrent producers share one fsync.
- **Consumers** hold one connection per thread; every delivery carries a lease token
  (message id, attempt): an ack for a lease that expired or was handed on is ignored.
- **The dispatcher** alone tracks leases and applies acks, in one transaction per batch.
  It never sleeps-polls: it blocks in ``wait()`` until a frame arrives or a lease expires.
"""

from __future__ import annotations

import collections
import hmac
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from . import _wire as w
from ._admin import admin
from ._clock import SYSTEM, Clock
from ._consumers import Consumer, Counters, share
from ._errors import StoreError
from ._lazy import ALL, NONE, Gate, Lazy
from ._policy import CRASH, ERROR, QUEUE_DEFAULT, TIMEOUT, FailedAttempt, RetryPolicy
from ._records import Failure, Fault, LeaseToken
from ._schedule import Timing
from ._wakeup import FrameReader, Waiter, Wakeup, readable
from .store import Store
from .store._command_wakeup import FifoWatch

T = TypeVar("T")
log = logging.getLogger("durableq")

#: Seconds a waiting consumer may go without the store being re-checked. A message whose
#: producer was killed between its commit and its notification is found by this check.
SAFETY_CHECK = 5.0
#: Seconds between retries while the store fails (disk full, I/O error, lock timeout).
STORE_RETRY = 0.5
#: With a server store, how long after its own visibility timeout a lease stays in the
#: store: this owner times it out first; peers take it only once this owner is gone.
PEER_GRACE = 10.0


class Dispatcher(threading.Thread):
    """Runs in the owner process; see the module docstring for the data path."""

    def __init__(
        self,
        store: Store,
        *,
        address: str | bytes,
        secret: bytes,
        visibility_timeout: float,
        ack_on_send: bool,
        on_fault: Callable[[Fault], None],
        release_slot: Callable[[], None] | None,
        take_slot: Callable[[], None] | None,
        hungry: Any,
        name: str,
        announced: Any,
        lazy: Lazy | None = None,
        retry: RetryPolicy = QUEUE_DEFAULT,
        clock: Clock = SYSTEM,
    ) -> None:
        super().__init__(name=f"durableq-dispatcher-{name}", daemon=True)
        self.store = store
        self.secret = secret
        self.ttl = visibility_timeout
        self.store_ttl = visibility_timeout + (PEER_GRACE if getattr(store, "peers", False) else 0)
        self.ack_on_send = ack_on_send
        self.on_fault = on_fault
        self.release_slot = release_slot
        self.take_slot = take_slot
        self.hungry = hungry  # shared byte: 1 while a consumer waits, so producers notify
        self.announced = announced  # shared byte: 1 while a producer's PUT is on its way
        self._absorb = False  # a producer announced puts: drain its log if no one waits
        #: The store's put-log drain (``DiskcacheStore.ingest``), where it has one.
        self._ingest: Callable[[], None] | None = getattr(store, "ingest", None)
        self.owner_id = f"{socket.gethostname()}:{os.getpid()}"
        self.counters = Counters()
        self.stopping = False
        self._listener = w.listen(address)
        _live.add(self)
        self._wakeup = Wakeup()
        self._waiter = Waiter()
        #: A server store's peers commit without telling us: its subscription wakes us.
        watch_puts = getattr(store, "watch_puts", None)
        self._put_watch: Any = watch_puts() if watch_puts is not None else None
        self._consumers: dict[Connection | None, Consumer] = {}
        self._waiters: collections.deque[Consumer] = collections.deque()
        self._joiners: list[Consumer] = []
        self._leases: dict[int, tuple[LeaseToken, Consumer]] = {}
        self._orphans = Consumer(None, authed=True)  # leases whose thread left cleanly
        self._expiry: collections.deque[tuple[float, LeaseToken]] = collections.deque()
        self._acks: list[LeaseToken] = []
        self._puts: list[tuple[Consumer | None, list[bytes], Timing]] = []  # None: HAND
        #: The one timer: the earliest due time of a scheduled message, while consumers wait.
        self._next_due: float | None = None
        self._requeue: list[LeaseToken] = []  # back unchanged: never delivered, or shutdown
        self._failed: list[FailedAttempt] = []  # failed attempts, under the retry policy
        self.retry = retry
        self.clock = clock
        #: When a deadline window opens or an expiry passes next (``Store.tick``).
        self._tick_at: float | None = clock.time()  # at start: rebuilt from the store
        if hasattr(clock, "subscribe"):
            clock.subscribe(self._wakeup.set)
        self._maybe_ready = True
        self._store_failing = False
        #: Lazy mode: holds new leases while the machine is overloaded (hold and resume go
        #: to the fault log, not the fault Event: nothing failed).
        self.gate = Gate(lazy, store.record_fault) if lazy is not None else None

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving: requeue what consumers hold, close every connection."""
        self.stopping = True
        self._wakeup.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        try:
            while not self.stopping:
                ready = self._waiter.wait(self._waitables(), self._timeout())
                if not ready and self._waiters:
                    self._maybe_ready = True  # the safety re-check: see SAFETY_CHECK
                for obj in ready:
                    self._on_ready(obj)
                now = self.clock.time()
                if self._next_due is not None and self._next_due <= now:
                    self._next_due = None
                    self._maybe_ready = True
                if self._tick_at is not None and self._tick_at <= now:
                    try:
                        self._tick(now)
                    except StoreError as exc:  # retried, and deliveries go on meanwhile
                        self._tick_at = now + STORE_RETRY
                        self._store_failed(exc)
                self._expire_leases(now)
                try:
                    self._flush()
                    self._store_failing = False
                except StoreError as exc:
                    # Disk full, I/O error, lock timeout: what was not applied stays queued
                    # here and is retried every STORE_RETRY seconds; consumers keep waiting.
                    self._store_failed(exc)
        except BaseException as exc:
            log.exception("durableq dispatcher stopped by an error")
            self.on_fault(Fault("owner-thread-died", time.time(), f"{type(exc).__name__}: {exc}"))
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        # Frames already sent to us (a consumer's last acks, its BYE) still count.
        try:
            for obj in wait([c for c in self._consumers if c is not None], 0):
                self._on_ready(obj)
        except Exception as exc:
            log.warning("durableq: could not read the last frames at shutdown: %s", exc)
        held = [token for token, _ in self._leases.values()]
        try:
            self._apply(final_requeue=held)
        except Exception as exc:  # the store failed: leases come back at the next open
            log.warning("durableq: could not requeue %d leases at shutdown: %s", len(held), exc)
        self._close_descriptors()

    def _close_descriptors(self, *, forked: bool = False) -> None:
        """Close the listener, the owner's end of every consumer's connection and the
        wakeups: at shutdown, or (``forked``) the copies a child forked from the owner got.
        Kept open there, they outlive the owner in every child it forked: a consumer
        blocked on its connection never saw the owner die. (The dispatcher's thread does
        not run in such a child.)"""
        for conn in list(self._consumers):
            if conn is not None:
                conn.close()
        self._consumers.clear()
        self._listener.close()
        if forked:
            self.stopping = True
            self._wakeup.forget()
        else:
            self._wakeup.close()
        # A server's subscription is left be in a child: closing it may talk on the
        # parent's connection.
        if self._put_watch is not None and (not forked or isinstance(self._put_watch, FifoWatch)):
            self._put_watch.close()

    def _waitables(self) -> list[Any]:
        # Drained even with nobody waiting: an unread subscription backs up in the server.
        watch = self._put_watch
        if watch is not None and watch.fileno() >= 0:
            return [self._listener, self._wakeup, watch, *self._consumers]
        return [self._listener, self._wakeup, *self._consumers]

    def _timeout(self) -> float | None:
        timeout = None
        if self._expiry:
            timeout = max(0.0, self._expiry[0][0] - self.clock.time())
        if self._waiters:
            timeout = SAFETY_CHECK if timeout is None else min(timeout, SAFETY_CHECK)
        if self._store_failing:
            timeout = STORE_RETRY if timeout is None else min(timeout, STORE_RETRY)
        if self._waiters:
            for event in (self._next_due, self._tick_at):
                if event is not None:
                    due = max(0.0, event - self.clock.time())
                    timeout = due if timeout is None else min(timeout, due)
        recheck = self.gate.recheck_in() if self.gate is not None and self._waiters else None
        if recheck is not None:
            timeout = recheck if timeout is None else min(timeout, recheck)
        return timeout

    # -- input ------------------------------------------------------------------------------

    def _on_ready(self, obj: Any) -> None:
        if obj is self._listener:
            conn = w.accept(self._listener)
            self._consumers[conn] = Consumer(conn)
        elif obj is self._wakeup:
            self._wakeup.clear()
        elif obj is self._put_watch:
            self._put_watch.drain()
            self._maybe_ready = True
        else:
            consumer = self._consumers[obj]
            try:
                if consumer.reader is None:
                    # The hello alone, bounded and unpickled: a stranger gets no further.
                    self._on_hello(consumer, obj.recv_bytes(w.HELLO_SIZE))
                    if obj.closed or not consumer.authed:
                        return
                    consumer.reader = FrameReader(obj.fileno())
                    if not readable(obj.fileno()):
                        return
                for frame in consumer.reader.read():  # all that came, in one system call
                    if obj.closed:
                        break
                    self._on_frame(consumer, w.loads(frame))
            except (EOFError, OSError):
                self._drop(consumer)

    def _on_hello(self, c: Consumer, data: bytes) -> None:
        # Raw bytes, checked before anything is unpickled: a stranger on the socket must
        # not get pickle.loads() in the owner.
        secret, pid = w.parse_hello(data)
        if hmac.compare_digest(secret, self.secret):
            c.authed, c.pid = True, pid
        else:
            self._drop(c)

    def _on_frame(self, c: Consumer, frame: tuple[Any, ...]) -> None:
        kind = frame[0]
        if kind == w.WANT:
            self._settle(c, frame[2], ack=True)
            c.credit, c.nowait = max(1, int(frame[1])), bool(frame[3])
            if not c.waiting:
                c.waiting = True
                self._waiters.append(c)
            # Raise the flag before looking at the store: a producer that commits after our
            # look reads the flag after its commit, sees it and notifies us.
            self.hungry.value = 1
            self._maybe_ready = True
        elif kind == w.ACK:
            self._settle(c, frame[1], ack=True)
        elif kind == w.NACK:
            self._settle(c, frame[1], ack=False, requeue=frame[2], why=frame[3:])
        elif kind == w.PUT:
            self._coming(frame[2], frame[3])
            self._absorb = True
        elif kind == w.CANCEL:
            if c.waiting:
                c.waiting = False
                self._waiters.remove(c)
            c.send((w.CANCELLED,))
        elif kind == w.RPUT:
            self._puts.append((c, frame[1], Timing(*frame[2])))  # committed in _flush
        elif kind == w.HAND:
            self._puts.append((None, frame[1], Timing(*frame[2])))  # the same, no answer
        elif kind == w.CALL:
            self._reply(c, lambda: self.call(frame[1], *frame[2:]))
        elif kind == w.JOIN:
            self._joiners.append(c)
        elif kind == w.BYE:
            self._settle(c, frame[1], ack=True)
            self._settle(c, frame[2], ack=False)  # fetched but never handed out
            c.said_bye = True
            self._drop(c)

    def _store_failed(self, exc: StoreError) -> None:
        if not self._store_failing:
            self.on_fault(Fault("store-failed", time.time(), str(exc)))
        self._store_failing = True

    def _reply(self, c: Consumer, fn: Callable[[], Any]) -> None:
        try:
            c.send((w.RESULT, fn()))
        except (EOFError, OSError):
            raise
        except Exception as exc:
            if isinstance(exc, StoreError):
                self._store_failed(exc)  # recorded before the caller hears of it
            c.send((w.RESULT, None, exc))

    def call(self, name: str, args: tuple[Any, ...] = ()) -> Any:
        """Answer a read or a repair; acks and puts that arrived before it are applied
        first, so a caller's own earlier acks and handed-over puts are counted by the time
        it gets the answer."""
        if self._puts:
            self._commit_puts()
        self._apply()
        if name == "sync":
            return None  # a barrier: what the caller sent before it is stored
        if name == "stats":
            return self.stats()
        if name in ("qsize", "empty", "faults"):
            return read_store(self.store, name)
        result = admin(self.store, name, args, self.clock.time())
        self._maybe_ready = True  # a repair may have made messages ready
        self._tick_at = self.clock.time()  # and may have changed what comes due next
        return result

    def stats(self) -> dict[str, Any]:
        return {
            **self.store.counts().as_dict(),
            "consumers": sum(1 for c in self._consumers.values() if c.authed),
            "owner_pid": os.getpid(),
            **vars(self.counters),
            **(self.gate.stats() if self.gate is not None else {}),
        }

    def _settle(
        self,
        c: Consumer,
        tokens: list[LeaseToken],
        *,
        ack: bool,
        requeue: bool = True,
        why: tuple[Any, ...] | None = None,
    ) -> None:
        """Settle leases: acked; given back unchanged (``why`` None: never handed out); or
        failed (``why`` = (delay, error)) and judged by the retry policy."""
        # Any consumer may settle a lease (a message can be handed to another thread); the
        # token's attempt number is what fences off a lease that expired and moved on.
        for token in tokens:
            lease = self._leases.get(token[0])
            if lease is None or lease[0] != token:
                self.counters.stale_acks += 1  # expired and handed on, or already settled
                continue
            del self._leases[token[0]]
            del lease[1].held[token[0]]
            if ack:
                self._acks.append(lease[0])
            elif why is None:
                self._requeue.append(lease[0])
            else:
                self._fail(lease[0], ERROR, c.pid, *why, retryable=requeue)

    def _fail(
        self,
        token: LeaseToken,
        cause: str,
        pid: int,
        delay: float | None = None,
        error: tuple[str, str, str, bool] | None = None,
        *,
        retryable: bool = True,
    ) -> None:
        """Queue a failed attempt for the store: ``error`` is (type, message, traceback,
        whether the policy's ``retry_on`` matches)."""
        kind, message, tb, matches = error or ("", "", "", True)
        if cause == CRASH and not message:
            message = f"consumer pid {pid} died holding the message"
        elif cause == TIMEOUT and not message:
            message = f"not acked within the visibility timeout of {self.ttl:g} s"
        elif not (kind or message):
            message = "nacked" if retryable else "nacked without requeue"
        failure = Failure(
            self.clock.time(), token.id, "", token.attempt, cause, kind, message, tb, pid
        )
        self._failed.append(FailedAttempt(
            token, cause, self.retry, failure, retryable and matches, delay
        ))

    def _drop(self, c: Consumer) -> None:
        """A connection ended: without BYE its process (or thread) crashed holding leases."""
        if c.conn in self._consumers:
            del self._consumers[c.conn]
        if c.conn is not None:
            c.conn.close()
        if c.waiting:
            self._waiters.remove(c)
            c.waiting = False
        if c in self._joiners:
            self._joiners.remove(c)
        if not c.held:
            return
        if c.said_bye:
            # A thread left cleanly but handed messages to others in its process: they stay
            # leased, watched by a sibling connection, else by their visibility timeout.
            heir = next(
                (o for o in self._consumers.values() if o.pid == c.pid and o.authed),
                self._orphans,
            )
            for token in c.held.values():
                self._leases[token.id] = (token, heir)
            heir.held.update(c.held)
            c.held.clear()
            return
        tokens = list(c.held.values())
        for token in tokens:
            del self._leases[token.id]
            self._fail(token, CRASH, c.pid)
        c.held.clear()
        self.counters.redelivered_after_crash += len(tokens)
        ids = ", ".join(str(t.id) for t in tokens[:10])
        self.on_fault(
            Fault(
                "consumer-died",
                time.time(),
                f"consumer pid {c.pid} exited holding {len(tokens)} message(s) "
                f"[{ids}]; requeued for redelivery",
            )
        )

    def _expire_leases(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, token = self._expiry.popleft()
            lease = self._leases.get(token.id)
            if lease is None or lease[0] != token:
                continue  # settled already
            del self._leases[token.id]
            del lease[1].held[token.id]
            self._fail(token, TIMEOUT, lease[1].pid)
            self.counters.expired_leases += 1

    # -- output -----------------------------------------------------------------------------

    def _apply(self, final_requeue: Sequence[LeaseToken] = ()) -> None:
        # Each list is cleared only once the store took it: a failure leaves it for a retry.
        if self._acks:
            self.counters.acked += self.store.ack(self._acks)
            self._acks = []
        requeue = self._requeue + list(final_requeue)
        if requeue:
            self.counters.nacked += self.store.nack(requeue, requeue=True)
            self._requeue = []
            self._maybe_ready = True
            if self.take_slot is not None:
                for _ in requeue:
                    self.take_slot()
        if self._failed:
            verdicts = self.store.fail(self._failed, now=self.clock.time())
            self._failed = []
            for verdict in verdicts:
                if verdict is None:
                    continue
                self.counters.nacked += 1
                if verdict.retry:
                    self._coming(verdict.due)
                    if self.take_slot is not None:
                        self.take_slot()

    def _commit_puts(self) -> None:
        """Commit every producer's RPUT (and HAND) of this round in one transaction (one
        fsync under sync="full"), then answer each RPUT with its ids."""
        puts, self._puts = self._puts, []
        # One transaction per timing group: a round's plain puts (due now) share one.
        groups: dict[Timing, list[tuple[Consumer | None, list[bytes]]]] = {}
        now = self.clock.time()
        for c, payloads, timing in puts:
            if 0 <= timing.due <= now and timing.event() is None:
                timing = Timing(timing.priority, 0.0)  # due now: shares the round's commit
            groups.setdefault(timing, []).append((c, payloads))
        for timing, members in groups.items():
            try:
                ids = self.store.put_many(
                    [p for _, payloads in members for p in payloads],
                    **timing._replace(due=timing.due or self.clock.time())._asdict(),
                )
            except Exception as exc:
                if isinstance(exc, StoreError):
                    self._store_failed(exc)
                lost = sum(len(p) for c, p in members if c is None)
                if lost:  # handed over: no one waits to hear it, so it goes to the faults
                    log.error("durableq: %d handed-over put(s) not stored: %r", lost, exc)
                    self.on_fault(Fault("put-failed", time.time(), f"{lost} put(s): {exc!r}"))
                for c, _ in members:
                    if c is not None:
                        self._send(c, (w.RESULT, None, exc))
                continue
            start = 0
            for c, payloads in members:
                if c is not None:
                    self._send(c, (w.RESULT, ids[start : start + len(payloads)]))
                start += len(payloads)
            self._coming(timing.due, timing.event())

    def _coming(self, due: float, event: float | None = None) -> None:
        """Messages due at ``due`` were committed: deliverable now, or keep the one timer
        for the earliest due time (a newcomer that is earlier displaces it). ``event``: when
        one of them is bumped or expires."""
        if due <= self.clock.time():
            self._maybe_ready = True
        elif self._next_due is None or due < self._next_due:
            self._next_due = due
        if event is not None and (self._tick_at is None or event < self._tick_at):
            self._tick_at = event

    def _tick(self, now: float) -> None:
        """A deadline window opened or an expiry passed: apply them, find the next."""
        self.store.tick(now)
        next_event = getattr(self.store, "next_event", None)  # else due times wake it too
        self._tick_at = (next_event or self.store.next_due)(now)
        self._maybe_ready = True

    def _flush(self) -> None:
        announced = self.announced
        if announced.value:
            # Cleared before this round reads the store: a producer that saw it set wrote
            # its frame before now, and this round (or that PUT's) drains it. Every round
            # clears it, so a producer killed between setting it and sending its PUT
            # silences the others for one round only.
            announced.value = 0
        if self._puts:
            self._commit_puts()
        self._apply()
        if self._absorb:
            self._absorb = False
            if not self._waiters and self._ingest is not None:
                self._ingest()  # puts piled up with no one waiting: take them in now
        if self._waiters and self._maybe_ready:
            self._deliver()
        self.hungry.value = 1 if self._waiters else 0
        if self._joiners and not self._leases and not self.store.has_ready(float("inf")):
            for c in self._joiners:
                self._send(c, (w.JOINED,))
            self._joiners.clear()

    def _deliver(self) -> None:
        band = self.gate.admit() if self.gate is not None else ALL
        if band == NONE:
            return  # lazy mode holds: _timeout wakes us for the next check
        now = self.clock.time()
        wanted = sum(c.credit for c in self._waiters)
        leased = self.store.lease(
            self.owner_id, wanted, now=now, ttl=self.store_ttl, max_priority=band
        )
        if len(leased) < wanted and band == ALL:  # held: look again at the next check
            self._maybe_ready = False
            self._next_due = self.store.next_due(now)  # rebuilt from the store, one seek
        self.counters.delivered += len(leased)
        if self.release_slot is not None:
            for _ in leased:
                self.release_slot()
        waiters = list(self._waiters)
        for c, batch in zip(waiters, share(leased, [c.credit for c in waiters]), strict=True):
            if not batch:
                continue
            self._waiters.remove(c)
            c.waiting = False
            for token, _ in batch:
                if self.ack_on_send:
                    self._acks.append(token)  # at-most-once: settled as it leaves
                else:
                    self._leases[token.id] = (token, c)
                    c.held[token.id] = token
                    self._expiry.append((now + self.ttl, token))
            # Plain tuples on the wire: pickling a NamedTuple calls back into Python.
            self._send(c, (w.MSGS, [(tuple(token), payload) for token, payload in batch]))
        for c in [c for c in self._waiters if c.nowait]:
            self._waiters.remove(c)
            c.waiting = False
            self._send(c, (w.EMPTY,))

    def _send(self, c: Consumer, frame: tuple[Any, ...]) -> None:
        try:
            c.send(frame)
        except OSError:
            self._drop(c)


#: This process's dispatchers: a forked child closes their descriptors.
_live: weakref.WeakSet[Dispatcher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for dispatcher in list(_live):
        dispatcher._close_descriptors(forked=True)
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def read_store(store: Store, name: str) -> Any:
    """The reads a queue answers from its store: for the owner's callers and, through the
    owner, for processes that cannot open the store themselves."""
    if name == "qsize":
        return store.counts().ready
    if name == "empty":
        return not store.has_ready(store.clock.time())
    if name == "faults":
        return store.faults()
    raise ValueError(f"unknown read {name!r}")
