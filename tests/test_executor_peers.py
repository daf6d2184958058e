"""``Executor(store=server_store)`` and ``durableq worker --store URL``: executors in
separate processes share one server store's tasks, each one's futures resolve whoever ran
them, a peer SIGKILLed mid-task loses nothing, and the service stops cleanly on SIGTERM.
Tasks are counted by id."""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import durableq
from durableq._cli import main

from .conftest import TIMEOUT
from .server_store_cases import fresh
from .test_cli_worker import eventually

FORK = multiprocessing.get_context("fork")

TASKS = '''
import os, time

def square(x):
    return x * x, os.getpid()

def logged(log, seconds):
    """Append this run's pid to ``log``, then take ``seconds``."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{os.getpid()}\\n".encode())
    os.close(fd)
    time.sleep(seconds)
    return seconds

def once(marker, x):
    """The first run announces itself and hangs (to be killed); a later run returns."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(60)
    return x
'''

STORES = {"redis": durableq.RedisStore, "postgres": durableq.PostgresStore,
          "rabbitmq": durableq.RabbitMQStore}


@pytest.fixture
def mods(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "peer_tasks.py").write_text(TASKS)
    sys.path.insert(0, str(tmp_path / "mods"))
    yield tmp_path / "mods"
    sys.path.remove(str(tmp_path / "mods"))
    sys.modules.pop("peer_tasks", None)


def _url(request: pytest.FixtureRequest, kind: str) -> str:
    return str(request.getfixturevalue(f"{kind}_server").url)


def _peer(kind: str, url: str, name: str, first: int, n: int, conn: Any) -> None:
    """Another host: an executor with two workers that submits tasks of its own and runs
    whatever the store holds until told to stop."""
    from peer_tasks import square  # type: ignore[import-not-found]

    with durableq.Executor(2, store=STORES[kind](url, name=name), mp_context=FORK) as ex:
        fs = [ex.submit(square, i) for i in range(first, first + n)]
        conn.send({f.task_id: f.result(TIMEOUT)[0] for f in fs})
        conn.poll(TIMEOUT)  # serve the other executor's tasks until it has its results


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_executors_in_two_processes_share_one_store_and_every_future_resolves(
    request: pytest.FixtureRequest, mods: Path, kind: str
) -> None:
    from peer_tasks import square

    url, n = _url(request, kind), 20
    store = fresh(STORES[kind], url)
    # No workers here: every task of this executor runs on the peer, yet its futures resolve.
    ex = durableq.Executor(0, store=store)
    mine = [ex.submit(square, i) for i in range(n)]
    here, there = FORK.Pipe()
    peer = FORK.Process(target=_peer, args=(kind, url, store.name, 100, n, there))
    peer.start()
    got = {f.task_id: f.result(TIMEOUT) for f in mine}
    assert len(got) == n
    assert [got[f.task_id][0] for f in mine] == [i * i for i in range(n)]
    assert os.getpid() not in {pid for _, pid in got.values()}
    assert here.poll(TIMEOUT)
    theirs = here.recv()
    assert sorted(theirs.values()) == [i * i for i in range(100, 100 + n)]
    assert set(theirs).isdisjoint(got), "two tasks shared an id"
    here.send("done")
    peer.join(TIMEOUT)
    assert peer.exitcode == 0
    ex.shutdown()
    check = STORES[kind](url, name=store.name)
    counts = check.counts()
    assert (counts.acked_total, counts.ready, counts.in_flight) == (2 * n, 0, 0)
    assert check.results_of(list(got) + list(theirs)) == {}, "delivered results are forgotten"
    check.drop()
    check.close()


def _worker(url: str, name: str, mods: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "durableq", "worker", "--store", url, "--name", name, "-n", "1",
         "--visibility-timeout", "1", "--import-path", str(mods), "--allow-module",
         "peer_tasks"],
        stderr=subprocess.PIPE, start_new_session=True,
    )


def test_a_worker_service_killed_mid_task_leaves_it_to_the_next_which_stops_on_sigterm(
    redis_server: Any, mods: Path, tmp_path: Path
) -> None:
    from peer_tasks import once, square

    store = fresh(durableq.RedisStore, redis_server.url)
    ex = durableq.Executor(0, store=store)
    marker = tmp_path / "started"
    first = ex.submit(once, str(marker), 7)  # the lowest id: the first service takes it
    rest = [ex.submit(square, i) for i in range(10)]
    killed = _worker(redis_server.url, store.name, mods)
    try:
        eventually(marker.exists, "the first service to start the task")
        os.killpg(killed.pid, signal.SIGKILL)  # the service and its worker: a host lost
        killed.wait(TIMEOUT)
    finally:
        killed.kill()
        killed.wait()
        assert killed.stderr is not None
        killed.stderr.close()
    survivor = _worker(redis_server.url, store.name, mods)
    try:
        # Its lease expires after the 1 s visibility timeout: the survivor runs it again.
        assert first.result(TIMEOUT) == 7
        got = {f.task_id: f.result(TIMEOUT)[0] for f in rest}
        assert sorted(got.values()) == [i * i for i in range(10)]
        assert len(got) == 10 and first.task_id not in got
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(TIMEOUT) == 0
        assert survivor.stderr is not None
        assert b"stopped" in survivor.stderr.read()
    finally:
        survivor.kill()
        survivor.wait()
        assert survivor.stderr is not None
        survivor.stderr.close()
    ex.shutdown()
    check = durableq.RedisStore(redis_server.url, name=store.name)
    counts = check.counts()
    check.close()
    assert (counts.acked_total, counts.ready, counts.in_flight) == (11, 0, 0)


