"""``Executor``: a ``concurrent.futures`` process pool whose tasks live in a durable store.

``submit`` commits the task before it returns; a dispatcher thread hands tasks to worker
processes one at a time and writes each outcome back in the same transaction as the ack.
A worker that dies costs its task one attempt; the pool itself never breaks. With a
``path``, a parent killed mid-run loses nothing: ``Executor(path=same)`` runs what was
unfinished and ``recovered()`` hands back futures for the earlier run's tasks.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any, Final

from ._admin import admin
from ._admin_api import AdminMixin
from ._allow import AllowList
from ._clock import SYSTEM, Clock
from ._errors import TaskAbandoned
from ._lazy import Gate, Lazy, lazy_of
from ._limits import MemoryWatch, auto_size, memory_limits
from ._owner import claim
from ._peers import PeerLink
from ._policy import DEFAULT_RETENTION, Retention
from ._records import Failure, Fault
from ._report import ErrorGroup, group
from ._schedule import DEADLINE_WINDOW, Timing, priority_of, timing_of
from ._task import (
    Options,
    check_options,
    chunks,
    decode_call,
    decode_outcome,
    encode_call,
    encode_chunk,
)
from ._workers import Dispatcher
from .store import DiskcacheStore, MemoryStore, Store

log = logging.getLogger("durableq")

#: Tasks committed per transaction by ``map``.
SUBMIT_BATCH = 1024
#: Submits between two asks to the dispatcher to move the put log into the store.
INGEST_EVERY = 1024


#: Options of a task due now: not_before, delay, deadline, ttl, expires_at all unset.
_NOW: Final = (None, None, None, None, None)


class TaskFuture(futures.Future):  # type: ignore[type-arg]
    """A ``concurrent.futures.Future`` that knows its stored task's id.

    Cancelling a pending future removes its task from the store: it never runs, not even
    after a restart.
    """

    def __init__(self, task_id: int, on_cancel: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.task_id = task_id
        self._on_cancel = on_cancel

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled and self._on_cancel is not None:
            on_cancel, self._on_cancel = self._on_cancel, None
            on_cancel(self.task_id)
        return cancelled

    def __repr__(self) -> str:
        return super().__repr__().replace(" state=", f" task_id={self.task_id} state=", 1)


class _State:
    """What the executor shares with its dispatcher's callbacks (never the executor itself,
    so an executor nobody references is collected and its pool shut down)."""

    def __init__(self, keep_results: bool, earlier: int, peers: bool = False) -> None:
        self.lock = threading.Lock()
        self.futures: dict[int, TaskFuture] = {}
        self.keep_results = keep_results
        self.earlier = earlier  # ids above belong to this run (without peers)
        # With peers, ids above are anyone's: an outcome with no future is parked only
        # while a submit of this executor is between its put and its register().
        self.peers = peers
        self.putting = 0
        # A task can finish before submit() has registered its future (the put happens
        # outside the lock, so the dispatcher never waits for a commit): park its outcome.
        self.early: dict[int, bytes] = {}
        self.dropped: set[int] = set()  # cancelled: an outcome that still comes is dropped
        self.finished: list[int] = []  # ids whose kept results this run may forget
        self.broken: futures.BrokenExecutor | None = None
        self.faults: list[Fault] = []

    def begin(self, task_id: int) -> bool:
        with self.lock:
            fut = self.futures.get(task_id)
            if task_id in self.dropped:
                self.dropped.discard(task_id)
                return False
        # A retried task's future is already running.
        return fut is None or fut.running() or fut.set_running_or_notify_cancel()

    def putting_begins(self) -> None:
        with self.lock:
            self.putting += 1

    def register(self, fs: list[TaskFuture], put: bool = False) -> None:
        """Hand out ``fs``; ``put``: their submit called ``putting_begins`` first."""
        early = []
        with self.lock:
            for fut in fs:
                outcome = self.early.pop(fut.task_id, None)
                if outcome is None:
                    self.futures[fut.task_id] = fut
                else:
                    early.append((fut, outcome))  # settled now, never kept here
            if put:
                self.putting -= 1
                if self.peers and not self.putting:
                    self.early.clear()  # every submit registered: what is left is a peer's
        self._settle(early)

    def awaited(self) -> list[int]:
        with self.lock:
            return list(self.futures)

    def resolve(self, outcomes: list[tuple[int, bytes]]) -> None:
        found = []
        with self.lock:
            for task_id, outcome in outcomes:
                fut = self.futures.pop(task_id, None)
                if fut is not None:
                    found.append((fut, outcome))
                elif task_id in self.dropped:
                    self.dropped.discard(task_id)
                elif self.peers:
                    if self.putting:
                        self.early[task_id] = outcome  # perhaps ours, not registered yet
                elif task_id > self.earlier:
                    self.early[task_id] = outcome
                # else: an earlier run's (or a peer's) task nobody here asked for: its
                # result stays stored for whoever asks
        self._settle(found)

    def _settle(self, found: list[tuple[TaskFuture, bytes]]) -> None:
        found.reverse()
        while found:
            # Popped, and no local outlives its turn: once a caller drops a future, its
            # result is freed (CPython's test_free_reference checks it with a weakref).
            fut, outcome = found.pop()
            if self.keep_results:
                self.finished.append(fut.task_id)
            if fut.running() or fut.set_running_or_notify_cancel():
                ok, value = decode_outcome(outcome)
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
                del value
            # else: cancelled after its task was leased: nobody wants the outcome
            del fut, outcome

    def abandon(self) -> None:
        """The dispatcher has stopped: no future may wait forever for it."""
        with self.lock:
            pending, self.futures = list(self.futures.values()), {}
        where = (
            "it stays stored (and runs on a peer)"
            if self.peers
            else "it stays stored for the next Executor on this path"
            if self.keep_results
            else "it is lost: without a path tasks live in memory"
        )
        for fut in pending:
            if not fut.done() and (fut.running() or fut.set_running_or_notify_cancel()):
                fut.set_exception(
                    TaskAbandoned(f"task {fut.task_id}: the executor stopped first; {where}")
                )

    def break_all(self, exc: futures.BrokenExecutor) -> None:
        with self.lock:
            self.broken = exc
            pending, self.futures = list(self.futures.values()), {}
        for fut in pending:
            if not fut.done() and (fut.running() or fut.set_running_or_notify_cancel()):
                fut.set_exception(exc)


class Executor(AdminMixin, futures.Executor):
    """A ``ProcessPoolExecutor`` that loses no task and never breaks.

    Args:
        max_workers: worker processes (default ``os.cpu_count()``); ``"auto"``: one per
            CPU as far as available memory allows (``hard_worker_memory``,
            ``max_worker_memory`` or 256 MiB each), shrinking by one worker at a time while
            less than 10% of memory is available and growing back above 25%.
        mp_context: multiprocessing context for the workers (default: the current one).
        initializer, initargs: run in each worker before its first task; if it raises, the
            executor is broken (``InitializerFailed``) and its tasks stay stored.
        max_tasks_per_child: replace a worker after this many tasks.
        path: directory keeping tasks and results; ``None`` keeps them in memory (a dead
            worker is still survived, a dead parent is not).
        store: a ``durableq.Store`` keeping tasks and results instead of ``path`` (not
            both). With a server store (``RedisStore``, ``PostgresStore``,
            ``RabbitMQStore``) every executor opened on it, on any host, is a peer: each
            runs the store's tasks with its own workers, and a future resolves whichever
            peer ran its task (README: "Many machines"). ``max_workers=0`` then submits
            and awaits only.
        visibility_timeout: with a server store, seconds a lease lasts unless renewed:
            this executor renews the leases of its running tasks every third of it, and
            the tasks of a peer whose host died run elsewhere within this long.
        max_attempts: runs of a task whose worker dies, before its future raises
            ``WorkerCrashed``.
        timeout: seconds a task may run before its worker is killed (default: no limit).
        retries: runs again after the task raised (an exception in ``retry_on``), before its
            future gets the exception; ``None``: no limit. Default 0, as ProcessPoolExecutor.
        backoff, backoff_cap, jitter, demote, retry_on, timeout_retries: the rest of the
            retry policy (``durableq.RetryPolicy``); ``timeout_retries`` (default 0) counts
            runs past ``timeout`` separately from crashes. Each can be set per task with
            ``options()``.
        deadline_window: seconds before a task's ``deadline`` it runs as HIGH priority.
        history: what to keep of finished tasks and failures (see ``durableq.Queue``).
        on_recurring_error: called with a ``durableq.ErrorGroup`` when failures sharing one
            fingerprint reach ``threshold`` in this run (on the dispatcher thread: keep it
            short; what it raises is logged).
        clock: where scheduling reads the time (a ``ManualClock`` in tests).
        wait_for_owner: wait for another process owning ``path`` to exit, instead of
            raising ``QueueLocked``.
        trusted: open ``path`` even if another user could write to it (dangerous:
            docs/security.md); otherwise that raises ``UnsafePath``.
        lazy: a ``durableq.Lazy`` (or True for its defaults): start no new task while the
            machine is overloaded; running tasks are not affected.
        max_worker_memory: bytes or a size (``"1GB"``, ``"512MiB"``): a worker whose RSS
            is over it after a task is replaced (as with ``max_tasks_per_child``).
        hard_worker_memory: a worker whose RSS is over it while it runs a task is killed;
            the attempt counts as a crash (``WorkerCrashed`` after ``max_attempts``).
        key: the HMAC key stored tasks and results are signed with (as for ``Queue``).
        allowed_modules: module names (each with its submodules) whose functions tasks may
            call; workers unpickle tasks refusing anything else (``durableq.TaskRefused``),
            and ``submit`` refuses such a function at once. None: no restriction.
    """

    def __init__(
        self,
        max_workers: int | str | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        path: str | os.PathLike[str] | None = None,
        store: Store | None = None,
        visibility_timeout: float = 60.0,
        max_attempts: int = 3,
        timeout: float | None = None,
        wait_for_owner: bool = False,
        trusted: bool = False,
        lazy: Lazy | bool | None = None,
        max_worker_memory: int | str | None = None,
        hard_worker_memory: int | str | None = None,
        retries: int | None = 0,
        backoff: float = 0.0,
        backoff_cap: float = 300.0,
        jitter: bool = True,
        demote: bool = True,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        timeout_retries: int | None = 0,
        deadline_window: float = DEADLINE_WINDOW,
        history: Any = DEFAULT_RETENTION,
        on_recurring_error: Callable[[ErrorGroup], Any] | None = None,
        threshold: int = 10,
        clock: Clock = SYSTEM,
        key: bytes | str | None = None,
        allowed_modules: Iterable[str] | None = None,
    ) -> None:
        lazy_limits = lazy_of(lazy)
        self._allowed = AllowList(allowed_modules) if allowed_modules is not None else None
        soft, hard = memory_limits(max_worker_memory, hard_worker_memory)
        auto = max_workers == "auto"
        peers = _check_store(path, store, visibility_timeout, key)
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif auto:
            max_workers = auto_size(soft, hard)
        elif peers and max_workers == 0 and not isinstance(max_workers, bool):
            pass  # a producer: its peers run the tasks
        elif not isinstance(max_workers, int) or max_workers <= 0:
            raise ValueError("max_workers must be greater than 0 (0 only with a server store)")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None and (
            not isinstance(max_tasks_per_child, int) or max_tasks_per_child <= 0
        ):
            raise ValueError("max_tasks_per_child must be >= 1")
        self._options = check_options(
            timeout, max_attempts, retries=retries, backoff=backoff, backoff_cap=backoff_cap,
            jitter=jitter, demote=demote, retry_on=retry_on, timeout_retries=timeout_retries,
        )
        retention = Retention.of(history)
        if not (isinstance(threshold, int) and threshold >= 1):
            raise ValueError(f"threshold must be an int >= 1, not {threshold!r}")
        if on_recurring_error is not None and not callable(on_recurring_error):
            raise TypeError("on_recurring_error must be a callable")
        self._window = float(deadline_window)
        self._clock = clock
        if mp_context is None:
            # As ProcessPoolExecutor: recycled workers are forked from a thread, which the
            # fork start method does not survive reliably; spawn them instead.
            mp_context = multiprocessing.get_context(
                "spawn" if max_tasks_per_child is not None else None
            )
        elif max_tasks_per_child is not None and mp_context.get_start_method() == "fork":
            raise ValueError(
                "max_tasks_per_child is incompatible with the 'fork' multiprocessing start "
                "method; supply a different mp_context."
            )
        ctx = mp_context
        durable = path is not None or store is not None
        store, lock, lock_dir, _ = claim(
            path,
            store if store is not None else None if durable else MemoryStore(),
            sync="normal",
            wait=wait_for_owner,
            trusted=trusted,
            key=key,
        )
        self._store: Store = store
        store.retention, store.clock = retention, clock
        # The owner of an embedded store numbers its tasks itself: a submit is then one
        # write to its put log, not a SQLite commit (store/_numbers.py).
        owned = store if isinstance(store, DiskcacheStore) and lock is not None else None
        self._put = owned.put_numbered if owned is not None else store.put_many
        self._logged = 0  # submits since the dispatcher was last asked to ingest them
        # Ids up to here were stored before this executor opened: earlier runs' tasks (and,
        # with peers, anyone's). Ids above are this run's only without peers. (With
        # numbered puts, ids and puts differ: the highest id, reserved ones included.)
        self._earlier = owned.top_id() if owned is not None else store.counts().put_total
        self._recovered: dict[int, TaskFuture] | None = None
        self._handed: dict[int, TaskFuture] = {}  # revived or replayed, not yet asked for
        self._state = state = _State(keep_results=durable, earlier=self._earlier, peers=peers)
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self.path = lock_dir or None
        self.fault = ctx.Event()
        fault_event = self.fault

        def on_fault(fault: Fault) -> None:
            state.faults.append(fault)
            fault_event.set()
            store.record_fault(fault)

        if isinstance(store, DiskcacheStore):  # a quarantined record sets the fault Event
            store.on_integrity_fault = on_fault

        def note(fault: Fault) -> None:  # logged, but nothing failed: the Event stays clear
            state.faults.append(fault)
            store.record_fault(fault)

        self._dispatcher = Dispatcher(
            store,
            ctx=ctx,
            workers=max_workers,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
            name=(os.path.basename(lock_dir) if lock_dir else
                  f"{socket.gethostname()}:{os.getpid()}" if peers else f"pid{os.getpid()}"),
            keep_results=durable,
            resolve=state.resolve,
            begin=state.begin,
            on_fault=on_fault,
            on_broken=state.break_all,
            gate=Gate(lazy_limits, note) if lazy_limits is not None else None,
            memory=(
                MemoryWatch(soft, hard, max_workers if auto else None)
                if soft or hard or auto
                else None
            ),
            note=note,
            allowed=self._allowed,
            peer=PeerLink(
                store, awaited=state.awaited, resolve=state.resolve,
                visibility_timeout=visibility_timeout,
            ) if peers else None,
        )
        self._max_workers = max_workers
        self._dispatcher.clock = clock
        subscribe = getattr(clock, "subscribe", None)
        if subscribe is not None:  # a ManualClock: moving it wakes the dispatcher
            subscribe(self._dispatcher.scheduled)
        if on_recurring_error is not None:
            self._dispatcher.on_failure = _recurring(on_recurring_error, threshold)
        self._dispatcher.on_exit = _closer(self._dispatcher, store, state, lock)
        self._cancelled = _canceller(state, self._dispatcher)
        _live.add(self._dispatcher)
        try:
            self._dispatcher.start_workers()
        except BaseException:
            self._dispatcher.on_exit()
            raise
        self._dispatcher.start()
        # Collected without shutdown(): the pool finishes its tasks, then stops.
        weakref.finalize(self, self._dispatcher.request_stop)

    # -- submitting ---------------------------------------------------------------------------

    @property
    def _broken(self) -> futures.BrokenExecutor | None:
        return self._state.broken

    def _check_open(self) -> None:
        broken = self._state.broken
        if broken is not None:
            raise type(broken)(*broken.args)
        if self._shutdown_thread:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _submit_payloads(
        self, payloads: list[bytes], opts: Options | None = None
    ) -> list[TaskFuture]:
        opts = opts or self._options
        state = self._state
        if (opts.not_before, opts.delay, opts.deadline, opts.ttl, opts.expires_at) == _NOW:
            # Due now, in its band, with no later change: the common case, kept cheap.
            timing = Timing(int(priority_of(opts.priority)), self._clock.time())
            later = False
        else:
            timing = timing_of(
                priority=opts.priority, not_before=opts.not_before, delay=opts.delay,
                deadline=opts.deadline, ttl=opts.ttl, expires_at=opts.expires_at,
                window=self._window, clock=self._clock,
            )
            later = timing.due > self._clock.time() or timing.event() is not None
        with self._shutdown_lock:  # registered before shutdown() can look at the futures
            self._check_open()
            state.putting_begins()
            try:
                ids = self._put(payloads, **timing._asdict())
            except BaseException:
                state.register([], put=True)
                raise
            fs = [TaskFuture(i, self._cancelled) for i in ids]
            state.register(fs, put=True)
            self._logged += len(ids)
        if self._logged >= INGEST_EVERY:
            self._logged = 0
            self._dispatcher.ingest()
        if later:
            self._dispatcher.scheduled()
        else:
            self._dispatcher.nudge()
        return fs

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Commit a call of ``fn`` and return its future (``future.task_id`` names it)."""
        return self._submit(fn, args, kwargs, self._options)

    def _submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: Options
    ) -> TaskFuture:
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        if self._allowed is not None:
            self._allowed.check(fn)
        try:
            payload = encode_call(fn, args, kwargs, opts)
        except Exception as exc:
            return self._unstorable(exc)
        return self._submit_payloads([payload], opts)[0]

    def _unstorable(self, exc: Exception) -> TaskFuture:
        """A call that cannot be pickled is not stored; as with ProcessPoolExecutor, its
        future fails with the pickling error rather than ``submit`` raising it."""
        with self._shutdown_lock:
            self._check_open()
        fut = TaskFuture(0)
        fut.set_running_or_notify_cancel()
        fut.set_exception(exc)
        return fut

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """As ``ProcessPoolExecutor.map``; tasks are committed ``SUBMIT_BATCH`` per transaction."""
        return self._map(fn, iterables, timeout, chunksize, self._options)

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        opts: Options,
    ) -> Iterator[Any]:
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        if self._allowed is not None:
            self._allowed.check(fn)
        end = None if timeout is None else timeout + time.monotonic()
        calls: list[Any] = (
            list(zip(*iterables, strict=False)) if chunksize == 1 else chunks(iterables, chunksize)
        )
        fs: list[TaskFuture] = []
        batch: list[bytes] = []
        for call in calls:
            try:
                batch.append(
                    encode_call(fn, call, {}, opts)
                    if chunksize == 1
                    else encode_chunk(fn, call, opts)
                )
            except Exception as exc:
                fs += self._submit_payloads(batch, opts) if batch else []
                batch = []
                fs.append(self._unstorable(exc))
                continue
            if len(batch) == SUBMIT_BATCH:
                fs += self._submit_payloads(batch, opts)
                batch = []
        if batch:
            fs += self._submit_payloads(batch, opts)
        results = _results(fs, end)
        return itertools.chain.from_iterable(results) if chunksize > 1 else results

    def options(self, **options: Any) -> TaskOptions:
        """A view of this executor whose ``submit`` and ``map`` carry other task options:
        ``timeout`` (seconds or None), ``max_attempts``, ``priority`` (``"high"``,
        ``"medium"``, ``"low"``), ``not_before`` (datetime or epoch seconds) or ``delay``
        (seconds), ``deadline``, ``ttl`` or ``expires_at``, and the retry policy:
        ``retries``, ``backoff``, ``backoff_cap``, ``jitter``, ``demote``, ``retry_on``,
        ``timeout_retries``. Unnamed ones keep the executor's."""
        unknown = set(options) - set(Options._fields)
        if unknown:
            raise TypeError(f"unknown task options: {', '.join(sorted(unknown))}")
        return TaskOptions(self, check_options(*self._options._replace(**options)))

    # -- failure policy: reads and repairs (AdminMixin) ----------------------------------------

    def _admin(self, name: str, *args: Any) -> Any:
        result = admin(self._store, name, args, self._clock.time())
        self._dispatcher.scheduled()  # a repair may have made tasks ready or due
        return result

    def _decode(self, body: bytes) -> Any:
        return decode_call(body)

    def retry_dead(self, ids: int | Iterable[int] | None = None) -> list[int]:
        """Run dead tasks (all when ``ids`` is None) again with fresh budgets; their new
        futures are in ``task_futures(ids)``. Returns the ids revived."""
        with self._shutdown_lock:
            self._check_open()
            revived = super().retry_dead(ids)
            self._hand_out(revived)
        return revived

    def replay(self, ids: int | Iterable[int]) -> list[int]:
        """Submit copies of finished tasks as new tasks; returns their ids (futures in
        ``task_futures(ids)``)."""
        with self._shutdown_lock:
            self._check_open()
            new = super().replay(ids)
            self._hand_out(new)
        self._dispatcher.nudge()
        return new

    def _hand_out(self, ids: list[int]) -> None:
        fs = [TaskFuture(i, self._cancelled) for i in ids]
        self._state.register(fs)
        with self._state.lock:
            self._handed.update((f.task_id, f) for f in fs)

    def task_futures(self, ids: Iterable[int]) -> dict[int, TaskFuture]:
        """The futures of tasks revived by ``retry_dead`` or replayed by ``replay`` (each
        handed out once), or of any task of this run still pending."""
        out = {}
        with self._state.lock:
            for i in ids:
                fut = self._handed.pop(i, None) or self._state.futures.get(i)
                if fut is not None:
                    out[i] = fut
        return out

    # -- after a crash ------------------------------------------------------------------------

    def recovered(self) -> dict[int, TaskFuture]:
        """Futures for the tasks an earlier run at this ``path`` submitted and did not see
        through: finished ones hold their result (or exception), the rest resolve as they
        run here. Their results are dropped from the store at a clean shutdown. With a
        server store: every task stored before this executor opened whose result nobody
        collected, whoever submitted it; unfinished ones resolve whichever peer runs them."""
        state = self._state
        with state.lock:
            if self._recovered is None:
                # Unfinished first, results second: a task finishing in between is in both.
                unfinished = self._store.unfinished(self._earlier)
                results = self._store.results(self._earlier)
                out: dict[int, TaskFuture] = {}
                for task_id in unfinished:
                    if task_id not in results:
                        fut = TaskFuture(task_id, self._cancelled)
                        out[task_id] = state.futures[task_id] = fut
                for task_id, outcome in results.items():
                    fut = out[task_id] = TaskFuture(task_id)
                    fut.set_running_or_notify_cancel()
                    ok, value = decode_outcome(outcome)
                    fut.set_result(value) if ok else fut.set_exception(value)
                    state.finished.append(task_id)
                self._recovered = dict(sorted(out.items()))
            return dict(self._recovered)

    # -- faults and stats ---------------------------------------------------------------------

    def faults(self) -> list[Fault]:
        """What went wrong in this run: worker crashes, timeouts, store errors, oldest first."""
        return list(self._state.faults)

    def stats(self) -> dict[str, Any]:
        """Counts from the store plus this run's crash, timeout and stale-outcome counters."""
        d = self._dispatcher
        return {
            **self._store.counts().as_dict(),
            "workers": d.size,
            "crashes": d.crashes,
            "timeouts": d.timeouts,
            "stale_outcomes": d.stale,
            **(d.gate.stats() if d.gate is not None else {}),
            **(d.memory.stats() if d.memory is not None else {}),
        }

    # -- shutting down ------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ``ProcessPoolExecutor.shutdown``. Without ``cancel_futures`` every stored task
        runs first (an earlier run's too); cancelled ones are removed from the store."""
        with self._shutdown_lock:
            self._shutdown_thread = True
        if cancel_futures:
            self._dispatcher.assign_now(timeout=1.0)
            with self._state.lock:
                pending = list(self._state.futures.values())
            for fut in pending:
                fut.cancel()
            self._dispatcher.cancel = True
        self._dispatcher.request_stop()
        if wait:
            self._dispatcher.join()

    def kill_workers(self) -> None:
        """Shut down now (as ``ProcessPoolExecutor.kill_workers`` of Python 3.14): pending
        futures are cancelled, workers are killed without charging their tasks, and the
        futures of tasks they ran raise ``TaskAbandoned`` (with a ``path`` those tasks stay
        stored and run in the next Executor opened there). Waits for the dispatcher."""
        self.shutdown(wait=False, cancel_futures=True)
        self._dispatcher.kill_workers()
        self._dispatcher.join()

    def __repr__(self) -> str:
        where = self.path or (repr(self._store) if self._state.keep_results else "memory")
        return f"<durableq.Executor {where} workers={self._max_workers}>"


class TaskOptions:
    """``Executor.options(...)``: the executor's ``submit`` and ``map`` with other options."""

    def __init__(self, executor: Executor, options: Options) -> None:
        self._executor = executor
        self._opts = options

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        return self._executor._submit(fn, args, kwargs, self._opts)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        return self._executor._map(fn, iterables, timeout, chunksize, self._opts)

    def __repr__(self) -> str:
        return f"<durableq.TaskOptions {self._opts} of {self._executor!r}>"


def _results(fs: list[TaskFuture], end: float | None) -> Iterator[Any]:
    """Yield results in order; cancel what is left when the consumer stops early."""
    try:
        fs.reverse()
        while fs:
            # No local keeps the future (and its result) alive across the yield.
            yield _result_or_cancel(fs.pop(), None if end is None else end - time.monotonic())
    finally:
        for fut in fs:
            fut.cancel()


def _result_or_cancel(fut: TaskFuture, timeout: float | None) -> Any:
    try:
        return fut.result(timeout)
    finally:
        fut.cancel()
        del fut


def _check_store(path: Any, store: Any, visibility_timeout: Any, key: Any) -> bool:
    """Refuse ``path`` with ``store``; returns whether the store's openers are peers."""
    if store is None:
        return False
    if path is not None:
        raise ValueError("pass path= or store=, not both: a store= keeps the tasks itself")
    if key is not None:
        raise ValueError("key= signs the records of a path= directory; a store= is opened "
                         "with its own settings (server stores: docs/security.md)")
    if not isinstance(store, Store):
        raise TypeError(f"store must implement durableq.Store, not {type(store).__name__}")
    if (isinstance(visibility_timeout, bool) or not isinstance(visibility_timeout, int | float)
            or not visibility_timeout > 0):
        raise ValueError(f"visibility_timeout must be > 0 seconds, not {visibility_timeout!r}")
    return bool(getattr(store, "peers", False))


def _recurring(hook: Callable[[ErrorGroup], Any], threshold: int) -> Callable[[Failure], None]:
    """Count failures per fingerprint; call ``hook`` once a group reaches ``threshold``."""
    seen: dict[str, list[Failure]] = {}

    def on_failure(failure: Failure) -> None:
        (g,) = group([failure])
        members = seen.setdefault(g.fingerprint, [])
        if len(members) >= threshold:
            return  # reported already
        members.append(failure)
        if len(members) == threshold:
            try:
                hook(group(members)[0])
            except Exception:
                log.exception("durableq: on_recurring_error raised")

    return on_failure


def _closer(dispatcher: Dispatcher, store: Store, state: _State, lock: Any) -> Callable[[], None]:
    """What the dispatcher runs as it exits: forget this run's kept results (only after a
    clean run: results of a broken one may still be wanted), close the store, unlock."""

    def close() -> None:
        try:
            state.abandon()
            if dispatcher.error is None and state.broken is None and state.finished:
                store.forget(state.finished)
        finally:
            store.close()
            if lock is not None:
                lock.release()
            _live.discard(dispatcher)

    return close


def _canceller(state: _State, dispatcher: Dispatcher) -> Callable[[int], None]:
    def cancelled(task_id: int) -> None:
        with state.lock:
            state.futures.pop(task_id, None)
            state.dropped.add(task_id)
        dispatcher.discards.append(task_id)
        dispatcher.wake()

    return cancelled


_live: set[Dispatcher] = set()
_interpreter_exiting = False
# A forked worker inherits the set but none of its threads: its exit must not stop or join
# its parent's dispatchers (joining one not yet started raised, and the worker exited 1).
os.register_at_fork(after_in_child=_live.clear)


def _at_exit() -> None:
    """Like ProcessPoolExecutor: finish every executor's work before the interpreter exits."""
    global _interpreter_exiting
    _interpreter_exiting = True
    for dispatcher in list(_live):
        dispatcher.request_stop()
    for dispatcher in list(_live):
        dispatcher.join()


threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
