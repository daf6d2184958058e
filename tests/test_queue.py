"""durableq.Queue's own behaviour beyond the stdlib's: acks, ownership, faults, stores."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import MemoryStore

from .conftest import TIMEOUT


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("no pickling here")


# -- children (module level so spawn can import them) -----------------------------------


def put_all(q: durableq.Queue, items: Sequence[Any]) -> None:
    for item in items:
        q.put(item)


def take_one_and_exit(q: durableq.Queue, got: Any) -> None:
    got.put(q.get(timeout=TIMEOUT))


def take_one_and_die(q: durableq.Queue, got: Any) -> None:
    got.put(q.get(timeout=TIMEOUT) if q._shared.ack != "manual" else q.get_message().body)
    got.close()
    got.join_thread()  # flush the stdlib queue's feeder thread before dying
    os.kill(os.getpid(), 9)


def own_until(path: str, ready: Any, release: Any) -> None:
    q = durableq.Queue(path=path)
    q.put("from the first owner")
    ready.set()
    release.wait(TIMEOUT)


def try_to_open(path: str, result: Any) -> None:
    try:
        durableq.Queue(path=path)
        result.put("opened")
    except durableq.QueueLocked as exc:
        result.put(f"locked by {exc.pid}")


def initializer(q: durableq.Queue) -> None:
    global _init_queue
    _init_queue = q


def put_from_pool_worker(x: int) -> int:
    _init_queue.put(x * 10)
    return x


def take_in_child(q: durableq.Queue, target: Any) -> tuple[Any, int | None]:
    """Run ``target(q, got)`` in a child process; once it ended, return what it reported
    and its pid."""
    got = multiprocessing.Queue()
    p = multiprocessing.Process(target=target, args=(q, got))
    p.start()
    value = got.get(timeout=TIMEOUT)
    p.join(TIMEOUT)
    return value, p.pid


# -- basics -------------------------------------------------------------------------------


def test_fifo_round_trip_of_plain_and_pickled_objects(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    items = [None, 1, "two", b"3", (4, 5), [6], {"7": 8}, Path("/nine"), 2**80]
    for item in items:
        q.put(item)
    assert [q.get(timeout=TIMEOUT) for _ in items] == items
    assert q.empty() and q.qsize() == 0


def test_put_many_commits_a_batch(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put_many(range(100))
    assert q.qsize() == 100
    assert [q.get(timeout=TIMEOUT) for _ in range(100)] == list(range(100))


def test_unserializable_put_raises_and_stores_nothing(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    with pytest.raises(TypeError, match="no pickling"):
        q.put(Unpicklable())
    with pytest.raises(TypeError):
        q.put_many([1, Unpicklable()])
    assert q.qsize() == 0


def test_msgpack_serializer_refuses_objects_at_put(qpath: Path) -> None:
    q = durableq.Queue(path=qpath, serializer="msgpack")
    with pytest.raises(TypeError, match="PosixPath"):
        q.put(Path("/x"))
    q.put({"ok": (1, 2)})
    assert q.get(timeout=TIMEOUT) == {"ok": (1, 2)}


def test_closed_queue_refuses_put_and_get(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.put(1)
    with pytest.raises(ValueError, match="is closed"):
        q.get()
    q.join_thread()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ack": "sometimes"}, "ack must be one of"),
        ({"visibility_timeout": 0}, "visibility_timeout must be > 0"),
        ({"store": MemoryStore(), "path": "x"}, "path= or store="),
        ({"serializer": "yaml"}, "unknown serializer"),
        ({"sync": "never"}, "sync must be"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    kwargs.setdefault("path", tmp_path / "q") if "store" not in kwargs else None
    with pytest.raises(ValueError, match=match):
        durableq.Queue(**kwargs)


def test_sync_full_round_trip(qpath: Path) -> None:
    q = durableq.Queue(path=qpath, sync="full")
    q.put_many(["a", "b"])
    assert [q.get(timeout=TIMEOUT), q.get(timeout=TIMEOUT)] == ["a", "b"]


def test_stats_reports_counts_and_totals(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put_many([1, 2, 3])
    q.get(timeout=TIMEOUT)
    q.get(timeout=TIMEOUT)  # acks the first
    stats = q.stats()
    # The consumer may have fetched the third message into its buffer already (in flight).
    assert stats["ready"] + stats["in_flight"] == 2
    assert (stats["put_total"], stats["acked_total"]) == (3, 1)
    assert q.qsize() == 1 and not q.empty()
    assert q.get(timeout=TIMEOUT) == 3
    assert q.qsize() == 0 and q.empty()


# -- ack modes ----------------------------------------------------------------------------


def test_auto_mode_acks_on_next_get_and_on_clean_exit(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put_many(["a", "b"])
    got, _ = take_in_child(q, take_one_and_exit)
    assert got == "a"
    assert q.get(timeout=TIMEOUT) == "b", "a clean exit acks: 'a' must not come back"
    assert q.stats()["acked_total"] == 1


def test_manual_mode_ack_nack_and_context_manager(qpath: Path) -> None:
    # demote=False: a nacked message keeps its place (the default moves it a band down)
    q = durableq.Queue(path=qpath, ack="manual", retry=durableq.RetryPolicy(demote=False))
    q.put_many(["a", "b", "c"])
    with pytest.raises(ValueError, match="get_message"):
        q.get()
    a = q.get_message(timeout=TIMEOUT)
    assert (a.body, a.attempts) == ("a", 1)
    a.nack()
    a2 = q.get_message(timeout=TIMEOUT)
    assert (a2.id, a2.body, a2.attempts) == (a.id, "a", 2)
    a2.ack()
    with pytest.raises(ValueError, match="already"):
        a2.ack()
    with q.get_message(timeout=TIMEOUT) as b:
        assert b.body == "b"
    with pytest.raises(RuntimeError), q.get_message(timeout=TIMEOUT):
        raise RuntimeError("work failed")
    c_again = q.get_message(timeout=TIMEOUT)
    assert (c_again.body, c_again.attempts) == ("c", 2)
    c_again.nack(requeue=False)
    stats = q.stats()
    assert (stats["acked_total"], stats["dead"], stats["ready"]) == (2, 1, 0)


def test_on_get_mode_is_at_most_once(qpath: Path) -> None:
    q = durableq.Queue(path=qpath, ack="on_get")
    q.put("lost with its consumer")
    got, _ = take_in_child(q, take_one_and_die)
    assert got == "lost with its consumer"
    q.put("after")
    assert q.get(timeout=TIMEOUT) == "after"


def test_stale_ack_after_visibility_timeout_is_ignored_and_counted(qpath: Path) -> None:
    q = durableq.Queue(path=qpath, ack="manual", visibility_timeout=0.2)
    q.put("slow")
    slow = q.get_message(timeout=TIMEOUT)
    box: list[durableq.Message[Any]] = []
    t = threading.Thread(target=lambda: box.append(q.get_message(timeout=TIMEOUT)))
    t.start()
    t.join(TIMEOUT)
    redelivered = box[0]
    assert (redelivered.id, redelivered.attempts) == (slow.id, 2)
    slow.ack()  # too late: the lease moved on
    stats = q.stats()
    assert (stats["stale_acks"], stats["acked_total"], stats["expired_leases"]) == (1, 0, 1)
    redelivered.ack()
    assert q.stats()["acked_total"] == 1


def test_joinable_queue_task_done_and_join(qpath: Path) -> None:
    q = durableq.JoinableQueue(path=qpath)
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    q.put_many([1, 2])
    assert q.get(timeout=TIMEOUT) == 1
    assert q.get(timeout=TIMEOUT) == 2
    done = threading.Event()
    joiner = threading.Thread(target=lambda: (q.join(), done.set()))
    joiner.start()
    q.task_done()
    assert not done.wait(0.2), "join() returned with a task still unfinished"
    q.task_done()
    joiner.join(TIMEOUT)
    assert done.is_set()


# -- recovery, faults, ownership ----------------------------------------------------------


def test_consumer_death_redelivers_and_sets_fault(qpath: Path) -> None:
    q = durableq.Queue(path=qpath, ack="manual")
    q.put("work")
    got, pid = take_in_child(q, take_one_and_die)
    assert got == "work"
    msg = q.get_message(timeout=TIMEOUT)
    assert (msg.body, msg.attempts) == ("work", 2)
    assert q.fault.wait(TIMEOUT)
    assert [f.kind for f in q.faults()] == ["consumer-died"]
    assert str(pid) in q.faults()[0].detail
    msg.ack()


def test_second_owner_is_refused_in_process_and_across_processes(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    with pytest.raises(durableq.QueueLocked, match="owned by process"):
        durableq.Queue(path=qpath)
    result = multiprocessing.Queue()
    p = multiprocessing.Process(target=try_to_open, args=(str(qpath), result))
    p.start()
    assert result.get(timeout=TIMEOUT) == f"locked by {os.getpid()}"
    p.join(TIMEOUT)
    del q


def test_wait_for_owner_takes_over_when_the_owner_exits(qpath: Path) -> None:
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    owner = multiprocessing.Process(target=own_until, args=(str(qpath), ready, release))
    owner.start()
    assert ready.wait(TIMEOUT)
    box: list[durableq.Queue] = []
    opener = threading.Thread(
        target=lambda: box.append(durableq.Queue(path=qpath, wait_for_owner=True))
    )
    opener.start()
    release.set()
    opener.join(TIMEOUT)
    owner.join(TIMEOUT)
    assert box[0].get(timeout=TIMEOUT) == "from the first owner"


def test_temporary_directory_is_removed_with_the_owner() -> None:
    q = durableq.Queue()
    path = q.path
    q.put(1)
    assert os.path.isdir(path)
    del q
    gc.collect()
    assert not os.path.exists(path)


class FailingStore(durableq.DiskcacheStore):
    fail = False

    def put_many(self, payloads: Any, **kw: Any) -> list[int]:
        if self.fail:
            raise durableq.StoreError("disk full (simulated)")
        return super().put_many(payloads, **kw)

    def put_quiet(self, payloads: Any, **kw: Any) -> None:
        if self.fail:
            raise durableq.StoreError("disk full (simulated)")
        super().put_quiet(payloads, **kw)


def test_store_failure_raises_sets_fault_and_stores_nothing(tmp_path: Path) -> None:
    store = FailingStore(tmp_path / "q")
    q = durableq.Queue(store=store)
    q.put("before")
    store.fail = True
    with pytest.raises(durableq.StoreError, match="disk full"):
        q.put("during")
    assert q.fault.is_set()
    assert "store-failed" in [f.kind for f in q.faults()]
    store.fail = False
    q.put("after")
    assert [q.get(timeout=TIMEOUT), q.get(timeout=TIMEOUT)] == ["before", "after"]


# -- sharing with children ----------------------------------------------------------------


def test_fifo_per_producer_across_processes(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    producers = [
        multiprocessing.Process(target=put_all, args=(q, [(n, i) for i in range(200)]))
        for n in range(2)
    ]
    for p in producers:
        p.start()
    got = [q.get(timeout=TIMEOUT) for _ in range(400)]
    for p in producers:
        p.join(TIMEOUT)
    for n in range(2):
        assert [i for m, i in got if m == n] == list(range(200))


def test_queue_passes_through_a_pool_initializer(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    with multiprocessing.Pool(2, initializer=initializer, initargs=(q,)) as pool:
        assert sorted(pool.map(put_from_pool_worker, range(4))) == [0, 1, 2, 3]
    assert sorted(q.get(timeout=TIMEOUT) for _ in range(4)) == [0, 10, 20, 30]


def test_memory_store_serves_other_processes_through_the_owner() -> None:
    q = durableq.Queue(store=MemoryStore())
    p = multiprocessing.Process(target=put_all, args=(q, ["x", "y"]))
    p.start()
    p.join(TIMEOUT)
    got, _ = take_in_child(q, take_one_and_exit)
    assert got == "x"
    assert q.get(timeout=TIMEOUT) == "y"
    assert q.stats()["acked_total"] == 1


def _put_then_count(q: durableq.Queue, n: int, conn: Any) -> None:
    for i in range(n):
        q.put(i)
    conn.send(q.qsize())  # after its own puts, on the same connection: all counted


def test_memory_store_puts_from_another_process_are_handed_over_in_order() -> None:
    # Nothing in a MemoryStore outlives its owner, so a producer elsewhere hands its puts
    # over one-way (as mp.Queue's feeder does) instead of waiting for each to be stored;
    # its own later read still counts them, and order per producer holds.
    q = durableq.Queue(store=MemoryStore())
    assert q._shared.hand_over
    here, there = multiprocessing.Pipe()
    p = multiprocessing.Process(target=_put_then_count, args=(q, 500, there))
    p.start()
    assert here.poll(TIMEOUT) and here.recv() == 500
    p.join(TIMEOUT)
    assert [q.get(timeout=TIMEOUT) for _ in range(500)] == list(range(500))
    q.close()


class _HeldMemoryStore(MemoryStore):
    """Stores nothing until ``release`` is set (the owner stays behind its producers)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def put_many(self, payloads: Sequence[bytes], **kw: Any) -> list[int]:
        assert self.release.wait(TIMEOUT)
        return super().put_many(payloads, **kw)


