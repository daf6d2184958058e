"""``Pool``: ``multiprocessing.Pool``'s API over ``durableq.Executor``.

Each task is stored before it runs: ``apply_async`` and ``map_async`` return once theirs are
committed; ``imap`` stores its input as a feeder thread reads it. A worker that dies costs
its task one attempt on a fresh worker; after ``max_attempts`` the result raises
``WorkerCrashed``. Callbacks run in one thread per pool (``durableq-pool-results``), as in
the stdlib, and a result is ready only once its callback has returned. The plumbing is in
``_poolcore``, the result objects in ``_poolresults``.

Differences from ``multiprocessing.Pool`` (Lib/multiprocessing/pool.py):

- A dead worker's task is retried, then fails with ``WorkerCrashed``; the stdlib loses the
  task and its result never becomes ready. A failing ``initializer`` fails every result
  with ``InitializerFailed`` instead of respawning workers forever.
- After ``terminate()`` unfinished results raise ``CancelledError`` instead of never
  becoming ready. With a ``path``, queued tasks are dropped; tasks that were running when
  their workers were killed stay stored (at-least-once) for the next pool on that path.
- A callback that raises is logged (logger ``durableq``) and the pool goes on; the stdlib's
  result thread dies with it and the pool hangs. ``get()``, ``next()`` or ``join()`` from
  inside a callback that would wait for the callback's own thread raise ``RuntimeError``.
- ``map_async``'s callback gets ``[]`` for an empty input (the stdlib never calls it).
  ``chunksize < 1`` is a ``ValueError`` for ``map`` too.
- ``imap`` reads its input at most ``IMAP_AHEAD`` unfinished tasks ahead, and its iterator
  has ``next(timeout)`` whatever the chunksize (the stdlib returns a plain generator).
- Results are pickled in the worker and unpickled in the results thread, not in the
  executor's dispatcher, which keeps workers fed meanwhile.
- With ``maxtasksperchild``, workers are spawned unless ``context`` says otherwise, and a
  fork context is refused (``ValueError``), as ``ProcessPoolExecutor`` does: replacements
  are started from the dispatcher thread, and forking from a thread is unsafe.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError
from multiprocessing.pool import CLOSE, RUN, TERMINATE
from types import MappingProxyType
from typing import Any, TypeVar

from ._admin_api import AdminMixin
from ._executor import SUBMIT_BATCH, Executor
from ._lazy import Lazy
from ._limits import auto_size, memory_limits
from ._poolcore import APPLY, MAP, STARMAP, STOP, Call, Core, batch_for, feed
from ._poolresults import AsyncResult, IMapIterator, MapResult
from ._task import check_options, encode_call

T = TypeVar("T")
_NO_KWDS: Mapping[str, Any] = MappingProxyType({})


class Pool(AdminMixin):
    """A ``multiprocessing.Pool`` whose tasks are stored durably and survive worker death.

    Args:
        processes: worker processes (default ``os.cpu_count()``).
        initializer, initargs: run in each worker before its first task; if it raises,
            every result fails with ``InitializerFailed``.
        maxtasksperchild: replace a worker after this many tasks (a chunk is one task);
            workers are then spawned by default, and a fork ``context`` is refused.
        path: directory keeping the tasks; ``None`` keeps them in memory (a dead worker is
            still survived, a dead parent is not).
        max_attempts: runs of a task whose worker dies, before its result raises
            ``WorkerCrashed``.
        context: multiprocessing context for the workers (default: the current one).
        trusted: open ``path`` even if another user could write to it (dangerous:
            docs/security.md); otherwise that raises ``UnsafePath``.
        lazy: a ``durableq.Lazy`` (or True): start no new task while the machine is
            overloaded.
        max_worker_memory, hard_worker_memory: worker memory limits, as for ``Executor``
            (``processes="auto"`` too).
        key: the HMAC key stored tasks are signed with (as for ``Queue``).
        allowed_modules: modules tasks may call into, as for ``Executor``.
    """

    def __init__(
        self,
        processes: int | str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        max_attempts: int = 3,
        context: Any = None,
        trusted: bool = False,
        lazy: Lazy | bool | None = None,
        max_worker_memory: int | str | None = None,
        hard_worker_memory: int | str | None = None,
        key: bytes | str | None = None,
        allowed_modules: Iterable[str] | None = None,
    ) -> None:
        if processes is None:
            processes = os.cpu_count() or 1
        auto = processes == "auto"
        if auto:
            processes = auto_size(*memory_limits(max_worker_memory, hard_worker_memory))
        elif isinstance(processes, str):
            raise ValueError(f'processes must be a number or "auto", not {processes!r}')
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
            "auto" if auto else processes,
            mp_context=context,
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks_per_child=maxtasksperchild,
            path=path,
            max_attempts=max_attempts,
            trusted=trusted,
            lazy=lazy,
            max_worker_memory=max_worker_memory,
            hard_worker_memory=hard_worker_memory,
            key=key,
            allowed_modules=allowed_modules,
        )
        self.path = self._executor.path
        self._core = Core(self._executor, processes, options)
        self.fault = self._executor.fault
        self._core.results_thread.start()

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
        core.events.put(STOP)

    # -- submitting ---------------------------------------------------------------------------

    def _start(self, result: AsyncResult[Any], call: Call, tasks: list[Any]) -> None:
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

    # -- failure policy: reads and repairs (AdminMixin), over the executor's store ----------

    def _admin(self, name: str, *args: Any) -> Any:
        return self._executor._admin(name, *args)

    def _decode(self, body: bytes) -> Any:
        return self._executor._decode(body)

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
        result: AsyncResult[T] = AsyncResult(self._core, self, 1, callback, error_callback)
        self._core.begin(result)
        self._start(result, Call(func, APPLY), [data])
        return result

    def map(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[T]:
        """``[func(x) for x in iterable]`` in the workers, ``chunksize`` items per task."""
        return self._map_async(func, iterable, MAP, chunksize, None, None).get()

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """Store ``map``'s tasks and return one ``MapResult`` for the whole list."""
        return self._map_async(func, iterable, MAP, chunksize, callback, error_callback)

    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[T]:
        """``[func(*args) for args in iterable]`` in the workers."""
        return self._map_async(func, iterable, STARMAP, chunksize, None, None).get()

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """Store ``starmap``'s tasks and return one ``MapResult`` for the whole list."""
        return self._map_async(func, iterable, STARMAP, chunksize, callback, error_callback)

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
        parts = 1 if failure else len(chunks)
        result: MapResult[T] = MapResult(self._core, self, parts, callback, error_callback)
        self._core.begin(result)
        if failure is not None:
            self._core.post(result._deliver, 0, failure)
            self._core.end()
        else:
            self._start(result, Call(func, kind), chunks)
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
        batch = batch_for(iterable)
        source = iter(iterable)
        it: IMapIterator[T] = IMapIterator(self._core, self, ordered)
        core = self._core
        feeder = threading.Thread(
            target=feed,
            args=(core, it, Call(func, MAP), source, chunksize, batch),
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
        self._executor.kill_workers()
        self.join()

    def join(self) -> None:
        """Wait for the workers and threads to exit; only after ``close`` or ``terminate``."""
        core = self._core
        with core.lock:
            if core.state == RUN:
                raise ValueError("Pool is still running")
            if core.state == CLOSE and core.in_results_thread():
                # Feeders waiting for room wait for this very thread to settle results.
                raise RuntimeError("join() inside a pool callback would wait for itself")
            core.idle.wait_for(lambda: core.submitting == 0)
            feeders, core.feeders = core.feeders, set()
        current = threading.current_thread()
        for feeder in feeders:
            if feeder is not current:
                feeder.join()
        self._executor.shutdown(wait=True)
        core.events.put(None)
        if core.results_thread is not current:
            core.results_thread.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()
