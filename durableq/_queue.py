"""``Queue``: ``multiprocessing.queues.Queue`` whose every put is committed before it returns.

Differences from the stdlib class it extends (whose pipe and feeder thread go unused):

- ``put`` serializes and commits in the caller, so it raises what it cannot store instead
  of a feeder thread dropping it later; it returns once the message is durable.
- ``get`` asks the owner over this thread's own connection; the message stays in flight
  until acked (``ack=`` mode), and comes back if its consumer dies first.
- The process that creates the queue owns it: it runs the dispatcher thread that leases
  messages and applies acks. The queue serves other processes for as long as the owner's
  object lives (until it is collected or the owner process exits).
"""

from __future__ import annotations

import datetime
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import queue as pyqueue
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing import util
from typing import Any, Literal

from . import _wire as w
from ._admin_api import AdminMixin
from ._client import Client
from ._clock import SYSTEM, Clock
from ._dispatcher import Dispatcher, read_store
from ._errors import ConfigurationError, DurableQError, OwnerGone, StoreError
from ._lazy import Lazy, lazy_of
from ._message import Message
from ._owner import claim, fault_recorder, release_slot, shutdown_owner
from ._policy import DEFAULT_RETENTION, QUEUE_DEFAULT, Retention, RetryPolicy
from ._records import Fault, LeaseToken, Priority
from ._schedule import DEADLINE_WINDOW, Timing, priority_of, timing_of
from ._serializer import Serializer, get_serializer
from .store import DiskcacheStore, Store

AckMode = Literal["auto", "manual", "on_get"]
_ACK_MODES = ("auto", "manual", "on_get")
_UNBOUNDED: int = multiprocessing.synchronize.SEM_VALUE_MAX  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Shared:
    """What every process using the queue needs; pickled along with the stdlib state."""

    address: str | bytes
    secret: bytes
    path: str
    owner_pid: int
    ack: str
    serializer: Serializer
    fault: Any  # multiprocessing.Event
    hungry: Any  # shared byte, 1 while a consumer waits for messages
    #: Shared byte: 1 once a producer sent PUT, until the owner's next round, which drains
    #: the put logs after clearing it; meanwhile other plain puts need not say anything.
    announced: Any
    store: Store | None  # None when the store cannot be opened outside the owner
    via_owner: bool  # commit puts through the owner, which groups them (sync="full")
    #: Put through the owner without waiting for it: a store that is neither shared nor
    #: durable (``MemoryStore``), where waiting would make nothing safer.
    hand_over: bool = False
    clock: Clock = SYSTEM
    deadline_window: float = DEADLINE_WINDOW
    retry_on: tuple[type[BaseException], ...] = (Exception,)