def test_a_producer_that_handed_puts_over_leaves_only_once_they_are_stored() -> None:
    # The idiom "join the producers, then put a sentinel" must find every producer's puts
    # ahead of the sentinel, as with mp.Queue (whose feeder flushes at exit).
    store = _HeldMemoryStore()
    q = durableq.Queue(store=store)
    p = multiprocessing.Process(target=put_all, args=(q, list(range(10))))
    p.start()
    p.join(0.5)
    assert p.is_alive()  # its exit waits for the owner to store what it handed over
    store.release.set()
    p.join(TIMEOUT)
    assert p.exitcode == 0
    q.put("STOP")
    assert [q.get(timeout=TIMEOUT) for _ in range(11)] == [*range(10), "STOP"]
    q.close()


def _put_and_cancel_join(q: durableq.Queue, items: Sequence[Any]) -> None:
    for item in items:
        q.put(item)
    q.cancel_join_thread()


def test_cancel_join_thread_lets_a_producer_leave_without_waiting_for_the_owner() -> None:
    # As with mp.Queue: after cancel_join_thread() a producer exits at once, even while
    # the owner has not yet stored what it handed over; the owner stores it later.
    store = _HeldMemoryStore()
    q = durableq.Queue(store=store)
    p = multiprocessing.Process(target=_put_and_cancel_join, args=(q, list(range(5))))
    p.start()
    p.join(TIMEOUT)
    assert p.exitcode == 0  # left while its puts still waited in the owner
    store.release.set()
    assert [q.get(timeout=TIMEOUT) for _ in range(5)] == list(range(5))
    q.close()


