"""RabbitMQStore against a real RabbitMQ broker: both store contracts, then queues across
processes and a broker killed mid-run."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import CommandStore, RabbitMQStore, Store, _dispatcher

from .conftest import TIMEOUT
from .servers import RabbitMQServer
from .test_command_store_contract import CommandStoreContract
from .test_store_contract import StoreContract

_names = itertools.count()
FORK = multiprocessing.get_context("fork")
#: A connection the broker drops (killed) can leave pika's ioloop wake-up socketpair to the
#: garbage collector, which closes it with a ResourceWarning: pika's, not a leak of ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(autouse=True)
def _quiet_pika() -> Iterator[None]:
    """pika logs every refused reconnect at ERROR with the exception, whose frames would
    keep the test's queue alive in the captured records past the leak check."""
    logger = logging.getLogger("pika")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture
def rabbitmq_url(rabbitmq_server: RabbitMQServer) -> str:
    return rabbitmq_server.url


def fresh(url: str, **options: Any) -> RabbitMQStore:
    store = RabbitMQStore(url, name=f"test-{os.getpid()}-{next(_names)}", **options)
    store.drop()
    return store


class TestRabbitMQStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, rabbitmq_url: str) -> None:
        self.url = rabbitmq_url

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

    def test_concurrent_leases_never_share_a_message(self) -> None:
        import threading

        s = fresh(self.url)
        s.put_many([b"%d" % i for i in range(200)])
        got: list[int] = []
        start = threading.Barrier(4)

        def take() -> None:
            start.wait()
            while batch := s.lease("me", 7, now=1e12, ttl=30):
                got.extend(x.token.id for x in batch)

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == list(range(1, 201))
        s.close()


class TestRabbitMQCommandStore(CommandStoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, rabbitmq_url: str) -> None:
        self.url = rabbitmq_url

    def make_store(self, tmp_path: Path) -> CommandStore:
        return fresh(self.url)


def test_missing_pika_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from durableq import ConfigurationError

    monkeypatch.setitem(sys.modules, "pika", None)
    with pytest.raises(ConfigurationError, match=r'pip install "durableq\[rabbitmq\]"'):
        RabbitMQStore("amqp://127.0.0.1:1/x")


# -- queues on a RabbitMQStore -----------------------------------------------------------------


def _produce(q: durableq.Queue, first: int, n: int) -> None:
    for i in range(first, first + n):
        q.put(i)


def test_queue_across_processes(rabbitmq_url: str) -> None:
    q = durableq.Queue(store=fresh(rabbitmq_url), ctx=FORK)
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
    q = durableq.Queue(store=RabbitMQStore(url, name=name), ack="manual", ctx=FORK,
                       visibility_timeout=0.5)
    msgs = [q.get_message(timeout=TIMEOUT) for _ in range(n)]
    conn.send([m.body for m in msgs])
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    for m in msgs:
        m.ack()
    q.close()


def test_every_process_opening_the_queue_is_a_peer(
    rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_dispatcher, "PEER_GRACE", 0.5)  # the forked peers inherit it
    store = fresh(rabbitmq_url)
    q = durableq.Queue(store=store, ack="manual", ctx=FORK, visibility_timeout=0.5)
    q.put_many(range(30))
    here, there = FORK.Pipe()
    done = FORK.Process(target=_peer, args=(rabbitmq_url, store.name, 10, there, False))
    done.start()
    assert len(set(here.recv())) == 10
    done.join(TIMEOUT)
    killed = FORK.Process(target=_peer, args=(rabbitmq_url, store.name, 5, there, True))
    killed.start()
    held = here.recv()
    killed.join(TIMEOUT)
    assert killed.exitcode == -signal.SIGKILL
    rest = []
    for _ in range(20):
        with q.get_message(timeout=TIMEOUT) as msg:
            rest.append(msg.body)
    assert set(held) <= set(rest) and len(set(rest)) == 20
    assert q.stats()["put_total"] == 30
    q.close()