class Queue(AdminMixin, multiprocessing.queues.Queue):  # type: ignore[type-arg]
    """A drop-in ``multiprocessing.Queue`` with at-least-once delivery.

    Args:
        maxsize: as for ``multiprocessing.Queue``; 0 means unbounded.
        path: queue directory; ``None`` makes a private temporary one, removed when the
            owner shuts down. Reopening a path delivers whatever was not acked.
        ctx: a multiprocessing context (default: the current one).
        ack: ``"auto"`` acks a consumer's message when it calls ``get()`` again, calls
            ``task_done()`` or exits cleanly; ``"manual"`` hands out ``Message`` objects
            through ``get_message()``; ``"on_get"`` is at-most-once, like mp.Queue.
        sync: ``"normal"`` survives process crashes, ``"full"`` also power loss (fsync).
        serializer: ``"auto"`` (msgpack, pickle fallback), ``"msgpack"`` or ``"pickle"``.
        visibility_timeout: seconds a consumer may hold a message before it is redelivered.
        wait_for_owner: wait for the current owner of ``path`` to exit instead of raising
            ``QueueLocked``.
        exclusive: with a server store (``RedisStore``, ``PostgresStore``), also take the
            queue's owner lock in the server: one exclusive owner at a time, others get
            ``QueueLocked`` (or wait, with ``wait_for_owner``). Without it every process
            that opens the queue is a peer. A directory store always has one owner.
        store: a ``Store`` to use instead of ``DiskcacheStore(path)``.
        retry: the ``RetryPolicy`` for nacked messages and those whose consumer died or
            overran ``visibility_timeout`` (default: back at once, no limit, one band lower
            each time).
        deadline_window: seconds before its ``deadline`` a message is delivered as HIGH.
        history: what to keep of done and expired messages, and of the failure log: a
            count, an age (seconds or timedelta), both as a tuple, a ``Retention``, or None
            (everything); 0 keeps no history. Default: 10,000 or 7 days.
        clock: where the owner reads the time (a ``ManualClock`` in tests).
        trusted: open ``path`` even if another user could write to it. Dangerous: whoever
            can write a record can run code in every reader (docs/security.md).
        lazy: a ``durableq.Lazy`` (or True for its defaults): hold new deliveries while
            the machine is overloaded; messages already handed out are not affected.
        key: the HMAC key every stored record is signed with (bytes, or 64 hex digits),
            for queues several hosts share; default ``DURABLEQ_KEY``, else a random key
            kept 0600 in ``path``. A record failing its check is quarantined, never read.

    Raises:
        QueueLocked: another live process owns ``path``.
        UnsafePath: another user could write to ``path`` (and ``trusted`` is False).
        ConfigurationError: contradictory or invalid options.
    """

    # Set by multiprocessing.queues.Queue.__init__ (untyped in typeshed).
    _maxsize: int
    _sem: Any
    _closed: bool

    def __init__(
        self,
        maxsize: int = 0,
        *,
        path: str | os.PathLike[str] | None = None,
        ctx: Any = None,
        ack: AckMode = "auto",
        sync: str = "normal",
        serializer: str | Serializer = "auto",
        visibility_timeout: float = 60.0,
        wait_for_owner: bool = False,
        store: Store | None = None,
        trusted: bool = False,
        retry: RetryPolicy | None = None,
        deadline_window: float = DEADLINE_WINDOW,
        history: Any = DEFAULT_RETENTION,
        clock: Clock = SYSTEM,
        lazy: Lazy | bool | None = None,
        key: bytes | str | None = None,
        exclusive: bool = False,
    ) -> None:
        if ack not in _ACK_MODES:
            raise ConfigurationError(f"ack must be one of {_ACK_MODES}, not {ack!r}")
        if not visibility_timeout > 0:
            raise ConfigurationError(f"visibility_timeout must be > 0, not {visibility_timeout!r}")
        if store is not None and path is not None:
            raise ConfigurationError("pass path= or store=, not both")
        if not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a durableq.RetryPolicy, not {retry!r}")
        retry = retry or QUEUE_DEFAULT
        if isinstance(deadline_window, bool) or not isinstance(deadline_window, int | float) or (
            not deadline_window >= 0
        ):
            raise ConfigurationError(
                f"deadline_window must be seconds >= 0, not {deadline_window!r}"
            )
        retention = Retention.of(history)
        if not isinstance(clock, Clock):
            raise TypeError(f"clock must have a time() method, not {clock!r}")
        codec = get_serializer(serializer)
        lazy_limits = lazy_of(lazy)
        ctx = ctx or multiprocessing.get_context()
        super().__init__(maxsize, ctx=ctx)

        store, lock, lock_dir, tmpdir = claim(
            path, store, sync=sync, wait=wait_for_owner, trusted=trusted, key=key,
            exclusive=exclusive,
        )

        self._shared = _Shared(
            address=w.new_address(),
            secret=os.urandom(32),
            path=lock_dir or repr(store),
            owner_pid=os.getpid(),
            ack=ack,
            serializer=codec,
            fault=ctx.Event(),
            hungry=ctx.RawValue("b", 0),
            announced=ctx.RawValue("b", 0),
            store=store if store.shared else None,
            via_owner=getattr(store, "sync", "normal") == "full",
            hand_over=not store.shared and not getattr(store, "durable", True),
            clock=clock,
            deadline_window=float(deadline_window),
            retry_on=retry.retry_on,
        )
        store.retention, store.clock = retention, clock
        self._owner_store = store
        self._faults: list[Fault] = []
        sem = self._sem
        if self._bounded:
            for _ in range(min(store.counts().ready, self._maxsize)):
                sem.acquire(False)
        # The dispatcher gets closures over the parts it needs, never the queue itself:
        # a strong reference from a running thread would keep the queue alive forever.
        self._dispatcher = Dispatcher(
            store,
            address=self._shared.address,
            secret=self._shared.secret,
            visibility_timeout=visibility_timeout,
            ack_on_send=ack == "on_get",
            on_fault=fault_recorder(self._faults, self._shared.fault, store),
            release_slot=(lambda: release_slot(sem)) if self._bounded else None,
            take_slot=(lambda: sem.acquire(False)) if self._bounded else None,
            hungry=self._shared.hungry,
            announced=self._shared.announced,
            name=os.path.basename(lock_dir) if lock_dir else "memory",
            retry=retry,
            clock=clock,
            lazy=lazy_limits,
        )
        if isinstance(store, DiskcacheStore):  # a quarantined record sets the fault Event
            store.on_integrity_fault = self._dispatcher.on_fault
        self._dispatcher.start()
        self._shutdown = util.Finalize(
            self, shutdown_owner, args=(self._dispatcher, store, lock, tmpdir), exitpriority=-10
        )
        self._init_local()

    # Only weak references from here on: the dispatcher must not keep the queue alive.
    @property
    def _bounded(self) -> bool:
        return bool(self._maxsize != _UNBOUNDED)

    def _is_owner(self) -> bool:
        return self._dispatcher is not None and os.getpid() == self._shared.owner_pid

    def _release_slot(self) -> None:
        if self._bounded:
            release_slot(self._sem)

    def _init_local(self) -> None:
        self._local = threading.local()
        self._clients: weakref.WeakSet[Client] = weakref.WeakSet()
        util.register_after_fork(self, type(self)._forget_clients)

    def _forget_clients(self) -> None:
        for client in list(self._clients):
            client.forget()
        self._local = threading.local()
        self._clients = weakref.WeakSet()

    def __getstate__(self) -> tuple[Any, ...]:  # type: ignore[override]
        return (*super().__getstate__(), self._shared)  # type: ignore[misc]

    def __setstate__(self, state: tuple[Any, ...]) -> None:  # type: ignore[override]
        super().__setstate__(state[:-1])  # type: ignore[arg-type]
        self._shared = state[-1]
        self._dispatcher = None  # type: ignore[assignment]
        self._faults = []
        self._init_local()

    # -- helpers ----------------------------------------------------------------------------

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None or client.pid != os.getpid():
            s = self._shared
            client = Client(s.address, s.secret, s.path, s.owner_pid, s.hungry, s.announced)
            client.link.wait_at_exit = not getattr(self, "_joincancelled", False)
            self._local.client = client
            self._clients.add(client)
        return client

    def _store(self) -> Store | None:
        """The store, when this process may use it directly."""
        if self._is_owner():
            return self._owner_store
        return self._shared.store

    def _note_fault(self, fault: Fault) -> None:
        """Record a fault seen in this process: the shared Event, this process's list, and
        the store's log when reachable."""
        self._faults.append(fault)
        self._shared.fault.set()
        store = self._store()
        if store is not None:
            store.record_fault(fault)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def _commit(self, payloads: list[bytes], timing: Timing) -> None:
        store = self._store()
        client = self._client()
        if store is None or self._shared.via_owner:
            try:
                if self._shared.hand_over:
                    client.hand(payloads, tuple(timing))
                else:
                    client.call(w.RPUT, payloads, tuple(timing))
                return
            except OwnerGone:
                if store is None:
                    raise
                # No owner to group with: commit alone (it is durable either way).
        # A store that can commit without reading the ids back saves that wait (RabbitMQ).
        put_quiet = getattr(store, "put_quiet", None)
        try:
            if put_quiet is not None:
                put_quiet(payloads, **timing._asdict())
            else:
                store.put_many(payloads, **timing._asdict())
        except StoreError as exc:
            self._note_fault(Fault("store-failed", time.time(), str(exc)))
            raise
        client.notify_put(len(payloads), timing.due, timing.event(), self._shared.clock.time)

    def _timing(self, *, priority: Any = None, front: bool = False, **options: Any) -> Timing:
        s = self._shared
        if not front and all(v is None for v in options.values()):
            # Due now in its band, with no later change: the common put, kept cheap.
            return Timing(int(priority_of(priority)), s.clock.time())
        return timing_of(
            window=s.deadline_window, clock=s.clock, priority=priority, front=front, **options
        )

    # -- producing ----------------------------------------------------------------------------

    def put(
        self,
        obj: Any,
        block: bool = True,
        timeout: float | None = None,
        *,
        priority: Priority | str | int | None = None,
        not_before: datetime.datetime | float | None = None,
        delay: float | None = None,
        front: bool = False,
        deadline: datetime.datetime | float | None = None,
        ttl: float | datetime.timedelta | None = None,
        expires_at: datetime.datetime | float | None = None,
    ) -> None:
        """Commit ``obj``; return once it is durable.

        Scheduling (all optional): ``priority`` ``"high"``/``"medium"`` (default)/``"low"``
        (ready HIGH messages go before MEDIUM before LOW, FIFO within a band); ``front=True``
        goes ahead of its band; ``not_before`` (a datetime, naive meaning local time, or
        epoch seconds) or ``delay`` (seconds) keeps it *scheduled* until then. ``deadline``:
        within ``deadline_window`` of it the message is delivered as HIGH; delivered after it,
        it is counted late. ``ttl`` (seconds) or ``expires_at``: not delivered by then, it is
        *expired* and never delivered.

        Raises:
            ValueError: the queue is closed in this process.
            queue.Full: bounded queue still full after ``timeout``.
            StoreError: the store failed; nothing was stored.
            TypeError: ``serializer="msgpack"`` and ``obj`` is not plain data.
        """
        self._check_open()
        timing = self._timing(
            priority=priority, not_before=not_before, delay=delay, front=front,
            deadline=deadline, ttl=ttl, expires_at=expires_at,
        )
        payload = self._shared.serializer.dumps(obj)
        if self._bounded and not self._sem.acquire(block, timeout):
            raise pyqueue.Full
        try:
            self._commit([payload], timing)
        except BaseException:
            self._release_slot()
            raise

    def put_many(
        self,
        items: Iterable[Any],
        *,
        priority: Priority | str | int | None = None,
        not_before: datetime.datetime | float | None = None,
        delay: float | None = None,
        front: bool = False,
        deadline: datetime.datetime | float | None = None,
        ttl: float | datetime.timedelta | None = None,
        expires_at: datetime.datetime | float | None = None,
    ) -> None:
        """Commit every item of ``items`` in one transaction; all or none are stored.
        Scheduling options apply to every item, as for ``put`` (``front=True``: the batch
        goes ahead of its band, its items in their order)."""
        self._check_open()
        timing = self._timing(
            priority=priority, not_before=not_before, delay=delay, front=front,
            deadline=deadline, ttl=ttl, expires_at=expires_at,
        )
        dumps = self._shared.serializer.dumps
        payloads = [dumps(obj) for obj in items]
        if not payloads:
            return
        taken = 0
        try:
            for _ in payloads if self._bounded else ():
                self._sem.acquire()
                taken += 1
            self._commit(payloads, timing)
        except BaseException:
            for _ in range(taken):
                self._release_slot()
            raise

    # -- consuming ----------------------------------------------------------------------------

    def _take(self, block: bool, timeout: float | None) -> Message[Any]:
        self._check_open()
        client = self._client()
        raw, payload = client.take(block, timeout)
        token = LeaseToken(*raw)
        try:
            body = self._shared.serializer.loads(payload)
        except Exception as exc:
            # Kept as dead, never silently dropped.
            client.nack([token], False, None, (type(exc).__qualname__, str(exc), "", False))
            detail = f"message {token.id} cannot be deserialized ({exc!r}); moved to dead"
            self._note_fault(Fault("undecodable-message", time.time(), detail))
            raise DurableQError(detail) from exc
        return Message(self._client, token, body, self._shared.retry_on)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return an item, as ``multiprocessing.Queue.get``.

        In ``ack="auto"`` mode the item stays in flight until this consumer calls ``get()``
        again or exits cleanly; if it dies first, the item is delivered again.
        """
        if self._shared.ack == "manual":
            raise ValueError('ack="manual": use get_message() and ack() each message')
        client = self._client()
        if self._shared.ack == "auto":
            self._finish_previous(client)
        msg = self._take(block, timeout)
        if self._shared.ack == "auto":
            self._hold(client, msg.token)
        return msg.body

    def _finish_previous(self, client: Client) -> None:
        # The consumer asks for more: its previous item is done. The ack rides with the
        # next batch.
        client.ack(client.link.settle_on_exit, now=False)
        client.link.settle_on_exit = []

    def _hold(self, client: Client, token: LeaseToken) -> None:
        client.link.settle_on_exit = [token]  # acked by the next get() or a clean exit

    def get_message(self, block: bool = True, timeout: float | None = None) -> Message[Any]:
        """Return the next ``Message``; it stays in flight until acked or nacked."""
        return self._take(block, timeout)

    # -- state --------------------------------------------------------------------------------

    def _admin(self, name: str, *args: Any) -> Any:
        return self._client().call(w.CALL, name, args)

    def _decode(self, body: bytes) -> Any:
        return self._shared.serializer.loads(body)

    def _read(self, name: str) -> Any:
        store = self._store()
        if store is None:
            return self._client().call(w.CALL, name)
        return read_store(store, name)

    def _buffered(self) -> int:
        client: Client | None = getattr(self._local, "client", None)
        return client.buffered if client is not None and client.pid == os.getpid() else 0

    def qsize(self) -> int:
        """Messages this thread could still get: ready ones plus those already fetched
        into its own buffer (a fast consumer receives them in batches)."""
        return int(self._read("qsize")) + self._buffered()

    def empty(self) -> bool:
        """Whether ``get`` would find nothing, from this thread's point of view."""
        return not self._buffered() and bool(self._read("empty"))

    def full(self) -> bool:
        return self._bounded and bool(self._sem._semlock._is_zero())

    @property
    def fault(self) -> Any:
        """A ``multiprocessing.Event`` set when the store fails, the owner's thread dies or a
        consumer dies holding messages."""
        return self._shared.fault

    def faults(self) -> list[Fault]:
        """What set ``fault``: the store's durable log plus this process's own failures."""
        try:
            logged = list(self._read("faults"))
        except DurableQError:
            logged = []
        return logged + [f for f in self._faults if f not in logged]

    def stats(self) -> dict[str, Any]:
        """Counts (``ready``, ``in_flight``, ``dead``), totals and the owner's counters.

        Asked of the owner over this thread's connection after sending its pending acks, so
        the answer counts every ack this consumer made before calling it.
        """
        client = self._client()
        client.flush_acks()
        return dict(client.call(w.CALL, "stats"))

    @property
    def path(self) -> str:
        return self._shared.path

    # -- ending -------------------------------------------------------------------------------

    def cancel_join_thread(self) -> None:
        """As ``multiprocessing.Queue``: this process will not wait at exit for what it
        put to reach the owner (puts handed to a ``MemoryStore`` owner may then be lost
        with it; puts to a durable store are committed before ``put`` returns anyway)."""
        super().cancel_join_thread()
        for client in list(self._clients):
            client.link.wait_at_exit = False

    def close(self) -> None:
        """This process will neither put nor get any more; its held items are acked (auto).

        In the owner the queue keeps serving other processes until the owner's object is
        collected or its process exits.
        """
        super().close()
        for client in list(self._clients):
            client.bye()

    def __repr__(self) -> str:
        return f"<durableq.{type(self).__name__} {self._shared.path}>"


class JoinableQueue(Queue):
    """``Queue`` with ``task_done()`` and ``join()``; a message is acked by ``task_done()``
    (or by a clean exit of the consumer holding it)."""

    def task_done(self) -> None:
        """Ack the oldest item this consumer got and has not yet marked done.

        Raises:
            ValueError: called more times than items were got.
        """
        client = self._client()
        if not client.link.settle_on_exit:
            raise ValueError("task_done() called too many times")
        client.ack([client.link.settle_on_exit.pop(0)])

    def _finish_previous(self, client: Client) -> None:
        pass  # here task_done() says when an item is finished, not the next get()

    def _hold(self, client: Client, token: LeaseToken) -> None:
        client.link.settle_on_exit.append(token)  # acked by task_done() or a clean exit

    def join(self) -> None:
        """Block until every item put has been acked (marked done)."""
        self._client().join()