class _RefusingMemoryStore(MemoryStore):
    def put_many(self, payloads: Sequence[bytes], **kw: Any) -> list[int]:
        raise durableq.StoreError("full (simulated)")


def test_a_handed_over_put_the_store_refuses_is_a_fault_not_a_silence() -> None:
    q = durableq.Queue(store=_RefusingMemoryStore())
    p = multiprocessing.Process(target=put_all, args=(q, ["x"]))
    p.start()
    p.join(TIMEOUT)
    assert q.fault.wait(TIMEOUT)
    kinds = [f.kind for f in q.faults()]
    assert "put-failed" in kinds and "store-failed" in kinds
    assert any("1 put(s)" in f.detail for f in q.faults() if f.kind == "put-failed")
    q.close()


def test_a_durable_store_still_answers_each_put_through_the_owner(qpath: Path) -> None:
    # sync="full" routes puts through the owner for group commit: those wait for it.
    q = durableq.Queue(path=qpath, sync="full")
    assert q._shared.via_owner and not q._shared.hand_over
    q.close()


def test_a_stranger_on_the_socket_is_dropped_before_anything_is_unpickled(
    qpath: Path, tmp_path: Path
) -> None:
    import pickle

    from durableq import _wire

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> Any:
            return (open, (str(marker), "w"))

    q = durableq.Queue(path=qpath)
    q.put("safe")
    evil = _wire.connect(q._shared.address)
    evil.send_bytes(pickle.dumps((_wire.WANT, Exploit())))  # no hello: a pickle instead
    wrong = _wire.connect(q._shared.address)
    wrong.send_bytes(b"\0" * _wire.HELLO_SIZE)  # right shape, wrong secret
    with contextlib.suppress(BrokenPipeError):  # the owner may hang up first
        wrong.send((_wire.WANT, 1, [], False))
    for conn in (evil, wrong):
        assert conn.poll(TIMEOUT)
        with pytest.raises((EOFError, ConnectionResetError)):
            conn.recv_bytes()  # the owner hung up on it
        conn.close()
    assert not marker.exists()
    assert q.get(timeout=TIMEOUT) == "safe"


