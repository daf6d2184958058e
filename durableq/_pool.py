"""``Pool``: ``multiprocessing.Pool``'s API over ``durableq.Executor``.

Each task is stored before it runs: ``apply_async`` and ``map_async`` return once theirs are
committed; ``imap`` stores its input as a feeder thread reads it. A worker that dies costs
its task one attempt on a fresh worker; after ``max_attempts`` the result raises
``WorkerCrashed``. Callbacks run in one thread per pool (``durableq-pool-results``), as in
the stdlib, and a result is ready only once its callback has returned.

Differences from ``multiprocessing.Pool`` (Lib/multiprocessing/pool.py):

- A dead worker's task is retried, then fails with ``WorkerCrashed``; the stdlib loses the
  task and its result never becomes ready. A failing ``initializer`` fails every result
  with ``InitializerFailed`` instead of respawning workers forever.
- After ``terminate()`` unfinished results raise ``CancelledError`` instead of never
  becoming ready. With a ``path``, queued tasks are dropped; tasks that were running when
  their workers were killed stay stored (at-least-once) for the next pool on that path.
- A callback that raises is logged (logger ``durableq``) and the pool goes on; the stdlib's
  result thread dies with it and the pool hangs. ``get()`` without a timeout from inside a
  callback, on a result that is not ready, raises ``RuntimeError`` instead of deadlocking.
- ``map_async``'s callback gets ``[]`` for an empty input (the stdlib never calls it).
  ``chunksize < 1`` is a ``ValueError`` for ``map`` too.
- ``imap`` reads its input at most ``IMAP_AHEAD`` unfinished tasks ahead, and its iterator
  has ``next(timeout)`` whatever the chunksize (the stdlib returns a plain generator).
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import _RemoteTraceback
from multiprocessing.pool import (  # type: ignore[attr-defined]  # not in typeshed
    CLOSE,
    RUN,
    TERMINATE,
    MaybeEncodingError,
    RemoteTraceback,
)
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar

from ._executor import SUBMIT_BATCH, Executor
from ._task import Options, check_options, encode_call

T = TypeVar("T")
log = logging.getLogger("durableq")

#: Unfinished tasks an ``imap`` may have stored before reading more of its input: more keeps
#: workers busy through a slow consumer, fewer bounds memory and store size for long inputs.
IMAP_AHEAD: Final = 1024

_APPLY, _MAP, _STARMAP = 0, 1, 2
_NO_KWDS: Mapping[str, Any] = MappingProxyType({})
_job_ids = itertools.count()


# -- what runs in the worker ----------------------------------------------------------------


class _Call:
    """``fn`` over one task's data: ``(args, kwds)``, or a chunk of items (star or not).

    The return value is pickled in the worker (``_Encoded``), so one that cannot be is
    reported as the stdlib's ``MaybeEncodingError`` rather than as a bare pickling error.
    """

    def __init__(self, fn: Callable[..., Any], kind: int) -> None:
        self.fn = fn
        self.kind = kind
        # Worker process titles name the user's function, not this wrapper.
        self.__dict__["__module__"] = getattr(fn, "__module__", None)
        self.__dict__["__qualname__"] = getattr(fn, "__qualname__", type(fn).__name__)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Call, (self.fn, self.kind))

    def __call__(self, data: Any) -> _Encoded:
        fn = self.fn
        if self.kind == _APPLY:
            args, kwds = data
            return _Encoded(fn(*args, **kwds))
        if self.kind == _MAP:
            return _Encoded([fn(x) for x in data])
        return _Encoded([fn(*x) for x in data])


class _Encoded:
    """A return value that pickles itself, turning failure into ``MaybeEncodingError``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            data = pickle.dumps(self.value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise MaybeEncodingError(exc, self.value) from None
        return (pickle.loads, (data,))


# -- shared state ---------------------------------------------------------------------------


def _stop() -> None:
    """Sentinel event: the results thread exits."""


class _Core:
    """What the pool shares with its threads and results. Threads never hold the pool, so
    a pool nobody references (and with no result pending) is collected."""

    def __init__(self, executor: Executor, processes: int, options: Options) -> None:
        self.executor = executor
        self.processes = processes
        self.options = options
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)  # notified as `submitting` reaches 0
        self.state = RUN
        self.cache: dict[int, _Result] = {}  # unfinished results, by job id
        self.submitting = 0  # calls and feeders still storing tasks
        self.feeders: set[threading.Thread] = set()
        self.events: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.results_thread: threading.Thread | None = None

    def begin(self, result: _Result) -> None:
        """Register ``result`` as about to store tasks; refused once the pool is closed."""
        with self.lock:
            if self.state != RUN:
                raise ValueError("Pool not running")
            self.cache[result._job] = result
            self.submitting += 1

    def end(self) -> None:
        with self.lock:
            self.submitting -= 1
            last = self.submitting == 0
            if last:
                self.idle.notify_all()
            closing = last and self.state == CLOSE
        if closing:  # close() waited for us: the executor may stop once its tasks are done
            self.executor.shutdown(wait=False)

    def forget(self, result: _Result) -> None:
        with self.lock:
            self.cache.pop(result._job, None)

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` in the results thread."""
        self.events.put(functools.partial(fn, *args))

    def submit(self, result: _Result, tasks: list[tuple[int, bytes]]) -> None:
        """Store ``tasks`` (index, payload) for ``result``; their outcomes reach it through
        the results thread. If storing fails, so do these tasks."""
        try:
            fs = self.executor._submit_payloads([p for _, p in tasks])
        except Exception as exc:  # shut down, or broken (InitializerFailed)
            for index, _ in tasks:
                self.post(result._deliver, index, exc)
            return
        result._submitted(len(fs))
        events = self.events
        for (index, _), fut in zip(tasks, fs, strict=True):
            fut.add_done_callback(_poster(events, result, index))


def _poster(
    events: queue.SimpleQueue[Callable[[], None] | None], result: _Result, index: int
) -> Callable[[Future[Any]], None]:
    def done(fut: Future[Any]) -> None:
        events.put(functools.partial(result._deliver, index, fut))

    return done


def _handle_results(core: _Core) -> None:
    """The results thread: settle results and run callbacks, one at a time, until the pool
    is closed and nothing is pending, or stopped."""
    events = core.events
    while True:
        event = events.get()
        if event is _stop:
            return
        if event is not None:
            event()
        # Drop the reference while idle: the result (its value, its pool) may be freed.
        event = None
        with core.lock:
            if core.state != RUN and not core.cache:
                return


def _outcome(outcome: Future[Any] | BaseException) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, exception)``; the remote traceback becomes the stdlib
    pool's ``RemoteTraceback``, the type its users (and CPython's tests) look for."""
    if isinstance(outcome, BaseException):
        return False, outcome
    if outcome.cancelled():
        return False, CancelledError("the task was cancelled")
    exc = outcome.exception()
    if exc is None:
        return True, outcome.result()
    cause = exc.__cause__
    if isinstance(cause, _RemoteTraceback):
        exc.__cause__ = RemoteTraceback(f'\n"""\n{cause.tb}"""')
    return False, exc


# -- results --------------------------------------------------------------------------------


class _Result:
    """Bookkeeping common to every result: a job id in the pool's cache until finished."""

    def __init__(self, pool: Pool) -> None:
        self._job = next(_job_ids)
        self._core = pool._core
        self._pool: Pool | None = pool  # a pending result keeps its pool alive, as in the stdlib

    def _deliver(self, index: int, outcome: Future[Any] | BaseException) -> None:
        raise NotImplementedError

    def _submitted(self, n: int) -> None:
        pass

    def _abort(self, exc: BaseException) -> None:
        raise NotImplementedError


class AsyncResult(_Result, Generic[T]):
    """The result of ``apply_async`` (``multiprocessing.pool.AsyncResult``'s API)."""

    def __init__(
        self,
        pool: Pool,
        parts: int,
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        super().__init__(pool)
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._left = parts
        self._finished = False
        self._success = True
        self._value: Any = None

    def ready(self) -> bool:
        """Whether the call has completed (and its callback returned)."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call completed without raising; ``ValueError`` if not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        """The value, or raise the task's exception; ``multiprocessing.TimeoutError`` if not
        ready within ``timeout`` seconds."""
        if timeout is None and not self.ready() and _in_results_thread(self._core):
            raise RuntimeError("get() inside a pool callback would wait for itself forever")
        if not self._event.wait(timeout):
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value  # type: ignore[no-any-return]
        raise self._value

    def _store(self, index: int, value: Any) -> None:
        self._value = value

    def _collect(self) -> Any:
        return self._value

    def _deliver(self, index: int, outcome: Future[Any] | BaseException) -> None:
        ok, value = _outcome(outcome)
        with self._lock:
            if self._finished:
                return  # terminated meanwhile
            self._left -= 1
            if ok and self._success:
                self._store(index, value)
            elif not ok and self._success:  # keep the first exception, like the stdlib
                self._success, self._value = False, value
            if self._left > 0:
                return
            self._finished = True
            if self._success:
                self._value = self._collect()
        self._complete()

    def _complete(self) -> None:
        """In the results thread, once every part is in: callback, then ready."""
        callback = self._callback if self._success else self._error_callback
        self._callback = self._error_callback = None
        if callback is not None:
            try:
                callback(self._value)
            except Exception:
                log.exception("exception calling callback for %r", self)
        self._core.forget(self)
        self._pool = None
        self._event.set()

    def _finish_empty(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            self._value = self._collect()
        self._complete()

    def _abort(self, exc: BaseException) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            self._success, self._value = False, exc
        self._callback = self._error_callback = None
        self._pool = None
        self._event.set()


class MapResult(AsyncResult[list[T]]):
    """The result of ``map_async`` / ``starmap_async``: one list, ready once every chunk is
    done; the first exception to arrive is the one raised."""

    def __init__(
        self,
        pool: Pool,
        parts: int,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        super().__init__(pool, parts, callback, error_callback)
        self._chunks: list[list[T]] = [[] for _ in range(parts)]

    def _store(self, index: int, value: Any) -> None:
        self._chunks[index] = value

    def _collect(self) -> Any:
        chunks, self._chunks = self._chunks, []
        return list(itertools.chain.from_iterable(chunks))


class IMapIterator(_Result, Generic[T]):
    """What ``imap`` / ``imap_unordered`` return: results as they arrive, in input order
    or not; ``next(timeout)`` raises ``multiprocessing.TimeoutError``."""

    def __init__(self, pool: Pool, ordered: bool) -> None:
        super().__init__(pool)
        self._cond = threading.Condition(threading.Lock())
        self._ordered = ordered
        self._items: collections.deque[tuple[bool, Any]] = collections.deque()
        self._early: dict[int, tuple[bool, Any]] = {}  # ordered: arrived before their turn
        self._next = 0  # ordered: index of the next task to hand out
        self._done = 0  # tasks settled
        self._length: int | None = None  # tasks in all, once the input is read
        self._unfinished = 0  # stored tasks not yet settled (the feeder's back-pressure)
        self._finished = False

    def __iter__(self) -> IMapIterator[T]:
        return self

    def next(self, timeout: float | None = None) -> T:
        """The next result (or raise its task's exception); ``StopIteration`` at the end."""
        with self._cond:
            if timeout is None and not self._items and _in_results_thread(self._core):
                raise RuntimeError("next() inside a pool callback would wait for itself forever")
            if not self._cond.wait_for(lambda: self._items or self._finished, timeout):
                raise multiprocessing.TimeoutError
            if not self._items:
                raise StopIteration
            ok, value = self._items.popleft()
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    __next__ = next

    def _submitted(self, n: int) -> None:
        with self._cond:
            self._unfinished += n

    def _push(self, ok: bool, value: Any) -> None:
        if ok:
            self._items.extend((True, v) for v in value)
        else:
            self._items.append((False, value))

    def _deliver(self, index: int, outcome: Future[Any] | BaseException) -> None:
        ok, value = _outcome(outcome)
        with self._cond:
            if self._finished:
                return
            if isinstance(outcome, Future):
                self._unfinished -= 1
            self._done += 1
            if not self._ordered:
                self._push(ok, value)
            else:
                self._early[index] = (ok, value)
                while self._next in self._early:
                    self._push(*self._early.pop(self._next))
                    self._next += 1
            finished = self._check_finished()
            self._cond.notify_all()
        if finished:
            self._core.forget(self)

    def _set_length(self, length: int) -> None:
        with self._cond:
            if self._finished:
                return
            self._length = length
            finished = self._check_finished()
            self._cond.notify_all()
        if finished:
            self._core.forget(self)

    def _check_finished(self) -> bool:
        if self._length is not None and self._done == self._length:
            self._finished = True
            self._pool = None
        return self._finished

    def _wait_for_room(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._finished or self._unfinished < IMAP_AHEAD)

    def _abort(self, exc: BaseException) -> None:
        with self._cond:
            if self._finished:
                return
            self._finished = True
            self._items.append((False, exc))
            self._pool = None
            self._cond.notify_all()


def _in_results_thread(core: _Core) -> bool:
    return threading.current_thread() is core.results_thread


def _feed(
    core: _Core, it: IMapIterator[Any], call: _Call, source: Iterator[Any], size: int, batch: int
) -> None:
    """A feeder thread: read ``source`` in chunks of ``size`` and store them as tasks,
    ``batch`` per transaction, or at once while workers may be short of work.

    Only an in-memory (sized) input is batched: reading a generator may block, and chunks
    held back meanwhile would leave workers idle."""
    pending: list[tuple[int, bytes]] = []
    index = 0
    try:
        while not it._finished:
            try:
                chunk = list(itertools.islice(source, size))
            except Exception as exc:  # the input raised: that is this position's outcome
                core.post(it._deliver, index, exc)
                index += 1
                break
            if not chunk:
                break
            try:
                pending.append((index, encode_call(call, (chunk,), {}, core.options)))
            except Exception as exc:  # unpicklable: this task fails, the others run
                core.post(it._deliver, index, exc)
            index += 1
            if len(pending) >= batch or it._unfinished < 2 * core.processes:
                core.submit(it, pending)
                pending = []
                it._wait_for_room()
        if pending:
            core.submit(it, pending)
    finally:
        core.post(it._set_length, index)
        core.end()


# -- the pool -------------------------------------------------------------------------------


class Pool:
    """A ``multiprocessing.Pool`` whose tasks are stored durably and survive worker death.

    Args:
        processes: worker processes (default ``os.cpu_count()``).
        initializer, initargs: run in each worker before its first task; if it raises,
            every result fails with ``InitializerFailed``.
        maxtasksperchild: replace a worker after this many tasks (a chunk is one task).
        path: directory keeping the tasks; ``None`` keeps them in memory (a dead worker is
            still survived, a dead parent is not).
        max_attempts: runs of a task whose worker dies, before its result raises
            ``WorkerCrashed``.
        context: multiprocessing context for the workers (default: the current one).
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        max_attempts: int = 3,
        context: Any = None,
    ) -> None:
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int)
            or isinstance(maxtasksperchild, bool)
            or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        options = check_options(None, max_attempts)
        self._processes = processes
        self._executor = Executor(
            processes,
            mp_context=context,
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks_per_child=maxtasksperchild,
            path=path,
            max_attempts=max_attempts,
        )
        self.path = self._executor.path
        self._core = core = _Core(self._executor, processes, options)
        core.results_thread = threading.Thread(
            target=_handle_results, args=(core,), name="durableq-pool-results", daemon=True
        )
        core.results_thread.start()

    # -- state --------------------------------------------------------------------------------

    @property
    def _state(self) -> str:
        """``RUN``, ``CLOSE`` or ``TERMINATE`` (``multiprocessing.pool``'s constants)."""
        return self._core.state

    @_state.setter
    def _state(self, value: str) -> None:
        self._core.state = value

    def _check_running(self) -> None:
        if self._core.state != RUN:
            raise ValueError("Pool not running")

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        where = self.path or "memory"
        return f"<durableq.Pool state={self._state} processes={self._processes} {where}>"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        core = self.__dict__.get("_core")
        if core is None:
            return  # __init__ failed
        if core.state == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
        # Nothing is pending (a pending result keeps its pool alive): the results thread
        # may go; the executor, collected with us, stops once its stored tasks are done.
        core.events.put(_stop)

    # -- submitting ---------------------------------------------------------------------------

    def _start(self, result: AsyncResult[Any], call: _Call, tasks: list[Any]) -> None:
        """Store one task per item of ``tasks`` for ``result``, already registered."""
        core = self._core
        try:
            if not tasks:
                core.post(result._finish_empty)
            encoded: list[tuple[int, bytes]] = []
            for index, data in enumerate(tasks):
                try:
                    encoded.append((index, encode_call(call, (data,), {}, core.options)))
                except Exception as exc:  # unpicklable: as in the stdlib, the result fails
                    core.post(result._deliver, index, exc)
            for start in range(0, len(encoded), SUBMIT_BATCH):
                core.submit(result, encoded[start : start + SUBMIT_BATCH])
        finally:
            core.end()

    def apply(
        self, func: Callable[..., T], args: Iterable[Any] = (), kwds: Mapping[str, Any] = _NO_KWDS
    ) -> T:
        """``func(*args, **kwds)`` in a worker; its result, or raise its exception."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = _NO_KWDS,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[T]:
        """Store a call of ``func`` and return its ``AsyncResult``."""
        self._check_running()
        data = (tuple(args), dict(kwds))
        result: AsyncResult[T] = AsyncResult(self, 1, callback, error_callback)
        self._core.begin(result)
        self._start(result, _Call(func, _APPLY), [data])
        return result

    def map(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[T]:
        """``[func(x) for x in iterable]`` in the workers, ``chunksize`` items per task."""
        return self._map_async(func, iterable, _MAP, chunksize, None, None).get()

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """Store ``map``'s tasks and return one ``MapResult`` for the whole list."""
        return self._map_async(func, iterable, _MAP, chunksize, callback, error_callback)

    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[T]:
        """``[func(*args) for args in iterable]`` in the workers."""
        return self._map_async(func, iterable, _STARMAP, chunksize, None, None).get()

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """Store ``starmap``'s tasks and return one ``MapResult`` for the whole list."""
        return self._map_async(func, iterable, _STARMAP, chunksize, callback, error_callback)

    def _map_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        kind: int,
        chunksize: int | None,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> MapResult[T]:
        self._check_running()
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)  # an error here is raised to the caller, as in the stdlib
        failure: Exception | None = None
        try:
            items = list(iterable)
        except Exception as exc:  # a sized input failing midway fails the result instead
            items, failure = [], exc
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            if extra or not chunksize:
                chunksize += 1
        chunks = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
        result: MapResult[T] = MapResult(
            self, 1 if failure else len(chunks), callback, error_callback
        )
        self._core.begin(result)
        if failure is not None:
            self._core.post(result._deliver, 0, failure)
            self._core.end()
        else:
            self._start(result, _Call(func, kind), chunks)
        return result

    def imap(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int = 1
    ) -> IMapIterator[T]:
        """Like ``map``, but results come one by one, in order, as they are ready."""
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int = 1
    ) -> IMapIterator[T]:
        """Like ``imap``, but results come in the order they finish."""
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int, ordered: bool
    ) -> IMapIterator[T]:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        batch = SUBMIT_BATCH if hasattr(iterable, "__len__") else 1
        source = iter(iterable)
        it: IMapIterator[T] = IMapIterator(self, ordered)
        core = self._core
        feeder = threading.Thread(
            target=_feed,
            args=(core, it, _Call(func, _MAP), source, chunksize, batch),
            name="durableq-pool-imap",
            daemon=True,
        )
        core.begin(it)
        with core.lock:
            core.feeders = {t for t in core.feeders if t.is_alive()}
            core.feeders.add(feeder)
        try:
            feeder.start()
        except BaseException as exc:
            it._abort(exc)
            core.forget(it)
            core.end()
            raise
        return it

    # -- stopping -----------------------------------------------------------------------------

    def close(self) -> None:
        """Accept no more tasks; the workers exit once every stored task is done."""
        core = self._core
        with core.lock:
            if core.state != RUN:
                return
            core.state = CLOSE
            idle = core.submitting == 0
        if idle:  # else the last call or feeder still storing tasks does it
            self._executor.shutdown(wait=False)
        core.events.put(None)  # the results thread may be done already

    def terminate(self) -> None:
        """Stop now: kill the workers, drop queued tasks; unfinished results raise
        ``CancelledError``. Returns once the workers and threads are gone."""
        core = self._core
        with core.lock:
            core.state = TERMINATE
            unfinished = list(core.cache.values())
            core.cache.clear()
        for result in unfinished:
            result._abort(CancelledError("the pool was terminated before this task finished"))
        self._executor.shutdown(wait=False, cancel_futures=True)
        _kill_workers(self._executor)
        self.join()

    def join(self) -> None:
        """Wait for the workers and threads to exit; only after ``close`` or ``terminate``."""
        core = self._core
        with core.lock:
            if core.state == RUN:
                raise ValueError("Pool is still running")
            core.idle.wait_for(lambda: core.submitting == 0)
            feeders, core.feeders = core.feeders, set()
        current = threading.current_thread()
        for feeder in feeders:
            if feeder is not current:
                feeder.join()
        self._executor.shutdown(wait=True)
        core.events.put(None)
        if core.results_thread is not None and core.results_thread is not current:
            core.results_thread.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()


def _kill_workers(executor: Executor) -> None:
    """SIGKILL the executor's workers so ``terminate()`` need not wait for running tasks.

    A stopgap that reaches into the dispatcher, until ``Executor`` can do it itself (like
    ``ProcessPoolExecutor.kill_workers()`` in Python 3.14). Call only after
    ``shutdown(wait=False, cancel_futures=True)``: a stopping dispatcher spawns no
    replacements. If the executor's insides change, terminate() waits for running tasks.
    """
    workers = getattr(getattr(executor, "_dispatcher", None), "workers", None)
    if not isinstance(workers, dict):
        return
    for _ in range(3):
        try:
            snapshot = list(workers.values())  # the dispatcher thread changes the dict
            break
        except RuntimeError:
            continue
    else:
        return
    for worker in snapshot:
        process = getattr(worker, "process", None)
        try:
            if process is not None:
                process.kill()
        except (OSError, ValueError):
            pass  # already gone (or closed)
