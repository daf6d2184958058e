"""``Pool``'s plumbing: the call wrapper run in workers, the state shared with the pool's
threads, the results thread, and ``imap``'s feeder threads.

Outcomes travel: worker -> executor's dispatcher (future done) -> ``Core.events`` -> the
results thread, which settles results and runs callbacks one at a time, as the stdlib's
result handler does.
"""

from __future__ import annotations

import functools
import itertools
import logging
import pickle
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from multiprocessing.pool import CLOSE, RUN, MaybeEncodingError  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, Final

from ._executor import SUBMIT_BATCH, Executor
from ._task import Options, encode_call

if TYPE_CHECKING:
    from ._poolresults import IMapIterator, Result

log = logging.getLogger("durableq")

#: Unfinished tasks an ``imap`` may have stored before reading more of its input: more keeps
#: workers busy through a slow consumer, fewer bounds memory and store size for long inputs.
IMAP_AHEAD: Final = 1024

APPLY, MAP, STARMAP = 0, 1, 2


# -- what runs in the worker ----------------------------------------------------------------


class Call:
    """``fn`` over one task's data: ``(args, kwds)`` (APPLY) or a chunk of items (MAP,
    STARMAP). Its return value is pickled in the worker (``_Encoded``), so one that cannot
    be is reported as the stdlib's ``MaybeEncodingError``, not as a bare pickling error."""

    def __init__(self, fn: Callable[..., Any], kind: int) -> None:
        self.fn = fn
        self.kind = kind
        # Worker process titles name the user's function, not this wrapper.
        self.__dict__["__module__"] = getattr(fn, "__module__", None)
        self.__dict__["__qualname__"] = getattr(fn, "__qualname__", type(fn).__name__)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Call, (self.fn, self.kind))

    def __call__(self, data: Any) -> _Encoded:
        fn = self.fn
        if self.kind == APPLY:
            args, kwds = data
            return _Encoded(fn(*args, **kwds))
        if self.kind == MAP:
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
        return (Decoded, (data,))


class Decoded:
    """A return value as it reaches the parent, still pickled: the results thread unpickles
    it (not the executor's dispatcher) and takes it out, so the future does not keep it."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None) -> None:
        self.data = data

    def take(self) -> Any:
        data, self.data = self.data, None
        if data is None:
            raise RuntimeError("a task's result was taken twice")
        return pickle.loads(data)


# -- shared state ---------------------------------------------------------------------------


def _stop() -> None:
    """Sentinel event: the results thread exits."""


STOP: Final = _stop


class Core:
    """What the pool shares with its threads and results. Threads never hold the pool, so
    a pool nobody references (and with no result pending) is collected."""

    def __init__(self, executor: Executor, processes: int, options: Options) -> None:
        self.executor = executor
        self.processes = processes
        self.options = options
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)  # notified as `submitting` reaches 0
        self.state: str = RUN
        self.cache: dict[int, Result] = {}  # unfinished results, by job id
        self.submitting = 0  # calls and feeders still storing tasks
        self.feeders: set[threading.Thread] = set()
        self.events: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.results_thread = threading.Thread(
            target=_handle_results, args=(self,), name="durableq-pool-results", daemon=True
        )

    def in_results_thread(self) -> bool:
        return threading.current_thread() is self.results_thread

    def begin(self, result: Result) -> None:
        """Register ``result`` as about to store tasks; refused once the pool is closed."""
        with self.lock:
            if self.state != RUN:
                raise ValueError("Pool not running")
            self.cache[result._job] = result
            self.submitting += 1

    def end(self) -> None:
        """A call or feeder is done storing tasks."""
        with self.lock:
            self.submitting -= 1
            last = self.submitting == 0
            if last:
                self.idle.notify_all()
            closing = last and self.state == CLOSE
        if closing:  # close() waited for us: the executor may stop once its tasks are done
            self.executor.shutdown(wait=False)

    def forget(self, result: Result) -> None:
        with self.lock:
            self.cache.pop(result._job, None)

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` in the results thread."""
        self.events.put(functools.partial(fn, *args))

    def submit(self, result: Result, tasks: list[tuple[int, bytes]]) -> bool:
        """Store ``tasks`` (index, payload) for ``result`` in one transaction; outcomes reach
        it through the results thread. If storing fails, so do these tasks (False)."""
        try:
            fs = self.executor._submit_payloads([p for _, p in tasks])
        except Exception as exc:  # shut down, or broken (InitializerFailed)
            for index, _ in tasks:
                self.post(result._deliver, index, exc)
            return False
        result._submitted(len(fs))
        for (index, _), fut in zip(tasks, fs, strict=True):
            fut.add_done_callback(_poster(self.events, result, index))
        return True


def _poster(
    events: queue.SimpleQueue[Callable[[], None] | None], result: Result, index: int
) -> Callable[[Future[Any]], None]:
    def done(fut: Future[Any]) -> None:  # in whatever thread settles the future: just post
        events.put(functools.partial(result._deliver, index, fut))

    return done


def _handle_results(core: Core) -> None:
    """The results thread: settle results and run callbacks, one at a time, until the pool
    is closed and nothing is pending, or stopped."""
    events = core.events
    while True:
        event = events.get()
        if event is STOP:
            return
        if event is not None:
            try:
                event()
            except Exception:  # a bug here must not leave every later result hanging
                log.exception("durableq pool: settling a result failed")
        # Drop the reference while idle: the result (its value, its pool) may be freed.
        event = None
        with core.lock:
            if core.state != RUN and not core.cache:
                return


def feed(
    core: Core, it: IMapIterator[Any], call: Call, source: Iterator[Any], size: int, batch: int
) -> None:
    """An ``imap`` feeder thread: read ``source`` in chunks of ``size`` and store them as
    tasks, ``batch`` per transaction, or at once while workers may be short of work; wait
    while ``IMAP_AHEAD`` tasks are unfinished.

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
            if pending and (len(pending) >= batch or it._unfinished < 2 * core.processes):
                stored, pending = core.submit(it, pending), []
                if not stored:
                    break  # the executor is broken or shut down: read no further
                it._wait_until_below(IMAP_AHEAD)
        if pending:
            core.submit(it, pending)
    finally:
        core.post(it._set_length, index)
        core.end()


def batch_for(iterable: object) -> int:
    """Tasks per transaction for ``feed``: see its docstring."""
    return SUBMIT_BATCH if hasattr(iterable, "__len__") else 1