class FlakyAckStore(durableq.DiskcacheStore):
    failing = False

    def ack(self, tokens: Any) -> int:
        if self.failing:
            raise durableq.StoreError("I/O error (simulated)")
        return super().ack(tokens)


def test_acks_the_store_refuses_are_kept_and_applied_once_it_recovers(tmp_path: Path) -> None:
    store = FlakyAckStore(tmp_path / "q")
    q = durableq.Queue(store=store, ack="manual")
    q.put_many(["a", "b"])
    msg = q.get_message(timeout=TIMEOUT)
    store.failing = True
    msg.ack()
    with pytest.raises(durableq.StoreError, match="I/O error"):
        q.stats()  # the owner reports the failing store instead of dying
    assert q.fault.is_set()
    assert "store-failed" in [f.kind for f in q.faults()]
    store.failing = False
    assert q.stats()["acked_total"] == 1, "the refused ack was kept and applied"
    assert q.get_message(timeout=TIMEOUT).body == "b", "the owner still serves"


def test_an_undecodable_message_is_buried_and_reported(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q._owner_store.put_many([b"\x09not a payload"])
    q.put("next")
    with pytest.raises(durableq.DurableQError, match="cannot be deserialized"):
        q.get(timeout=TIMEOUT)
    assert q.get(timeout=TIMEOUT) == "next"
    assert q.fault.is_set()
    assert "undecodable-message" in [f.kind for f in q.faults()]
    assert q.stats()["dead"] == 1
