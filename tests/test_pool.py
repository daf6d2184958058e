"""durableq.Pool: multiprocessing.Pool's API, callbacks in one thread, ordering, timeouts,
real worker SIGKILLs (fork and spawn), terminate, lifecycle errors. Waits across processes
use marker files with bounded waits (TIMEOUT), never sleeps."""

from __future__ import annotations

import gc
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import InitializerFailed, Pool, WorkerCrashed, _poolcore

from .conftest import TIMEOUT
from .test_executor import append_line, touch, wait_for_file

# -- task functions: module level, so workers import them by path -----------------------------


def square(x: int) -> int:
    return x * x


def add(x: int, y: int = 0) -> int:
    return x + y


def pid(_: object = None) -> int:
    return os.getpid()


def fail(msg: str) -> None:
    raise ValueError(msg)  # the line the remote traceback must show


def fail_on(bad: int, x: int) -> int:
    if x == bad:
        raise KeyError(x)
    return x


def die_once(marker: str, value: int) -> int:
    """SIGKILL its own worker on the first attempt; the retry on a fresh worker succeeds."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def always_die(_: object = None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)




def after(args: tuple[str, str, int]) -> int:
    """Wait for ``gate`` (if any), create ``done``, return the number: forces an order."""
    gate, done, n = args
    if gate:
        wait_for_file(gate)
    touch(done)
    return n


def record(log: str, i: int) -> int:
    append_line(log, i)
    return i


def unpicklable_result() -> Any:
    return lambda: None


def bad_init() -> None:
    raise RuntimeError("no database today")


def set_flag(value: str) -> None:
    os.environ["DURABLEQ_TEST_FLAG"] = value


def flag_and_pid() -> tuple[str, int]:
    return os.environ.get("DURABLEQ_TEST_FLAG", ""), os.getpid()


def start_then_wait(started: str, gate: str) -> str:
    touch(started)
    return wait_for_file(gate)


# -- helpers -----------------------------------------------------------------------------------


def ctx(method: str) -> Any:
    return multiprocessing.get_context(method)


def until(predicate: Any) -> None:
    """Wait (bounded) for something another thread or process does."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# -- results -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_every_call_shape_returns_what_the_stdlib_returns(method: str) -> None:
    with Pool(2, context=ctx(method)) as p:
        assert p.apply(square, (7,)) == 49
        assert p.apply(add, (1,), {"y": 2}) == 3
        assert p.map(square, range(30)) == [x * x for x in range(30)]
        assert p.map(square, range(30), chunksize=7) == [x * x for x in range(30)]
        assert p.starmap(add, [(i, i) for i in range(10)], 3) == [2 * i for i in range(10)]
        assert p.map_async(square, range(5)).get(TIMEOUT) == [0, 1, 4, 9, 16]
        assert p.starmap_async(add, [(1, 2), (3, 4)]).get(TIMEOUT) == [3, 7]
        assert list(p.imap(square, range(25), chunksize=4)) == [x * x for x in range(25)]
        assert list(p.imap(square, (x for x in range(5)))) == [0, 1, 4, 9, 16]
        assert sorted(p.imap_unordered(square, range(25), 3)) == [x * x for x in range(25)]
        assert p.map(square, []) == [] and list(p.imap(square, [])) == []
        workers = multiprocessing.active_children()
        assert workers and all(type(w).__name__ == f"{method.capitalize()}Process" for w in workers)


def test_map_chunks_like_the_stdlib() -> None:
    with Pool(2) as p:
        stored = p._executor.stats  # one stored task per chunk
        assert p.map(square, range(20)) == [x * x for x in range(20)]
        assert stored()["put_total"] == 7  # divmod(20, 4 * 2) = (2, 4): chunks of 3
        assert p.map(square, range(100)) == [x * x for x in range(100)]
        assert stored()["put_total"] == 7 + 8  # divmod(100, 8) = (12, 4): chunks of 13
        assert p.starmap(add, [(i, 1) for i in range(10)], chunksize=5) == list(range(1, 11))
        assert stored()["put_total"] == 7 + 8 + 2


