"""Workers as a standalone service (``durableq worker``), and producers in other programs.

``WorkerService(path)`` is an ``Executor`` on ``path`` that runs every task stored there,
whoever submitted it: an earlier program's unfinished tasks (it waits for that program to
exit, then takes over) and tasks other programs add while it runs, through
``Submitter(path).submit(fn, ...)``. A submitter commits the task to the directory's
store, as ``Executor.submit`` does, then writes a byte to the service's FIFO in
``<path>/task-wake``: the service wakes its dispatcher at once, with no polling.

The service keeps no results: nobody in its process waits for them, so storing them
would only grow the directory. Failures stay in the failure log and dead letters
(``durableq report``, ``durableq show``).

``WorkerService(store=server_store)`` serves a Redis, PostgreSQL or RabbitMQ store
instead: one of any number of peers, on any hosts (``durableq worker --store URL``).
The store's own notifications wake it, and it keeps results, since producers on other
hosts await them through ``Executor(store=..., max_workers=0)`` futures, which forget
them once delivered.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ._executor import Executor
from ._schedule import timing_of
from ._security import make_directory
from ._task import Options, check_options, encode_call
from .store import DiskcacheStore, Store
from .store._command_wakeup import FifoWakeups, FifoWatch
from .store._diskcache import WAKE_DIR, wake_owner
from .store._diskcache import WAKE_TARGET as _TARGET


class WorkerService(Executor):
    """An executor that serves a queue directory for other programs.

    Args:
        path: the queue directory (or None with ``store``).
        max_workers: worker processes.
        store: a server store to serve instead of a directory (see the module docstring).
        **options: the other ``Executor`` arguments (``mp_context``, ``initializer``,
            ``max_attempts``, ``timeout``, ``lazy``, ``visibility_timeout``, ...);
            ``wait_for_owner`` defaults to True: a running owner is waited for, then
            succeeded.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None,
                 max_workers: int | None = None, *, store: Store | None = None,
                 **options: Any) -> None:
        self._closing = False
        self._watch: FifoWatch | None = None
        self._waker: threading.Thread | None = None
        if store is not None or path is None:
            # A peer store: its put notifications wake the dispatcher; results are kept.
            if store is None or path is not None:
                raise ValueError("pass a queue directory (path) or store=, exactly one")
            if not getattr(store, "peers", False):
                raise ValueError(f"store= serves a server store (Redis, PostgreSQL, RabbitMQ), "
                                 f"not {type(store).__name__}: serve its directory instead")
            super().__init__(max_workers, store=store, **options)
            return
        options.setdefault("wait_for_owner", True)
        # Listen before the dispatcher's first look at the store: a task submitted while
        # this starts is either seen by that look or pokes the FIFO.
        make_directory(os.path.abspath(os.fspath(path)), trusted=options.get("trusted", False))
        self._watch = FifoWakeups(os.path.join(os.fspath(path), WAKE_DIR)).watch(_TARGET)
        try:
            super().__init__(max_workers, path=path, **options)
        except BaseException:
            self._watch.close()
            raise
        # Every stored task is someone else's: its outcome has no future here, and no
        # result is kept (see the module docstring).
        self._state.earlier = sys.maxsize
        self._dispatcher.keep_results = False
        self._waker = waker = threading.Thread(
            target=self._wake_on_submit, name="durableq-service-wake", daemon=True
        )
        waker.start()

    def _wake_on_submit(self) -> None:
        watch, dispatcher = self._watch, self._dispatcher
        assert watch is not None
        while watch.wait(None) and not self._closing:
            dispatcher.scheduled()  # maybe a delayed task: the next idle round sets a timer
            dispatcher.nudge()

    def stop(self, *, graceful: bool = True) -> None:
        """Stop serving. ``graceful``: take no new task, let running ones finish, return
        tasks leased ahead to the store. Otherwise kill the workers at once: their tasks
        stay stored, not charged an attempt. Waits until the workers are gone."""
        self._closing = True
        if self._watch is not None:
            _poke(self._watch)
        if graceful:
            self.shutdown(wait=True, cancel_futures=True)
        else:
            self.kill_workers()
        if self._waker is not None:
            self._waker.join()
        if self._watch is not None:
            self._watch.close()

    def __repr__(self) -> str:
        where = self.path or repr(self._store)
        return f"<durableq.WorkerService {where} workers={self._max_workers}>"


def wake_service(path: str | os.PathLike[str]) -> None:
    """Wake the ``WorkerService`` serving ``path`` (or the ``Queue`` owning it), if one
    runs: messages became ready."""
    wake_owner(path)


def _poke(watch: FifoWatch) -> None:
    fd = os.open(watch.path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass  # full of wakeups already
    finally:
        os.close(fd)


class Submitter:
    """Submit tasks to the queue directory a ``durableq worker`` (or any executor) serves,
    from another program. Each task is committed before ``submit`` returns.

    Args:
        path: the queue directory (created if missing: the service may start later).
        max_attempts, timeout: as for ``Executor``.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_attempts: int = 3,
        timeout: float | None = None, _options: Options | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._store = DiskcacheStore(self.path)
        self._wakeups = FifoWakeups(os.path.join(self.path, WAKE_DIR))
        self._options = _options or check_options(timeout, max_attempts)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> int:
        """Commit a call of ``fn`` (named by import path: the service imports it) and wake
        the service; returns the task id."""
        return self._put([encode_call(fn, args, kwargs, self._options)])[0]

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[int]:
        """Commit one call of ``fn`` per item, in one transaction; returns the task ids."""
        return self._put(
            [encode_call(fn, args, {}, self._options) for args in zip(*iterables, strict=False)]
        )

    def options(self, **options: Any) -> Submitter:
        """This submitter with other task options (as ``Executor.options``)."""
        unknown = set(options) - set(Options._fields)
        if unknown:
            raise TypeError(f"unknown task options: {', '.join(sorted(unknown))}")
        return Submitter(
            self.path, _options=check_options(*self._options._replace(**options))
        )

    def _put(self, payloads: list[bytes]) -> list[int]:
        opts = self._options
        timing = timing_of(priority=opts.priority, not_before=opts.not_before, delay=opts.delay)
        ids = self._store.put_many(payloads, **timing._asdict())
        self._wakeups.poke([_TARGET])
        return ids

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Submitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<durableq.Submitter {self.path}>"