@pytest.mark.parametrize("kind", ["redis", "postgres", "rabbitmq"])
def test_the_result_watch_wakes_on_a_peers_kept_result(
    request: pytest.FixtureRequest, kind: str
) -> None:
    store = fresh(STORES[kind], _url(request, kind))
    watch = store.watch_results()
    try:
        eventually(lambda: watch.fileno() >= 0, "the subscription")
        store.put_many([b"x"])
        (task,) = store.lease("me", 1, now=time.time(), ttl=30)
        assert store.ack([task.token], results=[b"r"]) == 1
        assert select.select([watch], [], [], TIMEOUT)[0] == [watch]
        watch.drain()
        assert store.results_of([task.token.id]) == {task.token.id: b"r"}
    finally:
        watch.close()
        store.drop()
        store.close()


def _submit_and_die(url: str, name: str, n: int, conn: Any) -> None:
    from peer_tasks import square

    ex = durableq.Executor(0, store=durableq.RedisStore(url, name=name))
    conn.send([ex.submit(square, i).task_id for i in range(n)])
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_dead_producers_tasks_are_recovered_and_cancelled_ones_leave_the_store(
    redis_server: Any, mods: Path
) -> None:
    from peer_tasks import square

    store = fresh(durableq.RedisStore, redis_server.url)
    here, there = FORK.Pipe()
    producer = FORK.Process(target=_submit_and_die, args=(redis_server.url, store.name, 5,
                                                          there))
    producer.start()
    assert here.poll(TIMEOUT)
    ids = here.recv()
    producer.join(TIMEOUT)
    assert producer.exitcode == -signal.SIGKILL
    # An executor with workers runs them and hands their results out once, then forgets.
    with durableq.Executor(1, store=store) as ex:
        recovered = ex.recovered()
        assert {i: f.result(TIMEOUT)[0] for i, f in recovered.items()} == {
            i: k * k for k, i in enumerate(ids)}
        assert ex.stats()["acked_total"] == 5 and ex.faults() == []
    # A producer with no workers cancels what it will not await: gone from the store.
    idle = durableq.Executor(0, store=durableq.RedisStore(redis_server.url, name=store.name))
    mine = idle.submit(square, 99)
    idle.shutdown(cancel_futures=True)
    assert mine.cancelled()
    check = durableq.RedisStore(redis_server.url, name=store.name)
    counts = check.counts()
    assert (counts.ready, counts.in_flight, counts.put_total) == (0, 0, 6)
    assert check.results_of(ids) == {}
    check.close()


@pytest.mark.parametrize("kind", ["memory", "redis", "postgres", "rabbitmq"])
def test_extend_leases_pushes_the_deadline_of_leases_still_held(
    request: pytest.FixtureRequest, kind: str
) -> None:
    store = durableq.MemoryStore() if kind == "memory" else fresh(STORES[kind],
                                                                   _url(request, kind))
    try:
        store.put_many([b"a", b"b"])
        a, b = store.lease("me", 2, now=1_000.0, ttl=10)
        assert store.ack([b.token]) == 1
        stale = durableq.LeaseToken(a.token.id, a.token.attempt + 1)
        assert store.extend_leases([a.token, b.token, stale], until=1_100.0) == 1
        assert store.requeue_expired(1_050.0) == 0, "the extended lease is still held"
        assert store.requeue_expired(1_101.0) == 1
    finally:
        if kind != "memory":
            store.drop()
        store.close()


def test_a_task_longer_than_the_visibility_timeout_runs_once_while_its_peer_lives(
    redis_server: Any, mods: Path, tmp_path: Path
) -> None:
    from peer_tasks import logged

    store = fresh(durableq.RedisStore, redis_server.url)
    log = tmp_path / "runs"
    # Two peers, one worker each: without renewal the idle one would take the task over
    # once its 2 s lease lapsed, and it would run twice.
    other = durableq.Executor(1, store=durableq.RedisStore(redis_server.url, name=store.name),
                              visibility_timeout=2)
    with durableq.Executor(1, store=store, visibility_timeout=2) as ex:
        assert ex.submit(logged, str(log), 3.0).result(TIMEOUT) == 3.0
    other.shutdown()
    assert len(log.read_text().split()) == 1


def test_store_is_checked_and_exclusive_of_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path= or store="):
        durableq.Executor(1, path=tmp_path / "q", store=durableq.MemoryStore())
    with pytest.raises(TypeError, match=r"durableq\.Store"):
        durableq.Executor(1, store=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="0 only with a server store"):
        durableq.Executor(0)
    with pytest.raises(ValueError, match="key= signs"):
        durableq.Executor(1, store=durableq.MemoryStore(), key=b"k" * 32)
    with pytest.raises(ValueError, match="visibility_timeout"):
        durableq.Executor(1, store=durableq.MemoryStore(), visibility_timeout=0)
    with pytest.raises(ValueError, match="redis://"):
        durableq.open_store("sqlite:///tmp/x")
    with pytest.raises(ValueError, match="exactly one"):
        durableq.WorkerService(tmp_path / "q", store=durableq.MemoryStore())


def test_an_executor_on_a_store_it_owns_runs_as_with_a_path() -> None:
    with durableq.Executor(1, store=durableq.MemoryStore()) as ex:
        assert list(ex.map(abs, [-1, -2])) == [1, 2]


def test_worker_takes_a_path_or_a_store_url_exactly_one(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in ([], [str(tmp_path / "q"), "--store", "redis://h/0"],
                 ["--store", "sqlite:///x"], [str(tmp_path / "q"), "--name", "jobs"]):
        result = runner.invoke(main, ["worker", *args])
        assert result.exit_code == 2, (args, result.output)
