"""Put logs (``durableq/store/_putlog.py``): a ``Queue.put`` appends to its process's own
log; the next reader of the store moves it into the message table, exactly once.

Crash cases SIGKILL real producers and count messages by id; damage cases write bytes
into a log the way a torn write or a forger would.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import queue as pyqueue
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq.store import _putlog
from durableq.store._diskcache import DiskcacheStore

from .conftest import TIMEOUT


def logs(path: Path) -> list[Path]:
    d = path / _putlog.DIRECTORY
    return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


def bodies(store: DiskcacheStore) -> list[bytes]:
    """Every ready message's body, in delivery order (moves the logs first)."""
    leased = store.lease("test", 1_000_000, now=store.clock.time(), ttl=60.0)
    return [m.payload for m in leased]


def message_rows(path: Path) -> int:
    con = sqlite3.connect(path / "cache.db")
    try:
        (n,) = con.execute("SELECT count(*) FROM dq_message WHERE length(body) > 0").fetchone()
        return int(n)
    finally:
        con.close()


def put(store: DiskcacheStore, *items: bytes) -> None:
    store.put_quiet(list(items), due=store.clock.time())


# -- the happy path ---------------------------------------------------------------------------


def test_a_put_lands_in_the_log_and_is_moved_once_in_order(qpath: Path) -> None:
    store = DiskcacheStore(qpath)
    put(store, b"a")
    put(store, b"b", b"c")
    assert len(logs(qpath)) == 1 and message_rows(qpath) == 0  # nothing moved yet
    assert store.counts().ready == 3  # a reader moves them first
    assert message_rows(qpath) == 3
    assert bodies(store) == [b"a", b"b", b"c"]
    assert store.counts().ready == 0  # moved once: reading again finds nothing new
    store.close()