def test_exceptions_carry_the_stdlib_remote_traceback() -> None:
    with Pool(1) as p:
        with pytest.raises(ValueError, match="bad input") as info:
            p.apply(fail, ("bad input",))
        cause = info.value.__cause__
        assert type(cause) is RemoteTraceback
        assert "raise ValueError(msg)  # the line the remote traceback must show" in cause.tb
        with pytest.raises(KeyError):
            p.starmap(fail_on, [(3, i) for i in range(5)], chunksize=1)
        with pytest.raises(MaybeEncodingError, match="Error sending result"):
            p.apply(unpicklable_result)
        with pytest.raises(Exception, match="pickle"):
            p.apply(square, (lambda: 1,))  # an argument that cannot be stored
        assert p.apply(square, (3,)) == 9, "the pool goes on"


def test_map_waits_for_every_chunk_and_raises_the_first_error(tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with Pool(2) as p:
        with pytest.raises(KeyError):
            p.starmap(fail_on, [(5, i) for i in range(40)], chunksize=1)
        # The failure did not cut the map short: every other item ran.
        with pytest.raises(KeyError):
            p.starmap(record_or_fail, [(log, i) for i in range(40)], chunksize=4)
        assert sorted(map(int, Path(log).read_text().split())) == [
            i for i in range(40) if i != 7
        ]


def record_or_fail(log: str, i: int) -> int:
    if i == 7:
        raise KeyError(i)
    return record(log, i)


# -- callbacks ---------------------------------------------------------------------------------


def test_callbacks_run_in_one_results_thread_before_the_result_is_ready() -> None:
    seen: list[tuple[str, Any, bool]] = []
    results: list[Any] = []

    def callback(value: Any) -> None:
        seen.append((threading.current_thread().name, value, results[-1].ready()))

    with Pool(2) as p:
        results.append(p.apply_async(square, (3,), callback=callback))
        results[-1].get(TIMEOUT)
        results.append(p.map_async(square, range(4), callback=callback))
        results[-1].get(TIMEOUT)
        results.append(p.starmap_async(fail_on, [(1, 0), (1, 1)], error_callback=callback))
        with pytest.raises(KeyError):
            results[-1].get(TIMEOUT)
        results.append(p.map_async(square, [], callback=callback))
        assert results[-1].get(TIMEOUT) == []
    names = {name for name, _, _ in seen}
    assert names == {"durableq-pool-results"}
    assert [v for _, v, _ in seen][:2] == [9, [0, 1, 4, 9]], "map_async: once, whole list"
    assert isinstance(seen[2][1], KeyError) and len(seen) == 4, "error_callback once"
    assert not any(ready for _, _, ready in seen), "ready only after the callback returned"


def test_a_raising_callback_is_logged_and_the_pool_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bad(_: Any) -> None:
        raise RuntimeError("callback bug")

    with Pool(1) as p, caplog.at_level(logging.ERROR, logger="durableq"):
        assert p.apply_async(square, (2,), callback=bad).get(TIMEOUT) == 4
        assert p.apply(square, (3,)) == 9
    assert "exception calling callback" in caplog.text and "callback bug" in caplog.text


def test_get_inside_a_callback_raises_instead_of_deadlocking(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    errors: list[BaseException] = []
    with Pool(2) as p:
        blocked = p.apply_async(wait_for_file, (gate,))

        def callback(_: Any) -> None:
            try:
                blocked.get()
            except RuntimeError as exc:
                errors.append(exc)

        p.apply_async(square, (1,), callback=callback).get(TIMEOUT)
        touch(gate)
        assert blocked.get(TIMEOUT) == gate
    assert len(errors) == 1 and "forever" in str(errors[0])


# -- ordering and timeouts ---------------------------------------------------------------------


def test_imap_keeps_input_order_and_imap_unordered_does_not(tmp_path: Path) -> None:
    with Pool(2) as p:
        # Item 0 finishes only after item 1 did.
        for ordered, expected in ((True, [0, 1]), (False, [1, 0])):
            d0, d1 = str(tmp_path / f"{ordered}0"), str(tmp_path / f"{ordered}1")
            items = [(d1, d0, 0), ("", d1, 1)]
            it = p.imap(after, items) if ordered else p.imap_unordered(after, items)
            assert [it.next(TIMEOUT), it.next(TIMEOUT)] == expected
            with pytest.raises(StopIteration):
                it.next(TIMEOUT)


def test_imap_of_a_failing_input_yields_what_came_before_then_the_error() -> None:
    def numbers() -> Iterator[int]:
        yield from range(5)
        raise OSError("input broke")

    with Pool(2) as p:
        it = p.imap(square, numbers(), chunksize=2)
        assert [next(it) for _ in range(4)] == [0, 1, 4, 9]  # item 4's chunk was cut short
        with pytest.raises(OSError, match="input broke"):
            next(it)
        with pytest.raises(StopIteration):
            next(it)
        it = p.imap(square, [1, lambda: 2, 3])  # one unpicklable item fails alone
        assert next(it) == 1
        with pytest.raises(Exception, match="pickle"):
            next(it)
        assert next(it) == 9


def test_timeouts_raise_multiprocessing_timeout_error(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    with Pool(1) as p:
        res = p.apply_async(wait_for_file, (gate,))
        it = p.imap(wait_for_file, [gate])
        with pytest.raises(multiprocessing.TimeoutError):
            res.get(timeout=0.05)
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.05)
        res.wait(0.01)
        assert not res.ready()
        with pytest.raises(ValueError, match="not ready"):
            res.successful()
        touch(gate)
        assert res.get(TIMEOUT) == gate and res.ready() and res.successful()
        assert it.next(TIMEOUT) == gate


def test_imap_reads_its_input_only_so_far_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_poolcore, "IMAP_AHEAD", 4)
    gate = str(tmp_path / "gate")
    read: list[int] = []

    def endless() -> Iterator[str]:
        for i in itertools.count():
            read.append(i)
            yield gate

    with Pool(1) as p:
        it = p.imap(wait_for_file, endless())
        (feeder,) = [t for t in threading.enumerate() if t.name == "durableq-pool-imap"]

        def parked() -> bool:
            frame = sys._current_frames().get(feeder.ident or 0)
            while frame is not None and frame.f_code.co_name != "_wait_until_below":
                frame = frame.f_back
            return frame is not None

        until(parked)
        assert len(read) == 4, "4 tasks unfinished: the feeder waits before reading more"
        touch(gate)
        assert [it.next(TIMEOUT) for _ in range(20)] == [gate] * 20
    assert len(read) >= 20, "the feeder read on once there was room"


# -- worker death ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_task_that_kills_its_worker_once_completes_on_a_fresh_worker(
    tmp_path: Path, method: str
) -> None:
    with Pool(2, context=ctx(method), path=tmp_path / "q") as p:
        res = p.apply_async(die_once, (str(tmp_path / "marker"), 42))
        assert res.get(TIMEOUT) == 42
        assert p.starmap(die_once, [(str(tmp_path / "m2"), i) for i in range(6)]) == list(
            range(6)
        )


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_poison_task_raises_worker_crashed_while_others_finish(
    tmp_path: Path, method: str
) -> None:
    log = str(tmp_path / "log")
    errors: list[BaseException] = []
    with Pool(2, context=ctx(method), max_attempts=2) as p:
        poison = p.apply_async(always_die, error_callback=errors.append)
        others = p.starmap_async(record, [(log, i) for i in range(50)], chunksize=1)
        with pytest.raises(WorkerCrashed) as info:
            poison.get(TIMEOUT)
        assert (info.value.attempts, info.value.exitcode) == (2, -signal.SIGKILL)
        assert others.get(TIMEOUT) == list(range(50))
        assert len(errors) == 1 and isinstance(errors[0], WorkerCrashed)
        with pytest.raises(WorkerCrashed):  # in a map, the whole map fails with it
            p.map(always_die, range(3), chunksize=3)
        assert p.apply(square, (4,)) == 16


