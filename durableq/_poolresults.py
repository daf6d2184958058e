"""What ``Pool`` hands back: ``AsyncResult``, ``MapResult`` and ``IMapIterator``, with
``multiprocessing.pool``'s API.

Outcomes reach a result only in the pool's results thread (``_deliver``), which runs its
callback there before making it ready; ``terminate()`` fails unfinished ones (``_abort``).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import _RemoteTraceback
from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]
from typing import Any, Generic, TypeVar

from ._poolcore import Core, Decoded, log

T = TypeVar("T")
_job_ids = itertools.count()


def _outcome(outcome: Future[Any] | BaseException) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, exception)``; the remote traceback becomes the stdlib
    pool's ``RemoteTraceback``, the type its users (and CPython's tests) look for."""
    if isinstance(outcome, BaseException):
        return False, outcome
    if outcome.cancelled():
        return False, CancelledError("the task was cancelled")
    exc = outcome.exception()
    if exc is None:
        value = outcome.result()
        if not isinstance(value, Decoded):
            return True, value
        try:
            return True, value.take()
        except Exception as error:  # e.g. its class cannot be imported here
            return False, error
    cause = exc.__cause__
    if isinstance(cause, _RemoteTraceback):
        exc.__cause__ = RemoteTraceback(f'\n"""\n{cause.tb}"""')
    return False, exc


class Result:
    """What every result has: a job id in the pool's cache until it is finished."""

    def __init__(self, core: Core, pool: object) -> None:
        self._job = next(_job_ids)
        self._core = core
        self._pool: object = pool  # a pending result keeps its pool alive, as in the stdlib

    def _deliver(self, index: int, outcome: Future[Any] | BaseException) -> None:
        """Task ``index``'s outcome (a settled future, or why it could not be stored)."""
        raise NotImplementedError

    def _submitted(self, n: int) -> None:
        """``n`` more of its tasks are stored."""

    def _abort(self, exc: BaseException) -> None:
        """The pool was terminated: finish now, failed with ``exc``, with no callback."""
        raise NotImplementedError


class AsyncResult(Result, Generic[T]):
    """The result of ``apply_async`` (``multiprocessing.pool.AsyncResult``'s API)."""

    def __init__(
        self,
        core: Core,
        pool: object,
        parts: int,
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        super().__init__(core, pool)
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
        if timeout is None and not self.ready() and self._core.in_results_thread():
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
        del outcome, value  # hold no copy of the value once get() has returned it
        self._complete()

    def _finish_empty(self) -> None:
        """No tasks at all (``map`` of an empty input): done, with its callback."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            self._value = self._collect()
        self._complete()

    def _complete(self) -> None:
        """Once every part is in: the callback, then ready."""
        callback = self._callback if self._success else self._error_callback
        self._callback = self._error_callback = None
        if callback is not None:
            try:
                callback(self._value)
            except Exception:  # the stdlib's result thread dies here, hanging the pool
                log.exception("exception calling callback for %r", self)
        self._core.forget(self)
        self._pool = None
        self._event.set()

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
        core: Core,
        pool: object,
        parts: int,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        super().__init__(core, pool, parts, callback, error_callback)
        self._chunks: list[list[T]] = [[] for _ in range(parts)]

    def _store(self, index: int, value: Any) -> None:
        self._chunks[index] = value

    def _collect(self) -> Any:
        chunks, self._chunks = self._chunks, []
        return list(itertools.chain.from_iterable(chunks))


class IMapIterator(Result, Generic[T]):
    """What ``imap`` / ``imap_unordered`` return: results as they arrive, in input order
    or not; ``next(timeout)`` raises ``multiprocessing.TimeoutError``."""

    def __init__(self, core: Core, pool: object, ordered: bool) -> None:
        super().__init__(core, pool)
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
            if timeout is None and not self._items and self._core.in_results_thread():
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

    def _wait_until_below(self, unfinished: int) -> None:
        """The feeder's back-pressure: wait until fewer tasks are unfinished (or aborted)."""
        with self._cond:
            self._cond.wait_for(lambda: self._finished or self._unfinished < unfinished)

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
        """The feeder read the whole input: ``length`` tasks in all."""
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

    def _abort(self, exc: BaseException) -> None:
        with self._cond:
            if self._finished:
                return
            self._finished = True
            self._items.append((False, exc))
            self._pool = None
            self._cond.notify_all()
