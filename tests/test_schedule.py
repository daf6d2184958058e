"""Priorities, front-of-band and due times on the Queue and the Executor."""

from __future__ import annotations

import datetime as dt
import gc
import multiprocessing
import os
import queue as pyqueue
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import Executor, Priority

from .conftest import TIMEOUT
from .test_executor import record, signal_then_wait, touch, wait_for_file


def drain(q: durableq.Queue) -> list[Any]:
    out = []
    while True:
        try:
            out.append(q.get(timeout=0.2))
        except pyqueue.Empty:
            return out


def test_ready_messages_go_by_band_then_fifo_with_front_first(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put("low", priority="low")
    q.put("m1")
    q.put("high", priority=durableq.Priority.HIGH)
    q.put("m2", priority="MEDIUM")
    q.put("front1", front=True)
    q.put("front2", front=True)
    q.put_many(["h2", "h3"], priority=0)
    q.put_many(["front3", "front4"], front=True)  # the batch leads, in its order
    assert drain(q) == [
        "high", "h2", "h3", "front3", "front4", "front2", "front1", "m1", "m2", "low"
    ]


def test_a_delayed_message_is_scheduled_until_due(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put("later", delay=3600)
    q.put("now")
    assert q.get(timeout=TIMEOUT) == "now"
    with pytest.raises(pyqueue.Empty):
        q.get(timeout=0.1)
    stats = q.stats()
    assert (stats["ready"], stats["scheduled"]) == (0, 1)


def _wait_then_take(q: durableq.Queue, got: Any) -> None:
    got.put(("waiting", time.time()))
    got.put((q.get(timeout=TIMEOUT), time.time()))


def test_the_owner_timer_delivers_to_a_waiting_consumer_when_due(qpath: Path) -> None:
    """The consumer waits before the put; only the owner's one timer can wake it in time
    (its periodic safety check comes every 5 s)."""
    q = durableq.Queue(path=qpath)
    got: Any = multiprocessing.Queue()
    p = multiprocessing.Process(target=_wait_then_take, args=(q, got))
    p.start()
    assert got.get(timeout=TIMEOUT)[0] == "waiting"
    put_at = time.time()
    q.put("tick", delay=0.5)
    body, at = got.get(timeout=TIMEOUT)
    p.join(TIMEOUT)
    assert body == "tick"
    assert 0.5 <= at - put_at < 3.0, at - put_at


def test_not_before_takes_datetimes_and_epoch_seconds(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    q.put("aware-past", not_before=past)
    q.put("naive-past", not_before=dt.datetime.now() - dt.timedelta(minutes=1))
    q.put("epoch-future", not_before=time.time() + 3600)
    q.put("aware-future", not_before=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert drain(q) == ["aware-past", "naive-past"]
    assert q.stats()["scheduled"] == 2


def test_bad_scheduling_arguments_name_the_problem(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    with pytest.raises(ValueError, match="priority must be"):
        q.put(1, priority="urgent")
    with pytest.raises(ValueError, match="priority must be"):
        q.put(1, priority=7)
    with pytest.raises(ValueError, match="delay must be"):
        q.put(1, delay=-1)
    with pytest.raises(TypeError, match="not_before must be"):
        q.put(1, not_before="tomorrow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        q.put(1, delay=1, not_before=time.time())
    with pytest.raises(ValueError, match="cannot be scheduled"):
        q.put(1, delay=1, front=True)
    assert q.stats()["put_total"] == 0, "nothing stored"


def test_scheduled_messages_survive_reopening_and_overdue_ones_run_at_once(
    qpath: Path,
) -> None:
    q = durableq.Queue(path=qpath)
    q.put("overdue", delay=0.3)
    q.put("tomorrow", delay=86400, priority="high")
    del q
    gc.collect()
    time.sleep(0.4)  # past the first one's due time while no owner runs
    q = durableq.Queue(path=qpath)
    assert q.get(timeout=TIMEOUT) == "overdue"
    assert q.stats()["scheduled"] == 1


def _owner_with_scheduled(path: str, ready: Any) -> None:
    q = durableq.Queue(path=path)
    q.put("soon", delay=0.5)
    ready.set()
    time.sleep(600)


def test_a_scheduled_message_outlives_a_killed_owner(qpath: Path) -> None:
    ready = multiprocessing.Event()
    owner = multiprocessing.Process(target=_owner_with_scheduled, args=(str(qpath), ready))
    owner.start()
    assert ready.wait(TIMEOUT)
    os.kill(owner.pid, signal.SIGKILL)  # type: ignore[arg-type]
    owner.join()
    q = durableq.Queue(path=qpath)
    assert q.get(timeout=TIMEOUT) == "soon"


# -- the executor ----------------------------------------------------------------------------


def test_executor_runs_ready_tasks_by_priority(tmp_path: Path) -> None:
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    with Executor(1, path=tmp_path / "q") as ex:
        blocker = ex.submit(wait_for_file, gate)
        futs = [
            ex.options(priority=p).submit(record, log, i)
            for i, p in enumerate(["low", "medium", "high", "low", "high"])
        ]
        touch(gate)
        blocker.result(TIMEOUT)
        [f.result(TIMEOUT) for f in futs]
    assert list(map(int, Path(log).read_text().split())) == [2, 4, 1, 0, 3]


def test_executor_delay_holds_a_task_until_due(tmp_path: Path) -> None:
    with Executor(1, path=tmp_path / "q") as ex:
        start = time.time()
        later = ex.options(delay=0.5).submit(time.time)
        first = ex.submit(time.time)
        assert first.result(TIMEOUT) < later.result(TIMEOUT)
        assert later.result() - start >= 0.5
        with pytest.raises(ValueError, match="delay must be"):
            ex.options(delay=-2)
        assert ex.options(priority=Priority.LOW, delay=0).submit(abs, -3).result(TIMEOUT) == 3


def test_a_task_coming_due_while_every_worker_is_busy_runs_next(tmp_path: Path) -> None:
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    with Executor(1, path=tmp_path / "q") as ex:
        for _ in range(3):  # short tasks: the dispatcher leases ahead and skips dry leases
            assert list(ex.map(abs, range(-40, 0))) == list(range(40, 0, -1))
        busy = ex.submit(signal_then_wait, started, gate)
        due_soon = ex.options(delay=0.2).submit(time.time)
        wait_for_file(started)
        time.sleep(0.3)  # due now, while the only worker is busy
        released = time.time()
        touch(gate)
        assert busy.result(TIMEOUT) == gate
        assert released <= due_soon.result(TIMEOUT) < released + TIMEOUT