def test_a_failing_initializer_fails_every_result() -> None:
    p = Pool(1, initializer=bad_init)
    try:
        with pytest.raises(InitializerFailed, match="no database today"):
            p.apply_async(square, (2,)).get(TIMEOUT)
        with pytest.raises(InitializerFailed):
            p.map(square, range(10))
        # An endless imap ends too: its feeder stops at the first task it cannot store.
        it = p.imap(square, itertools.count())
        errors = []
        while True:
            try:
                it.next(TIMEOUT)
            except InitializerFailed as exc:
                errors.append(exc)
            except StopIteration:
                break
        assert len(errors) == 1
    finally:
        p.terminate()


def test_initializer_and_maxtasksperchild() -> None:
    with Pool(1, initializer=set_flag, initargs=("ready",), maxtasksperchild=2) as p:
        flags, pids = zip(*[p.apply(flag_and_pid) for _ in range(6)], strict=True)
        # As ProcessPoolExecutor (and unlike multiprocessing.Pool): recycled workers are
        # spawned, not forked from the dispatcher thread, and fork is refused.
        assert {type(w).__name__ for w in multiprocessing.active_children()} == {"SpawnProcess"}
    assert flags == ("ready",) * 6, "every replacement worker ran the initializer"
    assert len(set(pids)) == 3 and pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    with pytest.raises(ValueError, match="fork"):
        Pool(1, maxtasksperchild=2, context=ctx("fork"))


