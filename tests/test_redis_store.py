"""RedisStore against a real redis-server: both store contracts, then queues across
processes and a server killed mid-run."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import CommandStore, RedisStore, Store, _dispatcher

from .conftest import TIMEOUT
from .servers import RedisServer
from .test_command_store_contract import CommandStoreContract
from .test_store_contract import StoreContract

_names = itertools.count()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def fresh(url: str) -> RedisStore:
    store = RedisStore(url, name=f"test-{next(_names)}")
    store.drop()
    return store


class TestRedisStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url

    def make_store(self, tmp_path: Path) -> Store:
        return fresh(self.url)

    def test_pickles_by_url(self) -> None:
        import pickle

        s = fresh(self.url)
        s.put_many([b"x"])
        clone = pickle.loads(pickle.dumps(s))
        assert clone.counts().ready == 1 and clone.name == s.name
        s.close()
        clone.close()


class TestRedisCommandStore(CommandStoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url

    def make_store(self, tmp_path: Path) -> CommandStore:
        return fresh(self.url)


def test_the_password_stays_out_of_repr_and_errors() -> None:
    store = RedisStore("redis://user:s3cret@127.0.0.1:1/0", timeout=0.1)
    assert "s3cret" not in repr(store) and "***" in repr(store)
    with pytest.raises(durableq.StoreError) as err:
        store.counts()
    assert "s3cret" not in str(err.value)
    store.close()


def test_missing_redis_py_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from durableq import ConfigurationError

    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r'pip install "durableq\[redis\]"'):
        RedisStore("redis://127.0.0.1:1/0")


# -- queues on a RedisStore --------------------------------------------------------------------

FORK = multiprocessing.get_context("fork")


def _produce(q: durableq.Queue, first: int, n: int) -> None:
    for i in range(first, first + n):
        q.put(i)


def test_queue_across_processes(redis_url: str) -> None:
    q = durableq.Queue(store=fresh(redis_url), ctx=FORK)
    producers = [FORK.Process(target=_produce, args=(q, 100 * k, 50)) for k in range(2)]
    for p in producers:
        p.start()
    got = [q.get(timeout=TIMEOUT) for _ in range(100)]
    for p in producers:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    assert sorted(got) == [*range(50), *range(100, 150)]
    q.close()
    assert q.stats()["acked_total"] == 100


def _peer(url: str, name: str, n: int, conn: Any, die: bool) -> None:
    q = durableq.Queue(store=RedisStore(url, name=name), ack="manual", ctx=FORK,
                       visibility_timeout=0.5)
    msgs = [q.get_message(timeout=TIMEOUT) for _ in range(n)]
    conn.send([m.body for m in msgs])
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    for m in msgs:
        m.ack()
    q.close()


def test_every_process_opening_the_queue_is_a_peer(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_dispatcher, "PEER_GRACE", 0.5)  # the forked peers inherit it
    store = fresh(redis_url)
    q = durableq.Queue(store=store, ack="manual", ctx=FORK, visibility_timeout=0.5)
    q.put_many(range(30))
    here, there = FORK.Pipe()
    done = FORK.Process(target=_peer, args=(redis_url, store.name, 10, there, False))
    done.start()
    assert len(set(here.recv())) == 10
    done.join(TIMEOUT)
    killed = FORK.Process(target=_peer, args=(redis_url, store.name, 5, there, True))
    killed.start()
    held = here.recv()
    killed.join(TIMEOUT)
    assert killed.exitcode == -signal.SIGKILL
    # The killed peer's leases come back once their deadline passes; this peer takes them.
    rest = []
    for _ in range(20):
        with q.get_message(timeout=TIMEOUT) as msg:
            rest.append(msg.body)
    assert set(held) <= set(rest) and len(set(rest)) == 20
    assert q.stats()["put_total"] == 30
    q.close()


def test_a_server_that_stays_down_raises_store_error_and_sets_the_fault(
    redis_server: RedisServer,
) -> None:
    q = durableq.Queue(store=RedisStore(redis_server.url, name=f"test-{next(_names)}",
                                        timeout=0.5), ctx=FORK)
    redis_server.kill()
    try:
        with pytest.raises(durableq.StoreError, match="unreachable") as err:
            q.put("lost")
        assert err.value.__cause__ is not None
        assert q.fault.is_set()
    finally:
        redis_server.start()
    q.put("kept")
    assert q.get(timeout=TIMEOUT) == "kept"
    q.close()


def test_nothing_acked_comes_back_and_nothing_unacked_is_lost_across_a_restart(
    redis_server: RedisServer,
) -> None:
    n = 300
    q = durableq.Queue(store=fresh(redis_server.url), ack="manual", ctx=FORK)
    producer = FORK.Process(target=_produce, args=(q, 0, n))
    producer.start()
    acked: set[int] = set()
    redelivered_after_ack: list[int] = []
    restarted = False
    while len(acked) < n:
        msg = q.get_message(timeout=TIMEOUT)
        if msg.body in acked:
            redelivered_after_ack.append(msg.body)
        msg.ack()
        acked.add(msg.body)
        if len(acked) == n // 3 and not restarted:
            redis_server.restart()  # SIGKILL, then the same port and AOF file
            restarted = True
    producer.join(TIMEOUT)
    assert producer.exitcode == 0 and restarted
    assert redelivered_after_ack == []
    assert acked == set(range(n))
    stats = q.stats()
    assert (stats["put_total"], stats["ready"]) == (n, 0)
    q.close()


def _consume_one(cq: durableq.CommandQueue, conn: Any) -> None:
    conn.send("watching")
    for cmd in cq.consume("dev", timeout=TIMEOUT):
        conn.send(cmd.payload)
        cq.ack(cmd)
        break


def test_command_queue_consumers_are_woken_from_other_processes(redis_url: str) -> None:
    cq = durableq.CommandQueue(store=fresh(redis_url))
    here, there = FORK.Pipe()
    child = FORK.Process(target=_consume_one, args=(cq, there))
    child.start()
    assert here.recv() == "watching"
    cq.enqueue_or_update("dev", "temp", {"c": 21})
    assert here.poll(TIMEOUT) and here.recv() == {"c": 21}
    child.join(TIMEOUT)
    assert child.exitcode == 0
    assert cq.pending("dev") == []
    cq.close()


def _put_from_a_peer(url: str, name: str) -> None:
    q = durableq.Queue(store=RedisStore(url, name=name), ctx=FORK)
    q.put("from a peer")
    q.close()


def test_a_peers_put_wakes_this_queues_waiting_consumer(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the store's wakeup, only the safety re-check would find the message.
    monkeypatch.setattr(_dispatcher, "SAFETY_CHECK", 3600.0)
    store = fresh(redis_url)
    q = durableq.Queue(store=store, ctx=FORK)
    peer = FORK.Process(target=_put_from_a_peer, args=(redis_url, store.name))
    peer.start()
    assert q.get(timeout=TIMEOUT) == "from a peer"
    peer.join(TIMEOUT)
    q.close()


def test_exclusive_owners_exclude_each_other_but_not_peers(redis_url: str) -> None:
    import gc

    made = fresh(redis_url)
    made.close()
    name = made.name
    first = durableq.Queue(store=RedisStore(redis_url, name=name), exclusive=True, ctx=FORK)
    with pytest.raises(durableq.QueueLocked):
        durableq.Queue(store=RedisStore(redis_url, name=name), exclusive=True, ctx=FORK)
    peer = durableq.Queue(store=RedisStore(redis_url, name=name), ctx=FORK)  # not asking: a peer
    peer.put("shared")
    assert first.get(timeout=TIMEOUT) == "shared"
    first.close()
    del first
    gc.collect()  # the owner shuts down: its lock is released
    second = durableq.Queue(store=RedisStore(redis_url, name=name), exclusive=True, ctx=FORK)
    second.close()
    peer.close()