def test_a_server_that_stays_down_raises_store_error_and_sets_the_fault(
    rabbitmq_server: RabbitMQServer,
) -> None:
    q = durableq.Queue(store=fresh(rabbitmq_server.url, timeout=0.5), ctx=FORK)
    rabbitmq_server.kill()
    try:
        with pytest.raises(durableq.StoreError, match="unreachable") as err:
            q.put("lost")
        assert err.value.__cause__ is not None
        assert q.fault.is_set()
    finally:
        rabbitmq_server.start()
    q.put("kept")
    assert q.get(timeout=TIMEOUT) == "kept"
    q.close()


def test_nothing_acked_comes_back_and_nothing_unacked_is_lost_across_a_restart(
    rabbitmq_server: RabbitMQServer,
) -> None:
    n = 300
    q = durableq.Queue(store=fresh(rabbitmq_server.url), ack="manual", ctx=FORK)
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
            rabbitmq_server.restart()  # SIGKILL, then the same port and data directory
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


def test_command_queue_consumers_are_woken_from_other_processes(rabbitmq_url: str) -> None:
    cq = durableq.CommandQueue(store=fresh(rabbitmq_url))
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
    q = durableq.Queue(store=RabbitMQStore(url, name=name), ctx=FORK)
    q.put("from a peer")
    q.close()


def test_a_peers_put_wakes_this_queues_waiting_consumer(
    rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the store's wakeup, only the safety re-check would find the message.
    monkeypatch.setattr(_dispatcher, "SAFETY_CHECK", 3600.0)
    store = fresh(rabbitmq_url)
    q = durableq.Queue(store=store, ctx=FORK)
    peer = FORK.Process(target=_put_from_a_peer, args=(rabbitmq_url, store.name))
    peer.start()
    assert q.get(timeout=TIMEOUT) == "from a peer"
    peer.join(TIMEOUT)
    q.close()


def test_exclusive_owners_exclude_each_other_but_not_peers(rabbitmq_url: str) -> None:
    import gc

    made = fresh(rabbitmq_url)
    made.close()
    name = made.name
    first = durableq.Queue(store=RabbitMQStore(rabbitmq_url, name=name), exclusive=True, ctx=FORK)
    with pytest.raises(durableq.QueueLocked):
        durableq.Queue(store=RabbitMQStore(rabbitmq_url, name=name), exclusive=True, ctx=FORK)
    # not asking: a peer
    peer = durableq.Queue(store=RabbitMQStore(rabbitmq_url, name=name), ctx=FORK)
    peer.put("shared")
    assert first.get(timeout=TIMEOUT) == "shared"
    first.close()
    del first
    gc.collect()  # the owner shuts down: its lock is released
    second = durableq.Queue(store=RabbitMQStore(rabbitmq_url, name=name), exclusive=True, ctx=FORK)
    second.close()
    peer.close()


def _killed_owner(url: str, name: str, conn: Any) -> None:
    durableq.Queue(store=RabbitMQStore(url, name=name), exclusive=True, ctx=FORK)
    conn.send("owning")
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_exclusive_owners_lock_is_gone_with_its_connection(rabbitmq_url: str) -> None:
    name = fresh(rabbitmq_url).name
    here, there = FORK.Pipe()
    owner = FORK.Process(target=_killed_owner, args=(rabbitmq_url, name, there))
    owner.start()
    assert here.recv() == "owning"
    owner.join(TIMEOUT)
    assert owner.exitcode == -signal.SIGKILL
    q = durableq.Queue(store=RabbitMQStore(rabbitmq_url, name=name), exclusive=True,
                       wait_for_owner=True, ctx=FORK)
    q.close()


def test_a_new_process_rebuilds_the_state_from_the_log(rabbitmq_url: str) -> None:
    first = fresh(rabbitmq_url)
    first.put_many([b"a", b"b", b"c"])
    (leased,) = first.lease("me", 1, now=1e12, ttl=30)
    first.ack([leased.token], results=[b"done"])
    first.command_put("dev", b"hold", command_type=None, expires_at=None, hold=True, now=1.0)
    first.close()
    again = RabbitMQStore(rabbitmq_url, name=first.name)
    counts = again.counts()
    assert (counts.ready, counts.done, counts.put_total, counts.acked_total) == (2, 1, 3, 1)
    assert again.results(10) == {leased.token.id: b"done"}
    assert [r.payload for r in again.command_pending("dev", now=2.0, held_only=True)] == [b"hold"]
    again.close()
