"""One contract, every store: the Store protocol's promises, tested verb by verb.

Server stores added later subclass ``StoreContract`` and provide ``make_store``.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from durableq import (
    DiskcacheStore,
    Failure,
    LeaseToken,
    ManualClock,
    MemoryStore,
    Priority,
    RetryPolicy,
    State,
    Store,
    StoreError,
)
from durableq._policy import FailedAttempt, Retention

T0 = 1_000.0


class StoreContract:
    def make_store(self, tmp_path: Path) -> Store:
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        s = self.make_store(tmp_path)
        yield s
        s.close()

    def test_implements_the_protocol(self, store: Store) -> None:
        assert isinstance(store, Store)

    def test_put_returns_increasing_ids(self, store: Store) -> None:
        a = store.put_many([b"a", b"b"])
        b = store.put_many([b"c"])
        assert len(a) == 2 and a[0] < a[1] < b[0]

    def test_lease_is_fifo_and_counts_attempts(self, store: Store) -> None:
        ids = store.put_many([b"1", b"2", b"3"])
        leased = store.lease("me", 2, now=T0, ttl=30)
        assert [x.payload for x in leased] == [b"1", b"2"]
        assert [x.token for x in leased] == [LeaseToken(ids[0], 1), LeaseToken(ids[1], 1)]

    def test_leased_message_is_invisible_until_released(self, store: Store) -> None:
        store.put_many([b"x"])
        (first,) = store.lease("me", 5, now=T0, ttl=30)
        assert store.lease("me", 5, now=T0, ttl=30) == []
        assert not store.has_ready(T0)
        assert store.nack([first.token], requeue=True) == 1
        (again,) = store.lease("me", 5, now=T0, ttl=30)
        assert again.payload == b"x" and again.token.attempt == 2

    def test_priority_then_due_then_id(self, store: Store) -> None:
        store.put_many([b"low"], priority=Priority.LOW)
        store.put_many([b"later"], due=T0 + 10)
        store.put_many([b"medium"])
        store.put_many([b"high"], priority=Priority.HIGH)
        assert [x.payload for x in store.lease("me", 9, now=T0, ttl=30)] == [
            b"high", b"medium", b"low",
        ]
        assert [x.payload for x in store.lease("me", 9, now=T0 + 10, ttl=30)] == [b"later"]

    def test_ack_finishes_and_stale_tokens_are_ignored(self, store: Store) -> None:
        store.put_many([b"x"])
        (leased,) = store.lease("me", 1, now=T0, ttl=30)
        assert store.ack([leased.token]) == 1
        assert store.ack([leased.token]) == 0, "a second ack must be ignored"
        assert store.lease("me", 1, now=T0, ttl=30) == []
        counts = store.counts()
        assert (counts.ready, counts.in_flight, counts.acked_total) == (0, 0, 1)

    def test_ack_with_an_older_attempt_is_stale(self, store: Store) -> None:
        store.put_many([b"x"])
        (first,) = store.lease("me", 1, now=T0, ttl=5)
        assert store.requeue_expired(T0 + 6) == 1
        (second,) = store.lease("me", 1, now=T0 + 6, ttl=5)
        assert store.ack([first.token]) == 0, "the slow consumer's ack must not count"
        assert store.ack([second.token]) == 1

    def test_requeue_expired_leaves_live_leases(self, store: Store) -> None:
        store.put_many([b"a", b"b"])
        store.lease("me", 1, now=T0, ttl=5)
        store.lease("me", 1, now=T0 + 3, ttl=5)
        assert store.requeue_expired(T0 + 6) == 1
        assert store.counts().in_flight == 1
        assert [x.payload for x in store.lease("me", 5, now=T0 + 6, ttl=5)] == [b"a"]

    def test_nack_without_requeue_keeps_the_message_as_dead(self, store: Store) -> None:
        store.put_many([b"x"])
        (leased,) = store.lease("me", 1, now=T0, ttl=30)
        assert store.nack([leased.token], requeue=False) == 1
        counts = store.counts()
        assert (counts.ready, counts.in_flight, counts.dead) == (0, 0, 1)

    def test_counts(self, store: Store) -> None:
        store.put_many([b"a", b"b", b"c"])
        store.lease("me", 1, now=T0, ttl=30)
        counts = store.counts()
        assert (counts.ready, counts.in_flight, counts.put_total) == (2, 1, 3)

    def test_results_are_kept_with_the_ack_until_forgotten(self, store: Store) -> None:
        store.put_many([b"a", b"b", b"c"])
        a, b, c = store.lease("me", 3, now=T0, ttl=30)
        assert store.ack([a.token, b.token], results=[b"ra", b"rb"]) == 2
        assert store.nack([c.token], requeue=False, results=[b"rc"]) == 1
        assert store.ack([a.token], results=[b"late"]) == 0, "a stale ack must not keep a result"
        assert store.results(upto=2) == {1: b"ra", 2: b"rb"}
        assert store.results(upto=99) == {1: b"ra", 2: b"rb", 3: b"rc"}
        assert store.results_of([3, 1, 42]) == {1: b"ra", 3: b"rc"}
        assert store.results_of([]) == {}
        assert store.forget([1, 3, 42]) == 2
        assert store.results(upto=99) == {2: b"rb"}
        assert store.results_of([1, 2, 3]) == {2: b"rb"}

    def test_unfinished_lists_ready_and_in_flight_ids(self, store: Store) -> None:
        store.put_many([b"a", b"b", b"c", b"d"])
        a, b = store.lease("me", 2, now=T0, ttl=30)
        store.ack([a.token])
        assert store.unfinished(upto=3) == [2, 3]
        store.nack([b.token], requeue=False)
        assert store.unfinished(upto=99) == [3, 4]

    def test_discard_removes_only_ready_messages(self, store: Store) -> None:
        store.put_many([b"a", b"b", b"c"])
        (a,) = store.lease("me", 1, now=T0, ttl=30)
        assert store.discard([1, 2, 77]) == 1, "in-flight 1 stays, 2 goes, 77 never existed"
        assert [x.payload for x in store.lease("me", 9, now=T0, ttl=30)] == [b"c"]
        assert store.ack([a.token]) == 1
        assert not store.has_ready(T0)
        counts = store.counts()
        assert (counts.ready, counts.in_flight, counts.acked_total) == (0, 1, 1)

    def test_faults_are_logged_in_order(self, store: Store) -> None:
        from durableq import Fault

        store.record_fault(Fault("a", 1.0, "first"))
        store.record_fault(Fault("b", 2.0, "second"))
        assert [f.kind for f in store.faults()] == ["a", "b"]


    # -- failure policy, dates and history ----------------------------------------------------

    def _failure(self, token: LeaseToken, cause: str = "error") -> Failure:
        return Failure(T0, token.id, "task", token.attempt, cause, "E", "msg 1", "tb", 7)

    def test_fail_retries_under_the_policy_then_buries_with_the_result(self, store: Store) -> None:
        store.clock = ManualClock(T0)
        (id_,) = store.put_many([b"x"], due=T0)
        policy = RetryPolicy(retries=1, backoff=10, jitter=False)
        (a,) = store.lease("me", 1, now=T0, ttl=30)
        (v,) = store.fail([FailedAttempt(a.token, "error", policy, self._failure(a.token))],
                          now=T0)
        assert v is not None and v.retry and v.due == T0 + 10 and v.priority == Priority.LOW
        assert store.lease("me", 1, now=T0 + 9, ttl=30) == []
        (b,) = store.lease("me", 1, now=T0 + 10, ttl=30)
        (v2,) = store.fail(
            [FailedAttempt(b.token, "error", policy, self._failure(b.token), result=b"out")],
            now=T0 + 10,
        )
        assert v2 is not None and not v2.retry and v2.failures == 2
        assert store.fail([FailedAttempt(b.token, "error", policy)], now=T0) == [None]  # stale
        (dead,) = store.records([State.DEAD])
        assert (dead.id, dead.body, dead.attempts) == (id_, b"x", 2)
        assert store.results(id_) == {id_: b"out"}
        assert [(f.id, f.attempt, f.cause) for f in store.failures()] == [
            (id_, 1, "error"), (id_, 2, "error"),
        ]
        assert store.counts().dead == 1

    def test_budgets_per_cause_are_separate(self, store: Store) -> None:
        store.put_many([b"x"], due=T0)
        policy = RetryPolicy(retries=0, max_attempts=2, demote=False)
        (a,) = store.lease("me", 1, now=T0, ttl=30)
        (v,) = store.fail([FailedAttempt(a.token, "crash", policy)], now=T0)
        assert v is not None and v.retry  # crash 1 of 2
        (b,) = store.lease("me", 1, now=T0, ttl=30)
        (v,) = store.fail([FailedAttempt(b.token, "error", policy)], now=T0)
        assert v is not None and not v.retry  # retries=0: the first exception buries it

    def test_tick_bumps_near_deadlines_and_expires(self, store: Store) -> None:
        store.clock = ManualClock(T0)
        store.put_many([b"plain"], due=T0)
        store.put_many([b"urgent"], due=T0, deadline=T0 + 100, bump=T0 + 50)
        (stale,) = store.put_many([b"stale"], due=T0, expires=T0 + 20)
        assert store.next_due(T0) == T0 + 20
        assert store.tick(T0 + 60) == [stale]
        assert store.next_due(T0 + 60) is None
        leased = store.lease("me", 9, now=T0 + 60, ttl=30)
        assert [x.payload for x in leased] == [b"urgent", b"plain"]
        assert store.counts().expired == 1
        assert [r.body for r in store.records([State.EXPIRED])] == [b"stale"]

    def test_expired_messages_are_never_leased_even_before_tick(self, store: Store) -> None:
        store.put_many([b"stale"], due=T0, expires=T0 + 5)
        assert store.lease("me", 9, now=T0 + 6, ttl=30) == []

    def test_history_revive_and_purge(self, store: Store) -> None:
        store.clock = ManualClock(T0)
        ids = store.put_many([b"a", b"b"], due=T0)
        a, b = store.lease("me", 2, now=T0, ttl=30)
        store.ack([a.token])
        store.nack([b.token], requeue=False)
        assert [r.body for r in store.records([State.DONE])] == [b"a"]
        assert store.record(ids[0]) is not None
        assert store.revive(None, now=T0) == [ids[1]]
        (again,) = store.lease("me", 9, now=T0, ttl=30)
        assert again.token.id == ids[1]
        store.nack([again.token], requeue=False)
        assert store.purge([State.DEAD], older_than=None) == 1
        assert store.records([State.DEAD]) == []

    def test_retention_zero_keeps_no_history(self, store: Store) -> None:
        store.retention = Retention.of(0)
        store.put_many([b"a"], due=T0)
        (a,) = store.lease("me", 1, now=T0, ttl=30)
        store.ack([a.token])
        assert store.records([State.DONE]) == [] and store.counts().done == 0


class NextEventCases:
    """For stores with ``next_event`` (an owner on a store without it ticks on
    ``next_due``)."""

    def test_next_event_is_the_next_bump_or_expiry_never_a_due_time(self, store: Store) -> None:
        # What an owner's tick timer waits for: a scheduled message's due time (or a plain
        # one put a moment after the owner read the clock) is the delivery timer's business.
        next_event = store.next_event  # type: ignore[attr-defined]
        store.clock = ManualClock(T0)
        store.put_many([b"later"], due=T0 + 5)
        assert store.next_due(T0) == T0 + 5 and next_event(T0) is None
        store.put_many([b"urgent"], due=T0, deadline=T0 + 100, bump=T0 + 50)
        store.put_many([b"stale"], due=T0, expires=T0 + 20)
        assert next_event(T0) == T0 + 20
        store.tick(T0 + 30)
        assert next_event(T0 + 30) == T0 + 50
        store.tick(T0 + 60)
        assert next_event(T0 + 60) is None


class TestMemoryStore(NextEventCases, StoreContract):
    def make_store(self, tmp_path: Path) -> Store:
        return MemoryStore()


class TestDiskcacheStore(NextEventCases, StoreContract):
    def make_store(self, tmp_path: Path) -> Store:
        return DiskcacheStore(tmp_path / "q")

    def test_state_survives_reopening(self, tmp_path: Path) -> None:
        s = DiskcacheStore(tmp_path / "q")
        s.put_many([b"a", b"b", b"c"])
        a, _b = s.lease("me", 2, now=T0, ttl=30)
        s.ack([a.token])
        s.close()
        s = DiskcacheStore(tmp_path / "q")
        assert s.requeue_expired(float("inf")) == 1  # b was in flight when "we died"
        leased = s.lease("me", 5, now=T0, ttl=30)
        assert [(x.payload, x.token.attempt) for x in leased] == [(b"b", 2), (b"c", 1)]
        s.close()

    def test_never_evicts_even_past_a_tiny_size_limit(self, tmp_path: Path) -> None:
        # diskcache's default policy would cull entries past size_limit; a queue must not.
        s = DiskcacheStore(tmp_path / "q", size_limit=4096)
        for _ in range(20):
            s.put_many([os.urandom(1024)] * 50)
        assert s.counts().ready == 1000
        assert len(s.lease("me", 2000, now=T0, ttl=30)) == 1000
        s.close()

    def test_acked_rows_are_collected_from_the_message_file(self, tmp_path: Path) -> None:
        s = DiskcacheStore(tmp_path / "q")
        s.retention = Retention.of(0)  # history off: acked rows go
        s.put_many([b"x"] * 300)
        s.ack([x.token for x in s.lease("me", 300, now=T0, ttl=30)])
        s.collect()
        con = sqlite3.connect(tmp_path / "q" / "cache.db")
        # Only the newest stays, emptied, so its id is never handed out again.
        assert con.execute("SELECT id, body FROM dq_message").fetchall() == [(300, b"")]
        con.close()
        assert s.counts().acked_total == 300
        s.close()

    def test_acks_in_a_stream_are_collected_by_a_helper_thread(self, tmp_path: Path) -> None:
        import threading

        from durableq.store._diskcache import GC_BATCH

        s = DiskcacheStore(tmp_path / "q")
        s.put_many([b"%d" % i for i in range(3 * GC_BATCH)])
        leased = s.lease("me", 3 * GC_BATCH, now=T0, ttl=30)
        s.ack([x.token for x in leased[:GC_BATCH]])  # a batch: handed to the helper
        job = s._collector
        assert job is not None and any(t.name == "durableq-collect" for t in threading.enumerate())
        assert job.done.wait(10) and job.error is None
        s.ack([x.token for x in leased[GC_BATCH:]])  # the owner finishes the first batch
        s.close()  # and waits for the helper's second one
        con = sqlite3.connect(tmp_path / "q" / "owner.db")
        assert con.execute("SELECT count(*) FROM dq_delivery").fetchone() == (0,)
        con.close()
        s = DiskcacheStore(tmp_path / "q")
        done = s.listing([State.DONE], now=T0 + 1, limit=10 * GC_BATCH)
        assert [r.id for r in done] == [x.token.id for x in leased]  # all in history
        assert s.counts().acked_total == 3 * GC_BATCH and s.counts().ready == 0
        s.close()

    def test_failed_batch_leaves_nothing(self, tmp_path: Path) -> None:
        s = DiskcacheStore(tmp_path / "q")
        with pytest.raises(StoreError):
            s.put_many([b"ok", None])  # type: ignore[list-item]  # NOT NULL fails mid-batch
        assert s.counts().ready == 0
        s.close()

    def test_bad_sync_mode_is_rejected(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="sync must be"):
            DiskcacheStore(tmp_path / "q", sync="sometimes")

    def test_pickles_by_path(self, tmp_path: Path) -> None:
        import pickle

        s = DiskcacheStore(tmp_path / "q")
        s.put_many([b"x"])
        clone = pickle.loads(pickle.dumps(s))
        assert clone.counts().ready == 1
        s.close()
        clone.close()


def test_concurrent_puts_share_commits(tmp_path: Path) -> None:
    import threading

    s = DiskcacheStore(tmp_path / "q", sync="full")
    start = threading.Barrier(8)

    def put_50() -> None:
        start.wait()
        for i in range(50):
            s.put_many([b"%d" % i])

    threads = [threading.Thread(target=put_50) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = s.counts()
    assert (counts.ready, counts.put_total) == (400, 400)
    assert s.commits < 400, "concurrent producers must share fsyncs"
    ids = [x.token.id for x in s.lease("me", 400, now=T0, ttl=30)]
    assert sorted(ids) == list(range(1, 401))
    s.close()


def test_ids_are_never_reused_after_the_queue_drains(tmp_path: Path) -> None:
    s = DiskcacheStore(tmp_path / "q")
    s.retention = Retention.of(0)
    for _ in range(3):
        (id_,) = s.put_many([b"x"])
        (leased,) = s.lease("me", 1, now=T0, ttl=30)
        s.ack([leased.token])
        s.collect()
    assert id_ == 3
    s.close()
    s = DiskcacheStore(tmp_path / "q")
    assert s.put_many([b"y"]) == [4]
    assert s.counts().put_total == 4
    con = sqlite3.connect(tmp_path / "q" / "cache.db")
    assert con.execute("SELECT count(*) FROM dq_message").fetchone() == (2,)  # tombstone + y
    con.close()
    s.close()


def test_a_child_forked_during_a_group_commit_can_still_put(tmp_path: Path) -> None:
    import multiprocessing

    s = DiskcacheStore(tmp_path / "q")
    s._group_lock.acquire()  # as if another thread were mid-commit at fork() time
    s._leading = True
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=s.put_many, args=([b"from the child"],))
    child.start()
    child.join(30)
    s._leading = False
    s._group_lock.release()
    assert child.exitcode == 0
    assert [x.payload for x in s.lease("me", 5, now=T0, ttl=30)] == [b"from the child"]
    s.close()


def test_children_forked_while_threads_use_sqlite_do_not_hang(tmp_path: Path) -> None:
    # Regression: a child forked while another thread was inside SQLite inherited one of
    # its C mutexes locked and hung on its first call (about half the forks).
    import multiprocessing
    import threading

    s = DiskcacheStore(tmp_path / "q")
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            s.put_many([b"x"])
            s.counts()
            other = DiskcacheStore(s.path)
            other.has_ready(0)
            other.close()

    threads = [threading.Thread(target=busy) for _ in range(2)]
    for t in threads:
        t.start()
    ctx = multiprocessing.get_context("fork")
    try:
        for _ in range(40):
            child = ctx.Process(target=s.put_many, args=([b"child"],))
            child.start()
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
                pytest.fail("a forked child hung in SQLite")
            assert child.exitcode == 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    s.close()
