"""The dispatcher's pure parts, and its delivery to many consumers at once."""

from __future__ import annotations

import multiprocessing
import queue as pyqueue
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import durableq
from durableq._consumers import share

from .conftest import TIMEOUT


@given(st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=8), st.data())
def test_share_deals_every_item_within_credit(credits: list[int], data: Any) -> None:
    n = data.draw(st.integers(min_value=0, max_value=sum(credits)))
    hands = share(list(range(n)), credits)
    assert sorted(x for hand in hands for x in hand) == list(range(n))
    assert all(len(hand) <= credit for hand, credit in zip(hands, credits, strict=True))


def test_share_spreads_a_small_backlog() -> None:
    assert share([1, 2, 3], [8, 1, 8]) == [[1], [2], [3]]
    assert share([1, 2, 3, 4], [8, 1, 8]) == [[1, 4], [2], [3]]
    assert [len(h) for h in share(list(range(9)), [8, 1])] == [8, 1]


def count_until_empty(q: durableq.Queue, work: float, counts: Any, slot: int) -> None:
    import time

    while True:
        try:
            q.get(timeout=1.0)
        except pyqueue.Empty:
            return
        counts[slot] += 1
        end = time.perf_counter() + work
        while time.perf_counter() < end:
            pass


def test_consumers_of_different_speeds_leave_nothing_in_flight(tmp_path: Path) -> None:
    # Regression: leases were dealt past the waiters' credits and some stayed in flight.
    ctx = multiprocessing.get_context("spawn")
    q = durableq.Queue(path=tmp_path / "q", ctx=ctx)
    q.put_many(range(3000))
    counts = ctx.Array("i", 3)
    procs = [
        ctx.Process(target=count_until_empty, args=(q, work, counts, i))
        for i, work in enumerate((0.0, 0.0005, 0.002))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    stats = q.stats()
    assert sum(counts) == 3000
    assert (stats["ready"], stats["in_flight"], stats["acked_total"]) == (0, 0, 3000)


def test_acks_already_sent_when_the_owner_stops_are_applied() -> None:
    import threading

    store = durableq.MemoryStore()
    q = durableq.Queue(store=store, ack="manual")
    q.put_many(["a", "b"])
    first, second = q.get_message(timeout=TIMEOUT), q.get_message(timeout=TIMEOUT)
    d = q._dispatcher
    entered, gate = threading.Event(), threading.Event()
    flush = d._flush

    def held_flush() -> None:
        entered.set()
        gate.wait(TIMEOUT)
        flush()

    d._flush = held_flush  # type: ignore[method-assign]
    first.ack()  # wakes the dispatcher, which now waits in its flush
    assert entered.wait(TIMEOUT)
    second.ack()  # sits unread on the socket
    d.stopping = True
    gate.set()
    d.join(TIMEOUT)
    counts = store.counts()
    assert (counts.acked_total, counts.in_flight, counts.ready) == (2, 0, 0)
    del q


def test_sync_full_producers_share_one_commit_through_the_owner(tmp_path: Path) -> None:
    import threading

    from durableq import _wire as w

    q = durableq.Queue(path=tmp_path / "q", sync="full")
    store, d = q._owner_store, q._dispatcher
    conns = [w.connect(q._shared.address) for _ in range(4)]
    for conn in conns:  # authenticated and known to the owner before it is frozen
        conn.send_bytes(w.hello(q._shared.secret))
        w.send(conn, (w.CALL, "qsize"))
        assert w.recv(conn) == (w.RESULT, 0)
    entered, gate = threading.Event(), threading.Event()
    flush = d._flush

    def first_flush_waits() -> None:
        if not gate.is_set():
            entered.set()
            gate.wait(TIMEOUT)
        flush()

    d._flush = first_flush_waits  # type: ignore[method-assign]
    commits = store.commits
    w.send(conns[0], (w.RPUT, [b"\x01\x00"], (1, 0.0)))
    assert entered.wait(TIMEOUT)  # the owner holds the first put
    for conn in conns[1:]:
        w.send(conn, (w.RPUT, [b"\x01\x01"], (1, 0.0)))  # these wait on their sockets meanwhile
    gate.set()
    replies = [w.recv(conn) for conn in conns]
    assert [len(r[1]) for r in replies] == [1, 1, 1, 1]
    # One commit per frame would be 4; the puts that waited together share one.
    assert store.commits - commits <= 2
    for conn in conns:
        conn.close()
