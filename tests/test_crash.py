"""Real SIGKILLs, then every message counted by id.

Each test names a kill point of docs/guarantees.md. Children log ids to files, one line
per id, flushed as they go, so a SIGKILL cannot lose the record of what a process did.
"""

from __future__ import annotations

import os
import queue as pyqueue
import signal
from pathlib import Path
from typing import Any

import pytest

import durableq

from .conftest import TIMEOUT


def log(path: Path | str, value: object) -> None:
    with open(path, "a") as f:
        f.write(f"{value}\n")


def read_log(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def drain(q: durableq.Queue) -> list[durableq.Message[Any]]:
    """Everything ready now, acked; the owner is this process so nothing is in transit."""
    out = []
    while True:
        try:
            msg = q.get_message(block=False)
        except pyqueue.Empty:
            return out
        msg.ack()
        out.append(msg)


# -- children -----------------------------------------------------------------------------


def consume_until(q: durableq.Queue, logfile: str, stop_at: int, reached: Any) -> None:
    """Log each id as it is got; at ``stop_at`` announce it and hang, mid-message."""
    while True:
        item = q.get(timeout=TIMEOUT)
        log(logfile, item)
        if item == stop_at:
            reached.set()
            reached.wait(TIMEOUT)
            signal.pause()


def consume_all(q: durableq.Queue, logfile: str) -> None:
    while True:
        try:
            log(logfile, q.get(timeout=1.0))
        except pyqueue.Empty:
            return


def produce_forever(q: durableq.Queue, logfile: str, after: int, going: Any) -> None:
    i = 0
    while True:
        q.put(i)
        log(logfile, i)  # only once put() returned: the message is committed
        i += 1
        if i == after:
            going.set()


def owner_with_consumer(
    path: str, n: int, acked_log: str, held_log: str, pids: Any, ready: Any, ctx_name: str
) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context(ctx_name)
    q = durableq.Queue(path=path, ctx=ctx, ack="manual")
    q.put_many(range(n))
    c = ctx.Process(target=ack_some_hold_some, args=(q, acked_log, held_log, ready))
    c.start()
    pids[0], pids[1] = os.getpid(), c.pid
    signal.pause()


def ack_some_hold_some(q: durableq.Queue, acked_log: str, held_log: str, ready: Any) -> None:
    for _ in range(20):
        msg = q.get_message(timeout=TIMEOUT)
        msg.ack()
        q.stats()  # a round trip: the owner has applied the ack before we log it
        log(acked_log, msg.body)
    for _ in range(5):
        log(held_log, q.get_message(timeout=TIMEOUT).body)  # in flight, never acked
    ready.set()
    signal.pause()


class DieInAck(durableq.DiskcacheStore):
    """The owner's store, killed on its third ack batch: before or after it commits."""

    after_commit = False
    batches = 0

    def ack(self, tokens: Any) -> int:
        DieInAck.batches += 1
        if DieInAck.batches == 3 and not self.after_commit:
            os.kill(os.getpid(), signal.SIGKILL)
        applied = super().ack(tokens)
        if DieInAck.batches == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return applied


def owner_dying_in_ack(
    path: str, n: int, after_commit: bool, acked_log: str, ctx_name: str
) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context(ctx_name)
    store = DieInAck(path)
    store.after_commit = after_commit
    q = durableq.Queue(store=store, ctx=ctx, ack="manual")
    q.put_many(range(n))
    c = ctx.Process(target=ack_everything, args=(q, acked_log))
    c.start()
    c.join()  # never returns: the owner dies in its third ack batch


def ack_everything(q: durableq.Queue, acked_log: str) -> None:
    try:
        while True:
            msg = q.get_message(timeout=TIMEOUT)
            log(acked_log + ".done", msg.body)  # the work is done...
            msg.ack()
            q.stats()
            log(acked_log, msg.body)  # ...and the owner confirmed the ack
    except durableq.OwnerGone:
        return


def block_in_get(q: durableq.Queue, waiting: Any) -> None:
    waiting.set()
    q.get()  # blocks: the queue is empty


def put_batches(q: durableq.Queue, logfile: str, going: Any) -> None:
    for batch in range(10_000):
        q.put_many([(batch, i) for i in range(100)])
        log(logfile, batch)
        if batch == 5:
            going.set()


def own_and_share(path: str, ctx_name: str, q_out: Any, pids: Any, ready: Any) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context(ctx_name)
    q = durableq.Queue(path=path, ctx=ctx)
    producer = ctx.Process(target=put_after_owner_dies, args=(q, pids, q_out, ready))
    producer.start()
    pids[0] = os.getpid()
    signal.pause()


def put_after_owner_dies(q: durableq.Queue, pids: Any, out: Any, ready: Any) -> None:
    q.put("before")
    pids[1] = os.getpid()
    ready.set()
    while os.getppid() == pids[0]:  # until the owner is gone (we are reparented)
        signal.sigtimedwait([signal.SIGCHLD], 0.01)
    q.put("after the owner died")  # committed: no owner needed
    out.put("put returned")
    out.close()
    out.join_thread()


def own_then_fork_a_bystander(path: str, out: Any, bystander: Any, ready: Any) -> None:
    import multiprocessing
    import time

    ctx = multiprocessing.get_context("fork")
    q = durableq.Queue(path=path, ctx=ctx)
    ctx.Process(target=report_owner_gone, args=(q, out)).start()
    end = time.monotonic() + TIMEOUT
    while not q._shared.hungry.value:  # the consumer's connection accepted, its get waiting
        assert time.monotonic() < end
        time.sleep(0.001)
    # Forked now, it holds copies of whatever descriptors the owner has open.
    sleeper = ctx.Process(target=time.sleep, args=(3 * TIMEOUT,))
    sleeper.start()
    bystander.value = sleeper.pid
    ready.set()
    signal.pause()


def report_owner_gone(q: durableq.Queue, out: Any) -> None:
    try:
        q.get()
    except durableq.OwnerGone:
        out.put("owner gone")


def hold_then_fork(q: durableq.Queue, grandchild: Any, ready: Any) -> None:
    import time

    q.get_message(timeout=TIMEOUT)  # held, never acked
    pid = os.fork()  # a raw fork (a library's helper), not a multiprocessing child
    if pid == 0:
        time.sleep(3 * TIMEOUT)
        os._exit(0)
    grandchild.value = pid
    ready.set()
    signal.pause()


# -- the kill points ----------------------------------------------------------------------


def test_consumer_killed_mid_message_gets_it_again(ctx: Any, tmp_path: Path) -> None:
    q = durableq.Queue(path=tmp_path / "q", ctx=ctx)
    q.put_many(range(50))
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    reached = ctx.Event()
    victim = ctx.Process(target=consume_until, args=(q, str(first), 10, reached))
    victim.start()
    assert reached.wait(TIMEOUT)
    victim.kill()
    victim.join(TIMEOUT)
    survivor = ctx.Process(target=consume_all, args=(q, str(second)))
    survivor.start()
    survivor.join(TIMEOUT)
    seen_first, seen_second = read_log(first), read_log(second)
    assert 10 in seen_first and 10 in seen_second, "the message being worked on came back"
    assert set(seen_first) | set(seen_second) == set(range(50)), "nothing lost"
    assert q.fault.is_set()


def test_producer_killed_right_after_put_loses_nothing(ctx: Any, tmp_path: Path) -> None:
    q = durableq.Queue(path=tmp_path / "q", ctx=ctx)
    logfile = tmp_path / "put.log"
    going = ctx.Event()
    producer = ctx.Process(target=produce_forever, args=(q, str(logfile), 200, going))
    producer.start()
    assert going.wait(TIMEOUT)
    producer.kill()  # while it keeps putting
    producer.join(TIMEOUT)
    returned = read_log(logfile)
    got = [m.body for m in drain(q)]
    assert len(returned) >= 200
    assert set(returned) <= set(got), "every put that returned is in the queue"
    assert got == sorted(got), "FIFO for one producer"


def test_owner_killed_with_messages_ready_and_in_flight(ctx: Any, tmp_path: Path) -> None:
    path, n = tmp_path / "q", 100
    acked, held = tmp_path / "acked.log", tmp_path / "held.log"
    pids, ready = ctx.Array("i", 2), ctx.Event()
    owner = ctx.Process(
        target=owner_with_consumer,
        args=(str(path), n, str(acked), str(held), pids, ready, ctx.get_start_method()),
    )
    owner.start()
    assert ready.wait(TIMEOUT)
    for pid in (pids[0], pids[1]):
        os.kill(pid, signal.SIGKILL)
    owner.join(TIMEOUT)

    q = durableq.Queue(path=path, ack="manual", wait_for_owner=True)
    q.put("newer")
    got = drain(q)
    bodies = [m.body for m in got]
    acked_ids, held_ids = set(read_log(acked)), set(read_log(held))
    assert len(acked_ids) == 20 and len(held_ids) == 5
    assert not acked_ids & set(bodies), "an acked message never comes back"
    assert set(bodies) == set(range(n)) - acked_ids | {"newer"}, "nothing unacked is lost"
    assert bodies[-1] == "newer", "recovered messages come before newer puts"
    assert {m.body: m.attempts for m in got if m.body in held_ids} == dict.fromkeys(held_ids, 2)


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
def test_owner_killed_inside_the_ack_transaction(
    ctx: Any, tmp_path: Path, after_commit: bool
) -> None:
    path, n, acked = tmp_path / "q", 30, tmp_path / "acked.log"
    owner = ctx.Process(
        target=owner_dying_in_ack,
        args=(str(path), n, after_commit, str(acked), ctx.get_start_method()),
    )
    owner.start()
    owner.join(TIMEOUT)
    assert owner.exitcode == -signal.SIGKILL
    q = durableq.Queue(path=path, ack="manual", wait_for_owner=True)
    bodies = [m.body for m in drain(q)]
    acked_ids, done_ids = set(read_log(acked)), set(read_log(Path(f"{acked}.done")))
    assert acked_ids, "some acks were confirmed before the owner died"
    assert not acked_ids & set(bodies), "a confirmed ack never comes back"
    assert done_ids | set(bodies) == set(range(n)), "done or re-run, never lost"


def test_consumer_killed_inside_get_wedges_no_one(ctx: Any, tmp_path: Path) -> None:
    # With mp.Queue a consumer killed while blocked in get() dies holding the shared read
    # lock, and every other consumer blocks forever. Here nothing is shared.
    q = durableq.Queue(path=tmp_path / "q", ctx=ctx)
    waiting = ctx.Event()
    victim = ctx.Process(target=block_in_get, args=(q, waiting))
    victim.start()
    assert waiting.wait(TIMEOUT)
    victim.kill()
    victim.join(TIMEOUT)
    q.put("still flows")
    logfile = tmp_path / "survivor.log"
    survivor = ctx.Process(target=consume_all, args=(q, str(logfile)))
    survivor.start()
    survivor.join(TIMEOUT)
    assert logfile.read_text() == "still flows\n"


def test_producer_killed_mid_put_many_stores_whole_batches(ctx: Any, tmp_path: Path) -> None:
    q = durableq.Queue(path=tmp_path / "q", ctx=ctx)
    logfile, going = tmp_path / "batches.log", ctx.Event()
    producer = ctx.Process(target=put_batches, args=(q, str(logfile), going))
    producer.start()
    assert going.wait(TIMEOUT)
    producer.kill()
    producer.join(TIMEOUT)
    batches: dict[int, list[int]] = {}
    for msg in drain(q):
        batch, i = msg.body
        batches.setdefault(batch, []).append(i)
    assert set(read_log(logfile)) <= set(batches), "every batch whose put_many returned"
    assert all(items == list(range(100)) for items in batches.values()), "all or nothing"


def test_producers_keep_committing_after_the_owner_dies(ctx: Any, tmp_path: Path) -> None:
    path, out = tmp_path / "q", ctx.Queue()
    pids, ready = ctx.Array("i", 2), ctx.Event()
    owner = ctx.Process(
        target=own_and_share, args=(str(path), ctx.get_start_method(), out, pids, ready)
    )
    owner.start()
    assert ready.wait(TIMEOUT)
    os.kill(pids[0], signal.SIGKILL)
    owner.join(TIMEOUT)
    assert out.get(timeout=TIMEOUT) == "put returned"
    q = durableq.Queue(path=path, ack="manual", wait_for_owner=True)
    assert [m.body for m in drain(q)] == ["before", "after the owner died"]


def test_a_consumer_sees_its_owner_die_though_the_owner_forked_others_since(
    tmp_path: Path,
) -> None:
    """fork() copies the owner's descriptors, its end of each consumer's connection among
    them, into every child it starts later: a child that outlives the owner kept each
    consumer's connection open, and a consumer blocked in get() waited for it for ever
    (two such consumers waited for each other). The owner's child closes them at fork."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    out, bystander, ready = ctx.Queue(), ctx.Value("i", 0), ctx.Event()
    owner = ctx.Process(target=own_then_fork_a_bystander,
                        args=(str(tmp_path / "q"), out, bystander, ready))
    owner.start()
    try:
        assert ready.wait(TIMEOUT)
        os.kill(owner.pid, signal.SIGKILL)
        assert out.get(timeout=TIMEOUT) == "owner gone"
    finally:
        if bystander.value:
            os.kill(bystander.value, signal.SIGKILL)
        owner.join(TIMEOUT)  # its sentinel, too, stays open in the bystander until then


def test_a_consumer_killed_after_forking_a_helper_gives_its_message_back_at_once(
    tmp_path: Path,
) -> None:
    """The owner learns that a consumer died when its connection closes; a child the
    consumer forked (os.fork, not a multiprocessing child) kept that connection open, so
    the message came back only at the visibility timeout (an hour here). A forked child
    closes the client connections it inherits."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    q = durableq.Queue(path=tmp_path / "q", ack="manual", visibility_timeout=3600, ctx=ctx)
    q.put("held")
    grandchild, ready = ctx.Value("i", 0), ctx.Event()
    consumer = ctx.Process(target=hold_then_fork, args=(q, grandchild, ready))
    consumer.start()
    try:
        assert ready.wait(TIMEOUT)
        os.kill(consumer.pid, signal.SIGKILL)
        msg = q.get_message(timeout=TIMEOUT)
        assert (msg.body, msg.attempts) == ("held", 2)
        msg.ack()
    finally:
        if grandchild.value:
            os.kill(grandchild.value, signal.SIGKILL)
        consumer.join(TIMEOUT)
        del q
