"""What every server store passes beyond the two store contracts: a queue across processes,
every process a peer, a server that stays down, a server killed mid-run counted by id,
wakeups across processes, exclusive owners.

A server's test module subclasses ``ServerCases``, naming its store class and overriding
the ``server`` fixture with its running server (``url``, ``kill``, ``start``, ``restart``).
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import pickle
import signal
import threading
from typing import Any, ClassVar

import pytest

import durableq
from durableq import _dispatcher

from .conftest import TIMEOUT
from .servers import START_TIMEOUT

FORK = multiprocessing.get_context("fork")
_names = itertools.count()


def fresh(store_class: Any, url: str, **options: Any) -> Any:
    """A store under a name no other test used, emptied."""
    store = store_class(url, name=f"test-{os.getpid()}-{next(_names)}", **options)
    store.drop()
    return store


def _produce(q: durableq.Queue, first: int, n: int) -> None:
    for i in range(first, first + n):
        q.put(i)


def _peer(store_class: Any, url: str, name: str, n: int, conn: Any, die: bool) -> None:
    q = durableq.Queue(store=store_class(url, name=name), ack="manual", ctx=FORK,
                       visibility_timeout=0.5)
    msgs = [q.get_message(timeout=TIMEOUT) for _ in range(n)]
    conn.send([m.body for m in msgs])
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    for m in msgs:
        m.ack()
    q.close()


def _consume_one(cq: durableq.CommandQueue, conn: Any) -> None:
    conn.send("watching")
    for cmd in cq.consume("dev", timeout=TIMEOUT):
        conn.send(cmd.payload)
        cq.ack(cmd)
        break


def _put_from_a_peer(store_class: Any, url: str, name: str) -> None:
    q = durableq.Queue(store=store_class(url, name=name), ctx=FORK)
    q.put("from a peer")
    q.close()


class ServerCases:
    store_class: ClassVar[Any]

    @pytest.fixture
    def server(self) -> Any:
        raise NotImplementedError("a server's module provides its running server")

    def fresh(self, url: str, **options: Any) -> Any:
        return fresh(self.store_class, url, **options)

    def test_pickles_by_url(self, server: Any) -> None:
        s = self.fresh(server.url)
        s.put_many([b"x"])
        clone = pickle.loads(pickle.dumps(s))
        assert clone.counts().ready == 1 and clone.name == s.name
        s.close()
        clone.close()

    def test_concurrent_leases_never_share_a_message(self, server: Any) -> None:
        s = self.fresh(server.url)
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

    def test_queue_across_processes(self, server: Any) -> None:
        q = durableq.Queue(store=self.fresh(server.url), ctx=FORK)
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

    def test_every_process_opening_the_queue_is_a_peer(
        self, server: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_dispatcher, "PEER_GRACE", 0.5)  # the forked peers inherit it
        url, cls = server.url, self.store_class
        store = self.fresh(url)
        q = durableq.Queue(store=store, ack="manual", ctx=FORK, visibility_timeout=0.5)
        q.put_many(range(30))
        here, there = FORK.Pipe()
        done = FORK.Process(target=_peer, args=(cls, url, store.name, 10, there, False))
        done.start()
        assert len(set(here.recv())) == 10
        done.join(TIMEOUT)
        killed = FORK.Process(target=_peer, args=(cls, url, store.name, 5, there, True))
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
        self, server: Any
    ) -> None:
        q = durableq.Queue(store=self.fresh(server.url, timeout=0.5), ctx=FORK)
        server.kill()
        try:
            with pytest.raises(durableq.StoreError, match="unreachable") as err:
                q.put("lost")
            assert err.value.__cause__ is not None
            assert q.fault.is_set()
        finally:
            server.start()
        q.put("kept")
        assert q.get(timeout=TIMEOUT) == "kept"
        q.close()

    def test_nothing_acked_comes_back_and_nothing_unacked_is_lost_across_a_restart(
        self, server: Any
    ) -> None:
        n = 300
        # The producer keeps retrying for as long as the server may take to come back.
        q = durableq.Queue(store=self.fresh(server.url, timeout=START_TIMEOUT), ack="manual",
                           ctx=FORK)
        producer = FORK.Process(target=_produce, args=(q, 0, n))
        producer.start()
        acked: set[int] = set()
        redelivered_after_ack: list[int] = []
        restarted = False
        while len(acked) < n:
            msg = q.get_message(timeout=START_TIMEOUT)
            if msg.body in acked:
                redelivered_after_ack.append(msg.body)
            msg.ack()
            acked.add(msg.body)
            if len(acked) == n // 3 and not restarted:
                server.sync()  # the store is a second old: see RabbitMQServer.sync
                server.restart()  # SIGKILL, then the same port and data
                restarted = True
        producer.join(TIMEOUT)
        assert producer.exitcode == 0 and restarted
        assert redelivered_after_ack == []
        assert acked == set(range(n))
        stats = q.stats()
        assert (stats["put_total"], stats["ready"]) == (n, 0)
        q.close()

    def test_command_queue_consumers_are_woken_from_other_processes(self, server: Any) -> None:
        cq = durableq.CommandQueue(store=self.fresh(server.url))
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

    def test_a_peers_put_wakes_this_queues_waiting_consumer(
        self, server: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Without the store's wakeup, only the safety re-check would find the message.
        monkeypatch.setattr(_dispatcher, "SAFETY_CHECK", 3600.0)
        store = self.fresh(server.url)
        q = durableq.Queue(store=store, ctx=FORK)
        peer = FORK.Process(
            target=_put_from_a_peer, args=(self.store_class, server.url, store.name)
        )
        peer.start()
        assert q.get(timeout=TIMEOUT) == "from a peer"
        peer.join(TIMEOUT)
        q.close()

    def test_exclusive_owners_exclude_each_other_but_not_peers(self, server: Any) -> None:
        made = self.fresh(server.url)
        made.close()

        def store() -> Any:
            return self.store_class(server.url, name=made.name)

        first = durableq.Queue(store=store(), exclusive=True, ctx=FORK)
        with pytest.raises(durableq.QueueLocked):
            durableq.Queue(store=store(), exclusive=True, ctx=FORK)
        peer = durableq.Queue(store=store(), ctx=FORK)  # not asking for the lock: a peer
        peer.put("shared")
        assert first.get(timeout=TIMEOUT) == "shared"
        first.close()
        del first
        gc.collect()  # the owner shuts down: its lock is released
        second = durableq.Queue(store=store(), exclusive=True, ctx=FORK)
        second.close()
        peer.close()