# -- lifecycle ---------------------------------------------------------------------------------


def test_close_then_join_runs_every_task(tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    p = Pool(2)
    results = [p.apply_async(record, (log, i)) for i in range(30)]
    it = p.imap(square, range(100), chunksize=7)
    with pytest.raises(ValueError, match="still running"):
        p.join()
    p.close()
    p.join()
    assert all(r.ready() for r in results)
    assert sorted(map(int, Path(log).read_text().split())) == list(range(30))
    assert list(it) == [x * x for x in range(100)]
    for call in (
        lambda: p.apply_async(square, (1,)),
        lambda: p.map(square, [1]),
        lambda: p.imap(square, [1]),
        lambda: p.starmap_async(add, [(1, 2)]),
    ):
        with pytest.raises(ValueError, match="Pool not running"):
            call()


def test_terminate_kills_running_tasks_and_cancels_the_rest(tmp_path: Path) -> None:
    never = str(tmp_path / "never")
    p = Pool(2)
    running = [p.apply_async(start_then_wait, (str(tmp_path / f"s{i}"), never)) for i in (0, 1)]
    queued = p.map_async(square, range(100))
    # Both workers are inside a task that would wait TIMEOUT seconds for `never`.
    until(lambda: (tmp_path / "s0").exists() and (tmp_path / "s1").exists())
    start = time.monotonic()
    p.terminate()
    assert time.monotonic() - start < TIMEOUT / 3, "terminate() waited for running tasks"
    assert multiprocessing.active_children() == []
    for res in [*running, queued]:
        assert res.ready()
        with pytest.raises(CancelledError):
            res.get(0)
    p.join()  # allowed after terminate, and returns at once


def test_the_context_manager_terminates_and_misuse_raises_value_error() -> None:
    with Pool(1) as p:
        assert p.apply(square, (2,)) == 4
    assert p._state == "TERMINATE"
    with pytest.raises(ValueError, match="Pool not running"), p:
        pass
    p.join()
    with pytest.raises(ValueError, match="at least 1"):
        Pool(0)
    with pytest.raises(ValueError, match="at least 1"):
        Pool(-1)
    for bad in (0, -1, 0.5, "12"):
        with pytest.raises(ValueError, match="maxtasksperchild"):
            Pool(1, maxtasksperchild=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initializer"):
        Pool(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        Pool(1, max_attempts=0)
    with Pool(1) as p:
        with pytest.raises(NotImplementedError):
            pickle.dumps(p)
        with pytest.raises(ValueError, match="Chunksize"):
            p.map(square, [1], chunksize=0)
        with pytest.raises(ValueError, match="Chunksize"):
            p.imap(square, [1], chunksize=0)


def test_an_unclosed_pool_warns_when_collected() -> None:
    p = Pool(1)
    assert p.apply(square, (5,)) == 25
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del p
        gc.collect()
    # Collected, it stops by itself: its stored tasks done, workers and threads exit.
    until(lambda: not multiprocessing.active_children())
    until(lambda: not [t for t in threading.enumerate() if t.name.startswith("durableq-")])


def test_a_pool_with_a_path_is_exclusive_and_stores_its_tasks(tmp_path: Path) -> None:
    with Pool(1, path=tmp_path / "q") as p:
        assert p.path is not None and os.path.isdir(p.path)
        with pytest.raises(durableq.QueueLocked):
            Pool(1, path=tmp_path / "q")
        assert p.map(square, range(10)) == [x * x for x in range(10)]