def test_a_queue_put_uses_the_log_and_every_message_is_delivered(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    for i in range(50):
        q.put(i)
    q.put_many(range(50, 100))
    assert len(logs(qpath)) == 1
    assert [q.get(timeout=TIMEOUT) for _ in range(100)] == list(range(100))
    q.close()
    q.join_thread()


def test_a_live_writers_log_stays_and_a_closed_ones_goes_once_read(qpath: Path) -> None:
    producer, reader = DiskcacheStore(qpath), DiskcacheStore(qpath)
    put(producer, b"x")
    assert bodies(reader) == [b"x"]
    assert len(logs(qpath)) == 1  # read to its end, but its writer may append more
    put(producer, b"y")
    producer.close()  # the writer's lock goes with it
    assert bodies(reader) == [b"y"]
    assert logs(qpath) == []
    reader.counts()  # the offset row of the deleted log goes on the next read
    con = sqlite3.connect(qpath / "cache.db")
    assert con.execute("SELECT count(*) FROM dq_log").fetchone() == (0,)
    con.close()
    reader.close()


def test_a_large_batch_is_committed_by_its_producer_after_its_earlier_puts(qpath: Path) -> None:
    from durableq.store._diskcache import DIRECT_BATCH

    store = DiskcacheStore(qpath)
    put(store, b"first")
    put(store, *[b"%d" % i for i in range(DIRECT_BATCH)])
    assert message_rows(qpath) == DIRECT_BATCH + 1  # in the table before any read
    assert bodies(store) == [b"first"] + [b"%d" % i for i in range(DIRECT_BATCH)]
    store.close()


def _put_singly(q: durableq.Queue, n: int) -> None:
    for i in range(n):
        q.put(i)


def test_the_owner_takes_in_a_pile_of_puts_while_no_one_waits(qpath: Path) -> None:
    from durableq._client import ANNOUNCE_EVERY

    q = durableq.Queue(path=qpath)
    p = multiprocessing.get_context("fork").Process(
        target=_put_singly, args=(q, ANNOUNCE_EVERY + 10)
    )
    p.start()
    p.join(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while message_rows(qpath) < ANNOUNCE_EVERY and time.monotonic() < deadline:
        time.sleep(0.01)  # bounded: the owner drains on the producer's announcement
    assert message_rows(qpath) >= ANNOUNCE_EVERY  # no get() asked for them
    assert [q.get(timeout=TIMEOUT) for _ in range(ANNOUNCE_EVERY + 10)] == list(
        range(ANNOUNCE_EVERY + 10)
    )
    q.close()
    q.join_thread()


def test_rotation_keeps_each_producers_order(
    qpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_putlog, "ROTATE_BYTES", 200)
    store = DiskcacheStore(qpath)
    for i in range(40):
        put(store, b"%03d" % i)
    assert len(logs(qpath)) > 5
    assert bodies(store) == [b"%03d" % i for i in range(40)]
    assert len(logs(qpath)) == 1  # the rotated-out logs were read and deleted
    store.close()


def test_a_drain_larger_than_its_budget_takes_several_reads_in_order(
    qpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_putlog, "DRAIN_BYTES", 300)
    store = DiskcacheStore(qpath)
    put(store, b"x" * 1000)  # one frame larger than the budget is still read whole
    for i in range(30):
        put(store, b"%03d" % i)
    got: list[bytes] = []
    for _ in range(50):
        got += bodies(store)
        if len(got) == 31:
            break
        store._log_reader._mtime = -1  # type: ignore[union-attr]  # look again
    assert got == [b"x" * 1000] + [b"%03d" % i for i in range(30)]
    store.close()


def test_sync_full_syncs_puts_and_shares_syncs(
    qpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(_putlog.os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    store = DiskcacheStore(qpath, sync="full")
    put(store, b"a")
    assert synced  # put returned after its frame reached the disk
    synced.clear()
    threads = [threading.Thread(target=put, args=(store, b"t%d" % i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= len(synced) <= 8
    assert sorted(bodies(store)) == sorted([b"a"] + [b"t%d" % i for i in range(8)])
    store.close()


def test_a_short_write_raises_and_leaves_nothing_half_stored(
    qpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DiskcacheStore(qpath)
    put(store, b"before")
    real, calls = os.write, []

    def fill_up(fd: int, data: bytes) -> int:  # as a disk filling mid-frame does
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_putlog.os, "write", fill_up)
    with pytest.raises(durableq.StoreError, match="No space left") as raised:
        put(store, b"lost-1", b"lost-2")
    assert isinstance(raised.value.__cause__, OSError) and len(calls) == 2
    monkeypatch.setattr(_putlog.os, "write", real)
    put(store, b"after")
    assert bodies(store) == [b"before", b"after"]
    assert store.faults() == []
    store.close()


def test_a_body_that_is_not_bytes_is_refused(qpath: Path) -> None:
    store = DiskcacheStore(qpath)
    with pytest.raises(durableq.StoreError, match="must be bytes, not str"):
        store.put_quiet(["text"])  # type: ignore[list-item]
    store.close()


# -- crashes ----------------------------------------------------------------------------------


def _produce(q: durableq.Queue, done_log: str, started: Any) -> None:
    fd = os.open(done_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    started.set()
    i = 0
    while True:
        q.put(i)
        os.write(fd, b"%d\n" % i)  # only once put() returned
        i += 1


def test_a_producer_killed_mid_stream_loses_no_returned_put_and_none_comes_twice(
    tmp_path: Path,
) -> None:
    path, done = tmp_path / "q", tmp_path / "done"
    ctx = multiprocessing.get_context("fork")
    owner = durableq.Queue(path=path, serializer="msgpack")
    started = ctx.Event()
    p = ctx.Process(target=_produce, args=(owner, str(done), started))
    p.start()
    assert started.wait(TIMEOUT)
    while not done.exists() or done.stat().st_size < 20_000:
        p.join(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.join(TIMEOUT)
    returned = [int(x) for x in done.read_text().split()]
    values = []
    while True:
        try:
            values.append(owner.get(timeout=1.0))
        except pyqueue.Empty:
            break
    assert values == list(range(len(values)))  # in order, each once
    assert len(returned) <= len(values) <= len(returned) + 1  # the last may have landed
    deadline = time.monotonic() + TIMEOUT
    while logs(path) and time.monotonic() < deadline:
        owner.qsize()  # a read: it looks (once a second) for logs whose writer died
        time.sleep(0.05)
    assert logs(path) == []  # its writer is dead and everything was read: deleted
    owner.close()
    owner.join_thread()


def _put_then_die(path: str, n: int) -> None:
    store = DiskcacheStore(path)
    for i in range(n):
        put(store, b"%d" % i)
    os.kill(os.getpid(), signal.SIGKILL)


def test_two_readers_moving_the_same_logs_move_each_frame_once(tmp_path: Path) -> None:
    path = tmp_path / "q"
    DiskcacheStore(path).close()
    ctx = multiprocessing.get_context("fork")
    producers = [ctx.Process(target=_put_then_die, args=(str(path), 2000)) for _ in range(3)]
    for p in producers:
        p.start()
    stop = threading.Event()

    def read_forever(store: DiskcacheStore) -> None:
        while not stop.is_set():
            store.counts()

    readers = [DiskcacheStore(path) for _ in range(2)]
    threads = [threading.Thread(target=read_forever, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for p in producers:
        p.join(TIMEOUT)
    stop.set()
    for t in threads:
        t.join(TIMEOUT)
    got = bodies(readers[0])
    assert len(got) == 6000
    assert sorted(got) == sorted([b"%d" % i for i in range(2000)] * 3)
    assert logs(path) == []
    for r in readers:
        r.close()


def test_a_reader_whose_offsets_went_stale_reads_again_and_inserts_nothing_twice(
    qpath: Path,
) -> None:
    writer, a, b = DiskcacheStore(qpath), DiskcacheStore(qpath), DiskcacheStore(qpath)
    put(writer, b"x")
    assert a.counts().ready == 1  # a drains x and remembers where it stopped
    put(writer, b"y")
    assert b.counts().ready == 2  # b drains y: a's remembered offset is now stale
    put(writer, b"z")
    assert a.counts().ready == 3  # a's guess fails its check, it rolls back and rereads
    assert bodies(a) == [b"x", b"y", b"z"]
    for s in (writer, a, b):
        s.close()


# -- damage -----------------------------------------------------------------------------------


def _one_log(path: Path) -> Path:
    (log,) = logs(path)
    return log


def test_a_torn_last_frame_of_a_dead_writer_is_dropped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "q"
    writer = DiskcacheStore(path)
    put(writer, b"whole")
    put(writer, b"torn" * 100)
    log = _one_log(path)
    writer.close()
    size = log.stat().st_size
    with open(log, "r+b") as f:
        f.truncate(size - 50)  # as a power cut mid-write would leave it
    store = DiskcacheStore(path)
    assert bodies(store) == [b"whole"]
    (fault,) = store.faults()
    assert "incomplete last frame" in fault.detail and log.name in fault.detail
    assert logs(path) == []
    store.close()


def test_an_incomplete_frame_of_a_live_writer_waits(qpath: Path) -> None:
    writer, reader = DiskcacheStore(qpath), DiskcacheStore(qpath)
    put(writer, b"first")
    log = _one_log(qpath)
    header, payload = _putlog.encode_rows([(1, 0.0, 0.0, b"half", None, None, None)])
    with open(log, "ab") as f:
        f.write(header + payload[:5])  # a write still in progress, as a reader may see it
    assert bodies(reader) == [b"first"]
    assert reader.faults() == [] and logs(qpath) == [log]
    writer.close()
    reader.close()


def test_a_forged_or_moved_frame_is_never_inserted(qpath: Path) -> None:
    store = DiskcacheStore(qpath)
    put(store, b"good")
    put(store, b"evil")
    log = _one_log(qpath)
    store.close()
    data = bytearray(log.read_bytes())
    data[-40] ^= 0xFF  # inside the second frame's body
    log.write_bytes(bytes(data))
    store = DiskcacheStore(qpath)
    assert bodies(store) == [b"good"]
    (fault,) = store.faults()
    assert fault.kind == "quarantined" and "fails its check (bad MAC)" in fault.detail
    store.close()


def test_a_frame_copied_into_another_log_fails_its_check(qpath: Path) -> None:
    a = DiskcacheStore(qpath)
    put(a, b"once")
    (log_a,) = logs(qpath)
    frame = log_a.read_bytes()
    b = DiskcacheStore(qpath)
    put(b, b"b-own")
    log_b = next(p for p in logs(qpath) if p != log_a)
    with open(log_b, "ab") as f:
        f.write(frame)  # a valid frame replayed elsewhere
    a.close()
    b.close()
    store = DiskcacheStore(qpath)
    assert sorted(bodies(store)) == [b"b-own", b"once"]
    assert any("bad MAC" in f.detail for f in store.faults())
    store.close()


def test_a_forked_child_writes_a_log_of_its_own(qpath: Path) -> None:
    store = DiskcacheStore(qpath)
    put(store, b"parent-1")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            put(store, b"child")
            store.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    put(store, b"parent-2")
    assert len(logs(qpath)) == 2
    got = bodies(store)
    assert sorted(got) == [b"child", b"parent-1", b"parent-2"]
    assert got.index(b"parent-1") < got.index(b"parent-2")
    assert len(logs(qpath)) == 1  # the child's (closed, read) went; ours stays
    store.close()


def test_a_lease_trusts_a_row_it_just_signed_only_while_the_row_is_unchanged(
    qpath: Path,
) -> None:
    # The owner signs the rows it moves; leasing them soon after compares bytes instead of
    # computing each MAC again, which must give the same verdict: a row changed on disk
    # in between (body replaced, MAC kept) is quarantined, the others go out.
    store = DiskcacheStore(qpath)
    put(store, b"one", b"two", b"three")
    store.ingest()
    assert len(store._fresh) == 3
    con = sqlite3.connect(qpath / "cache.db")
    con.execute("UPDATE dq_message SET body = ? WHERE body = ?", (b"evil", b"two"))
    con.commit()
    con.close()
    assert bodies(store) == [b"one", b"three"]
    assert store._fresh == {}  # each remembered row is compared once, then forgotten
    assert store.counts().quarantined == 1
    (fault,) = store.faults()
    assert fault.kind == "quarantined"
    store.close()


def test_a_backlog_past_the_remembered_rows_keeps_the_oldest_ones_cheap(
    qpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leases take the oldest rows first: once the owner remembers FRESH_MAX rows, newer
    # ones are the ones checked the long way (it used to forget everything and then miss
    # the very rows leased next), and a lease that finds none of its rows there empties it.
    from durableq.store import _integrity

    monkeypatch.setattr(_integrity, "FRESH_MAX", 50)
    checked: list[int] = []
    real = _integrity.message_ok
    monkeypatch.setattr(_integrity, "message_ok",
                        lambda key, id_, *rest: checked.append(id_) or real(key, id_, *rest))
    store = DiskcacheStore(qpath)
    for k in range(3):  # three drains of 40
        put(store, *[b"%d" % (40 * k + i) for i in range(40)])
        store.ingest()
    assert len(store._fresh) == 50
    assert len(store.lease("t", 60, now=store.clock.time(), ttl=60.0)) == 60
    assert checked == list(range(51, 61)), "only rows past the first 50 took the long way"
    assert store._fresh == {}
    put(store, *[b"x"] * 60)  # remembered: 50 of them
    store.ingest()
    store.lease("t", 60, now=store.clock.time(), ttl=60.0)  # the other 60 of the backlog
    assert len(store._fresh) == 0, "a lease with no remembered row cleared it"
    store.close()


def _on_cue(q: durableq.Queue, conn: Any, k: int) -> None:
    while (i := conn.recv()) is not None:
        q.put((i, k))


def test_producers_that_stay_quiet_behind_anothers_put_notice_lose_no_wakeup(
    qpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain put says nothing while another producer's PUT is on its way; the owner's
    # round for that PUT drains every log. Here three producers put at once into an empty
    # queue a consumer waits on, round after round: each round needs a wakeup, and with
    # the safety re-check off a lost one leaves the consumer waiting until TIMEOUT.
    from durableq import _dispatcher

    monkeypatch.setattr(_dispatcher, "SAFETY_CHECK", 3600.0)
    ctx = multiprocessing.get_context("fork")
    q = durableq.Queue(path=qpath, ctx=ctx)
    cues = [ctx.Pipe() for _ in range(3)]
    procs = [ctx.Process(target=_on_cue, args=(q, theirs, k)) for k, (_, theirs) in
             enumerate(cues)]
    for p in procs:
        p.start()
    rounds = 200
    got: list[Any] = []
    taken = threading.Semaphore(0)

    def consume() -> None:
        for _ in range(3 * rounds):
            got.append(q.get(timeout=TIMEOUT))
            taken.release()

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(rounds):
        # Cue only once the consumer waits on an empty queue: every round needs a wakeup.
        deadline = time.monotonic() + TIMEOUT
        while not q._shared.hungry.value and time.monotonic() < deadline:
            time.sleep(0.0002)
        for ours, _ in cues:
            ours.send(i)
        for _ in cues:
            assert taken.acquire(timeout=TIMEOUT), f"round {i}: a wakeup was lost"
    consumer.join(TIMEOUT)
    for ours, _ in cues:
        ours.send(None)
    for p in procs:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    assert sorted(got) == [(i, k) for i in range(rounds) for k in range(3)]
    q.close()


def test_a_producer_killed_after_raising_the_flag_delays_others_one_round_at_most(
    qpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flag left set (its PUT never sent) silences the next plain put until the
    # owner's next round, here the safety re-check; that round clears it, and the put
    # after it wakes the consumer at once again.
    from durableq import _dispatcher

    monkeypatch.setattr(_dispatcher, "SAFETY_CHECK", 0.5)
    q = durableq.Queue(path=qpath)
    got: list[Any] = []
    waiting = threading.Thread(target=lambda: got.append(q.get(timeout=TIMEOUT)))
    waiting.start()
    deadline = time.monotonic() + TIMEOUT
    while not q._shared.hungry.value and time.monotonic() < deadline:
        time.sleep(0.001)
    q._shared.announced.value = 1  # as a producer killed right after raising it
    q.put("late")
    waiting.join(TIMEOUT)
    assert got == ["late"]  # found by the next round, not lost
    assert q._shared.announced.value == 0
    q.close()


class _CountingStore(DiskcacheStore):
    ticks = 0

    def tick(self, now: float) -> list[int]:
        type(self).ticks += 1
        return super().tick(now)


def test_a_stream_of_plain_puts_does_not_make_the_owner_tick(qpath: Path) -> None:
    # tick applies deadline bumps and expiries; plain messages have neither. An owner
    # that set its tick timer from next_due (which reports due times too) woke for each
    # message put a moment after it read the clock, and ticked round after round.
    store = _CountingStore(qpath)
    q = durableq.Queue(store=store)
    try:
        producer = threading.Thread(target=lambda: [q.put(i) for i in range(3000)])
        producer.start()
        assert [q.get(timeout=TIMEOUT) for _ in range(3000)] == list(range(3000))
        producer.join(TIMEOUT)
        assert _CountingStore.ticks <= 2, _CountingStore.ticks  # the one at start, at most
    finally:
        q.close()


def test_the_collector_waits_out_a_producers_lock_instead_of_giving_up(qpath: Path) -> None:
    """A producer committing batches holds the message file's lock often; a collector that
    gave up on it left acked rows piling up, and every lease walked past them."""
    from durableq.store._diskcache import GC_BATCH

    store = DiskcacheStore(qpath)
    store.put_many([b"x"] * GC_BATCH)
    leased = store.lease("test", GC_BATCH, now=store.clock.time(), ttl=60.0)
    producer = sqlite3.connect(qpath / "cache.db", timeout=0, isolation_level=None)
    producer.execute("BEGIN IMMEDIATE")  # a producer's commit in progress
    store.ack([m.token for m in leased])  # GC_BATCH acks: the helper thread collects them
    job = store._collector
    assert job is not None
    assert not job.done.wait(0.2), "the collector gave up on the lock"
    producer.execute("COMMIT")
    assert job.done.wait(TIMEOUT)
    store.collect()  # drops the ledger entries of what the helper moved
    con = sqlite3.connect(qpath / "cache.db")
    (kept,) = con.execute("SELECT count(*) FROM dq_message WHERE finished IS NOT NULL").fetchone()
    con.close()
    assert kept == GC_BATCH, "every acked row is history now"
    store.close()


def test_a_collection_never_undoes_a_repair_made_while_it_waited(qpath: Path) -> None:
    """A busy owner's collector waits for the message file's lock; a repair in another
    process may collect and revive a dead message meanwhile. Moving rows read before the
    lock buried the revived message, and dropping their ledger entries after its
    redelivery was acked brought it back a third time: it is delivered exactly once more."""
    owner = DiskcacheStore(qpath)
    owner.put_many([b"x"])
    (first,) = owner.lease("test", 1, now=owner.clock.time(), ttl=60.0)
    owner.nack([first.token], requeue=False)  # dead, in the ledger, not yet collected
    before = owner._finished_rows()  # the ledger as the collector found it, unlocked
    repair = DiskcacheStore.attach(qpath)
    assert repair.revive(None, now=repair.clock.time()) == [first.token.id]
    assert owner._move(wait=True) == [], "what the ledger holds once the lock is ours"
    again = owner.lease("test", 5, now=owner.clock.time(), ttl=60.0)
    assert [(m.token.id, m.token.attempt) for m in again] == [(first.token.id, 2)], "buried"
    owner.ack([again[0].token])
    owner._unledger(before)  # a late drop of entries read before the repair
    assert owner.lease("test", 5, now=owner.clock.time(), ttl=60.0) == [], "back again"
    assert owner.collect() == 1
    assert owner.lease("test", 5, now=owner.clock.time(), ttl=60.0) == []
    con = sqlite3.connect(qpath / "cache.db")
    assert con.execute("SELECT state FROM dq_message").fetchall() == [(int(durableq.State.DONE),)]
    con.close()
    repair.close()
    owner.close()
