"""durableq.Executor: results, exceptions, real worker and parent SIGKILLs, timeouts,
initializer failures, recycling, cancellation. Every crash here is a real signal."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import durableq
from durableq import Executor, InitializerFailed, TaskTimeout, WorkerCrashed
from durableq._workers import PIPELINE

from .conftest import TIMEOUT

# -- task functions: module level, so workers import them by path -----------------------------


def square(x: int) -> int:
    return x * x


def pid(_: object = None) -> int:
    return os.getpid()


def fail(msg: str) -> None:
    raise ValueError(msg)  # the line the remote traceback must show


def die_once(marker: str, value: int) -> int:
    """SIGKILL its own worker on the first attempt; the retry on a fresh worker succeeds."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def always_die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def exit_hard(code: int) -> None:
    os._exit(code)


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def wait_for_file(path: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return path


def touch(path: str) -> None:
    Path(path).touch()


def append_line(log: str, i: int) -> None:
    """Append ``i`` to ``log`` in one O_APPEND write: lines from many processes never mix."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)


def record(log: str, i: int) -> int:
    """Log ``i`` as run, return i*i."""
    append_line(log, i)
    time.sleep(0.002)
    return i * i


def title() -> str:
    import setproctitle

    return str(setproctitle.getproctitle())


def unpicklable_result() -> Any:
    return lambda: None


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("this exception refuses to be pickled")


def raise_unpicklable() -> None:
    raise Unpicklable("boom")


def bad_init() -> None:
    raise RuntimeError("no database today")


# -- results and errors ------------------------------------------------------------------------


def test_submit_map_and_chunks_return_results_in_order(ctx: Any) -> None:
    with Executor(2, mp_context=ctx) as ex:
        fut = ex.submit(square, 7)
        assert isinstance(fut, cf.Future) and isinstance(fut.task_id, int)
        assert fut.result(TIMEOUT) == 49
        assert list(ex.map(square, range(50), timeout=TIMEOUT)) == [x * x for x in range(50)]
        assert list(ex.map(pow, range(50), [2] * 50, chunksize=7)) == [x * x for x in range(50)]
        done, _ = cf.wait([ex.submit(square, i) for i in range(10)], timeout=TIMEOUT)
        assert sorted(f.result() for f in done) == [i * i for i in range(10)]


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_a_batch_of_long_tasks_after_short_ones_is_spread_over_the_workers(
    tmp_path: Path,
) -> None:
    with Executor(2, path=tmp_path / "q") as ex:
        list(ex.map(square, range(2000)))  # short tasks: each worker's pipeline is deep now
        pids = list(ex.map(sleep_then_pid, [0.02] * 20))
    counts = sorted(pids.count(p) for p in set(pids))
    assert counts == [10, 10], "each next task to the worker holding the fewest"


def test_exceptions_carry_the_remote_traceback() -> None:
    with Executor(1) as ex:
        with pytest.raises(ValueError, match="bad input") as info:
            ex.submit(fail, "bad input").result(TIMEOUT)
        cause = info.value.__cause__
        assert "raise ValueError(msg)  # the line the remote traceback must show" in str(cause)


def test_unpicklable_results_and_exceptions_are_reported_not_swallowed() -> None:
    with Executor(1) as ex:
        with pytest.raises(Exception, match="pickle") as info:
            ex.submit(unpicklable_result).result(TIMEOUT)
        assert "lambda" in str(info.value) or "lambda" in str(info.value.__cause__)
        with pytest.raises(TypeError, match="refuses to be pickled") as info2:
            ex.submit(raise_unpicklable).result(TIMEOUT)
        assert "Unpicklable: boom" in str(info2.value.__cause__)
        assert ex.submit(square, 3).result(TIMEOUT) == 9, "the worker is still fine"


def test_bad_arguments_are_refused_with_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        Executor(0)
    with pytest.raises(TypeError, match="initializer"):
        Executor(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        Executor(1, max_attempts=0)
    with pytest.raises(ValueError, match="timeout"):
        Executor(1, timeout=-1)
    with Executor(1) as ex:
        with pytest.raises(TypeError, match="callable"):
            ex.submit(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="unknown task options: colour"):
            ex.options(colour="red")
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(square, [1], chunksize=0)
        unstorable = ex.submit(square, lambda: 1)  # fails as with ProcessPoolExecutor
        with pytest.raises(Exception, match="pickle"):
            unstorable.result(TIMEOUT)
        assert ex.stats()["put_total"] == 0, "nothing half-stored"
        assert list(ex.map(square, [1, 2])) == [1, 4]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


# -- worker death ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_task_that_kills_its_worker_once_completes_on_a_fresh_worker(
    tmp_path: Path, method: str
) -> None:
    ctx = multiprocessing.get_context(method)
    with Executor(2, mp_context=ctx, path=tmp_path / "q") as ex:
        fut = ex.submit(die_once, str(tmp_path / "marker"), 42)
        assert fut.result(TIMEOUT) == 42
        assert ex.fault.is_set()
        (fault,) = [f for f in ex.faults() if f.kind == "worker-crashed"]
        assert f"task {fut.task_id}" in fault.detail and "SIGKILL" in fault.detail
        assert ex.stats()["crashes"] == 1


def test_a_poison_task_ends_in_worker_crashed_while_others_finish(tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with Executor(2, path=tmp_path / "q", max_attempts=3) as ex:
        poison = ex.submit(always_die)
        others = [ex.submit(record, log, i) for i in range(100)]
        with pytest.raises(WorkerCrashed) as info:
            poison.result(TIMEOUT)
        assert (info.value.attempts, info.value.exitcode) == (3, -signal.SIGKILL)
        assert [f.result(TIMEOUT) for f in others] == [i * i for i in range(100)]
        assert ex.stats()["crashes"] == 3
        assert ex.stats()["dead"] == 1
    assert sorted(map(int, Path(log).read_text().split())) == list(range(100))


def test_os_exit_counts_as_a_crash_with_its_exit_code() -> None:
    with Executor(1, max_attempts=1) as ex:
        with pytest.raises(WorkerCrashed, match="exit code 7"):
            ex.submit(exit_hard, 7).result(TIMEOUT)
        assert ex.submit(square, 2).result(TIMEOUT) == 4


def test_an_idle_worker_killed_is_replaced() -> None:
    with Executor(1) as ex:
        first = ex.submit(pid).result(TIMEOUT)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + TIMEOUT
        while psutil.pid_exists(first) and psutil.Process(first).status() != "zombie":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert ex.submit(pid).result(TIMEOUT) != first


# -- timeouts ----------------------------------------------------------------------------------


def test_a_task_past_its_timeout_is_killed_and_fails_with_task_timeout() -> None:
    # Timeouts have their own budget: timeout_retries=1 allows two runs.
    with Executor(1, max_attempts=5) as ex:
        slow = ex.options(timeout=0.2, timeout_retries=1).submit(sleep_for, 60)
        with pytest.raises(TaskTimeout) as info:
            slow.result(TIMEOUT)
        assert isinstance(info.value, TimeoutError)
        assert info.value.attempts == 2
        assert ex.submit(sleep_for, 0.01).result(TIMEOUT) == 0.01, "the pool goes on"
        assert [f.kind for f in ex.faults()] == ["task-timeout", "task-timeout"]


def test_executor_timeout_applies_to_every_task_and_options_override_it() -> None:
    with Executor(1, timeout=0.2, max_attempts=1) as ex:
        with pytest.raises(TaskTimeout):
            ex.submit(sleep_for, 60).result(TIMEOUT)
        assert ex.options(timeout=None).submit(sleep_for, 0.3).result(TIMEOUT) == 0.3


# -- the parent dies ---------------------------------------------------------------------------


def _parent(path: str, log: str, n: int, submitted: Any) -> None:
    ex = Executor(2, path=path)
    ex.map(record, [log] * n, range(n))
    submitted.set()
    time.sleep(600)  # killed long before


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_parent_killed_mid_map_resumes_and_recovered_has_each_result_once(
    tmp_path: Path, method: str
) -> None:
    ctx = multiprocessing.get_context(method)
    path, log, n = str(tmp_path / "q"), str(tmp_path / "log"), 300
    submitted = ctx.Event()
    parent = ctx.Process(target=_parent, args=(path, log, n, submitted))
    parent.start()
    assert submitted.wait(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(log) or len(Path(log).read_text().split()) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    workers = psutil.Process(parent.pid).children()
    os.kill(parent.pid, signal.SIGKILL)
    parent.join()
    _, alive = psutil.wait_procs(workers, timeout=TIMEOUT)
    assert not alive, "workers must die with their parent"
    ran_before = set(map(int, Path(log).read_text().split()))
    assert 20 <= len(ran_before) < n

    with Executor(2, path=path) as ex:
        recovered = ex.recovered()
        assert sorted(recovered) == list(range(1, n + 1)), "every task, exactly once"
        results = {tid: f.result(TIMEOUT) for tid, f in recovered.items()}
        assert results == {tid: (tid - 1) ** 2 for tid in range(1, n + 1)}
        assert ex.recovered().keys() == recovered.keys()
    runs = list(map(int, Path(log).read_text().split()))
    assert set(runs) == set(range(n))
    # At-least-once: only tasks sent to a worker and not yet settled may run twice.
    assert len(runs) - n <= 2 * PIPELINE

    with Executor(1, path=path) as ex:
        assert ex.recovered() == {}, "a clean shutdown forgets results already handed out"
        assert ex.stats()["ready"] == 0


def test_an_unrecovered_earlier_run_keeps_its_results(tmp_path: Path) -> None:
    path = tmp_path / "q"
    ctx = multiprocessing.get_context("fork")
    submitted = ctx.Event()
    parent = ctx.Process(target=_parent, args=(str(path), str(tmp_path / "log"), 5, submitted))
    parent.start()
    assert submitted.wait(TIMEOUT)
    os.kill(parent.pid, signal.SIGKILL)
    parent.join()
    with Executor(1, path=path) as ex:
        assert ex.submit(square, 3).result(TIMEOUT) == 9  # earlier tasks run too
    with Executor(1, path=path) as ex:
        recovered = ex.recovered()
        assert {t: f.result(TIMEOUT) for t, f in recovered.items()} == {
            t: (t - 1) ** 2 for t in range(1, 6)
        }


# -- initializer, recycling, titles ------------------------------------------------------------


def test_a_failing_initializer_breaks_the_executor_and_keeps_the_tasks(tmp_path: Path) -> None:
    path = tmp_path / "q"
    ex = Executor(1, initializer=bad_init, path=path)
    fut = ex.submit(square, 5)
    with pytest.raises(InitializerFailed, match="no database today"):
        fut.result(TIMEOUT)
    assert isinstance(fut.exception(), cf.BrokenExecutor)
    with pytest.raises(InitializerFailed):
        ex.submit(square, 6)
    ex.shutdown()
    with Executor(1, path=path) as again:
        (recovered,) = again.recovered().values()
        assert recovered.result(TIMEOUT) == 25, "the task was kept for a working pool"


@pytest.mark.parametrize("method", [None, "spawn", "forkserver"])
def test_max_tasks_per_child_recycles_workers(method: str | None) -> None:
    ctx = multiprocessing.get_context(method) if method else None
    with Executor(1, mp_context=ctx, max_tasks_per_child=2) as ex:
        pids = [ex.submit(pid).result(TIMEOUT) for _ in range(6)]
    assert len(set(pids)) == 3 and pids[0] == pids[1] != pids[2] == pids[3]


def test_max_tasks_per_child_refuses_the_fork_start_method() -> None:
    with pytest.raises(ValueError, match="incompatible with the 'fork'"):
        Executor(1, mp_context=multiprocessing.get_context("fork"), max_tasks_per_child=2)


def test_workers_are_titled_with_what_they_run(tmp_path: Path) -> None:
    with Executor(1, path=tmp_path / "jobs.q") as ex:
        fut = ex.submit(title)
        assert fut.result(TIMEOUT) == (
            f"durableq worker jobs.q task {fut.task_id} tests.test_executor.title"
        )


# -- cancellation and shutdown -----------------------------------------------------------------


def test_a_cancelled_task_never_runs_even_after_a_restart(tmp_path: Path) -> None:
    path, gate = tmp_path / "q", str(tmp_path / "gate")
    with Executor(1, path=path) as ex:
        blocker = ex.submit(wait_for_file, gate)
        queued = ex.submit(touch, str(tmp_path / "ran"))
        assert queued.cancel() and queued.cancelled()
        touch(gate)
        assert blocker.result(TIMEOUT) == gate
    with Executor(1, path=path) as ex:
        assert ex.recovered() == {} and ex.stats()["ready"] == 0
    assert not (tmp_path / "ran").exists()


def test_shutdown_cancel_futures_drops_pending_tasks(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    ex = Executor(1, path=tmp_path / "q")
    running = ex.submit(wait_for_file, gate)
    deadline = time.monotonic() + TIMEOUT
    while not running.running():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    pending = [ex.submit(touch, str(tmp_path / f"ran{i}")) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    touch(gate)
    ex.shutdown(wait=True)
    assert running.result(TIMEOUT) == gate
    assert all(f.cancelled() for f in pending)
    assert not list(tmp_path.glob("ran*"))


def test_shutdown_waits_for_every_task(tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    ex = Executor(2)
    futs = [ex.submit(record, log, i) for i in range(40)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futs)
    assert len(Path(log).read_text().split()) == 40


def test_a_second_executor_on_the_same_path_is_refused(tmp_path: Path) -> None:
    with Executor(1, path=tmp_path / "q"), pytest.raises(durableq.QueueLocked):
        Executor(1, path=tmp_path / "q")


def test_a_failing_store_sets_the_fault_and_the_dispatcher_retries(tmp_path: Path) -> None:
    with Executor(1, path=tmp_path / "q") as ex:
        store = ex._store
        real_ack = store.ack
        calls = {"n": 0}

        def ack_failing_once(*args: Any, **kwargs: Any) -> int:
            calls["n"] += 1
            if calls["n"] == 1:
                raise durableq.StoreError("disk full (injected)")
            return real_ack(*args, **kwargs)

        store.ack = ack_failing_once  # type: ignore[method-assign]
        assert ex.submit(square, 9).result(TIMEOUT) == 81, "applied on the retry"
        assert ex.fault.is_set()
        assert [f.kind for f in ex.faults()] == ["store-error"]
        assert "disk full (injected)" in ex.faults()[0].detail


def signal_then_wait(started: str, gate: str) -> str:
    Path(started + ".tmp").write_text(str(os.getpid()))
    os.rename(started + ".tmp", started)  # appears with its content
    return wait_for_file(gate)


def test_only_the_task_a_worker_was_running_is_charged_for_its_death(tmp_path: Path) -> None:
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    with Executor(1, max_attempts=1) as ex:
        for _ in range(3):  # short tasks: the dispatcher now queues several per worker
            assert list(ex.map(square, range(40))) == [x * x for x in range(40)]
        running = ex.submit(signal_then_wait, started, gate)
        queued = [ex.submit(square, i) for i in range(3)]
        wait_for_file(started)
        os.kill(int(Path(started).read_text()), signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            running.result(TIMEOUT)
        assert [f.result(TIMEOUT) for f in queued] == [0, 1, 4], "never started: not charged"


def test_tasks_cancelled_at_shutdown_never_run_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "q"
    for _ in range(5):  # the race it guards against was lost 1 time in 5
        ex = Executor(2, path=path)
        futs = [ex.submit(square, i) for i in range(50)]
        ex.shutdown(wait=True, cancel_futures=True)
        assert all(f.done() for f in futs)
        with Executor(1, path=path) as again:
            assert again.recovered() == {}
            assert again.stats()["ready"] == 0


def test_kill_workers_abandons_running_tasks_which_stay_stored(tmp_path: Path) -> None:
    path, started, gate = tmp_path / "q", str(tmp_path / "started"), str(tmp_path / "gate")
    ex = Executor(1, path=path)
    running = ex.submit(signal_then_wait, started, gate)
    queued = ex.submit(square, 4)
    wait_for_file(started)
    ex.kill_workers()
    with pytest.raises(durableq.TaskAbandoned, match="stays stored"):
        running.result(TIMEOUT)
    assert queued.cancelled()
    assert ex.stats()["crashes"] == 0 and not ex.faults(), "a kill asked for is no crash"
    touch(gate)
    with Executor(1, path=path) as again:
        (fut,) = again.recovered().values()
        assert fut.result(TIMEOUT) == gate


def test_a_worker_lost_while_cancelling_at_shutdown_never_leaves_a_future_waiting(
    tmp_path: Path,
) -> None:
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    ex = Executor(1)
    running = ex.submit(signal_then_wait, started, gate)
    wait_for_file(started)
    ex.shutdown(wait=False, cancel_futures=True)
    os.kill(int(Path(started).read_text()), signal.SIGKILL)
    ex.shutdown(wait=True)
    with pytest.raises(durableq.TaskAbandoned, match="lost"):
        running.result(TIMEOUT)


def test_a_task_scheduled_past_shutdown_is_abandoned_and_kept(tmp_path: Path) -> None:
    with Executor(1, path=tmp_path / "q") as ex:
        tomorrow = ex.options(delay=86400).submit(square, 5)
    with pytest.raises(durableq.TaskAbandoned):
        tomorrow.result(TIMEOUT)
    with Executor(1, path=tmp_path / "q") as again:
        assert again.stats()["scheduled"] == 1
        assert list(again.recovered()) == [tomorrow.task_id]
        again.shutdown(cancel_futures=True)
