"""Scheduling and failure policy on the Queue, driven by a ManualClock: no test waits for
real time to pass. Deadlines, expiry, retries with backoff and demotion, dead letters, the
failure log and its report, history and replay; and all of it across a SIGKILLed owner."""

from __future__ import annotations

import multiprocessing
import os
import queue as pyqueue
import random
import signal
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import ManualClock, Priority, RetryPolicy
from durableq._policy import CRASH, ERROR, TIMEOUT, Retention, decide
from durableq._records import State
from durableq._report import fingerprint, group, normalise

from .conftest import TIMEOUT as WAIT

T0 = 1_800_000_000.0


def nothing_ready(q: durableq.Queue) -> bool:
    try:
        msg = q.get_message(block=False)
    except pyqueue.Empty:
        return True
    msg.nack(delay=0)
    return False


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def manual(qpath: Path, clock: ManualClock, **kw: Any) -> durableq.Queue:
    return durableq.Queue(path=qpath, ack="manual", clock=clock, **kw)


def take(q: durableq.Queue) -> Any:
    msg = q.get_message(timeout=WAIT)
    msg.ack()
    return msg.body


# -- the pure parts -----------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    p = RetryPolicy(backoff=1.0, backoff_cap=10.0, jitter=False)
    assert [p.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_full_jitter_draws_uniformly_below_the_bound_with_a_seeded_rng() -> None:
    p = RetryPolicy(backoff=2.0, backoff_cap=60.0)
    got = [p.delay(n, random.Random(7)) for n in range(1, 8)]
    want = [random.Random(7).uniform(0, min(60.0, 2.0 * 2 ** (n - 1))) for n in range(1, 8)]
    assert got == want
    assert all(0 <= d <= 60 for d in got)


def test_budgets_are_separate_per_cause() -> None:
    p = RetryPolicy(retries=2, max_attempts=3, timeout_retries=0, demote=False)

    def verdict(cause: str, n: int) -> bool:
        return decide(p, cause=cause, count=n, retryable=True, delay=None, priority=1,
                      due=T0, now=T0).retry

    assert [verdict(ERROR, n) for n in (1, 2, 3)] == [True, True, False]
    assert [verdict(CRASH, n) for n in (1, 2, 3)] == [True, True, False]
    assert verdict(TIMEOUT, 1) is False
    not_matching = decide(p, cause=ERROR, count=1, retryable=False, delay=None, priority=1,
                          due=T0, now=T0)
    assert not not_matching.retry


def test_each_failed_attempt_demotes_one_band_unless_demote_is_false() -> None:
    bands = [0]
    for n in (1, 2, 3):
        bands.append(decide(RetryPolicy(), cause=ERROR, count=n, retryable=True, delay=None,
                            priority=bands[-1], due=T0, now=T0).priority)
    assert bands == [Priority.HIGH, Priority.MEDIUM, Priority.LOW, Priority.LOW]
    kept = decide(RetryPolicy(demote=False), cause=ERROR, count=1, retryable=True, delay=None,
                  priority=0, due=T0, now=T0)
    assert kept.priority == Priority.HIGH


def test_bad_policies_are_refused_with_the_option_named() -> None:
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff=-2)
    with pytest.raises(TypeError, match="retry_on"):
        RetryPolicy(retry_on=("ValueError",))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry"):
        durableq.Queue(retry=3)  # type: ignore[arg-type]


def test_messages_differing_only_in_numbers_group_together() -> None:
    def raise_it(user: int) -> str:
        try:
            raise KeyError(f"user {user} at 0x7f3a2b not found")
        except KeyError as exc:
            import traceback

            return "".join(traceback.format_exception(exc))

    tb1, tb2 = raise_it(42), raise_it(97)
    assert normalise("user 42 at 0x7f3a2b") == "user <n> at <addr>"
    assert fingerprint("KeyError", "user 42", tb1) == fingerprint("KeyError", "user 97", tb2)
    assert fingerprint("KeyError", "user 42", tb1) != fingerprint("ValueError", "user 42", tb1)
    failures = [
        durableq.Failure(T0 + i, i % 2, "", 1, ERROR, "KeyError", f"user {i}", tb1, 1)
        for i in range(5)
    ] + [durableq.Failure(T0, 9, "", 1, ERROR, "OSError", "disk", "", 1)]
    (top, other) = group(failures)
    assert (top.type, top.count, top.tasks, top.first_seen, top.last_seen) == (
        "KeyError", 5, 2, T0, T0 + 4
    )
    assert top.message == "user <n>" and "raise_it" in top.frame and other.count == 1


# -- dates, deadlines and expiry ----------------------------------------------------------------


def test_an_earlier_newcomer_displaces_the_next_due_event(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock)
    q.put("in 100 s", delay=100)
    assert nothing_ready(q)
    q.put("in 10 s", delay=10)
    clock.advance(10)
    assert take(q) == "in 10 s"
    assert nothing_ready(q)
    clock.advance(90)
    assert take(q) == "in 100 s"


def test_a_message_near_its_deadline_is_bumped_to_high(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock, deadline_window=300)
    q.put("first")
    q.put("urgent later", deadline=T0 + 1000)  # window opens at T0 + 700
    q.put("already urgent", deadline=T0 + 100)  # inside its window: HIGH at once
    assert take(q) == "already urgent"
    clock.advance(700)
    assert take(q) == "urgent later"
    assert take(q) == "first"
    assert q.stats()["late_total"] == 0


def test_a_deadline_that_passes_undelivered_marks_it_late(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock)
    q.put("slow", deadline=T0 + 5)
    clock.advance(6)
    msg = q.get_message(timeout=WAIT)
    assert msg.body == "slow"  # still delivered
    msg.ack()
    assert q.stats()["late_total"] == 1
    (done,) = q.history(state="done")
    assert done.late and done.body == "slow"


def test_an_undelivered_message_expires_and_never_runs(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock)
    q.put("stale", ttl=60)
    q.put("fresh", expires_at=T0 + 600)
    clock.advance(61)
    assert take(q) == "fresh"
    assert nothing_ready(q)
    stats = q.stats()
    assert (stats["expired"], stats["ready"]) == (1, 0)
    assert [r.body for r in q.history(state="expired")] == ["stale"]


def test_bad_dates_are_refused_with_the_option_named(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    with pytest.raises(ValueError, match="ttl"):
        q.put("x", ttl=-1)
    with pytest.raises(ValueError, match="ttl= or expires_at="):
        q.put("x", ttl=5, expires_at=T0)
    with pytest.raises(TypeError, match="deadline"):
        q.put("x", deadline="tomorrow")  # type: ignore[arg-type]
    assert q.stats()["put_total"] == 0


# -- retries, dead letters, failure log ------------------------------------------------------


def test_nack_retries_with_backoff_then_the_message_is_dead(
    qpath: Path, clock: ManualClock
) -> None:
    policy = RetryPolicy(retries=2, backoff=10, jitter=False, demote=False)
    q = manual(qpath, clock, retry=policy)
    q.put("flaky")
    for n, wait in ((1, 10), (2, 20)):
        msg = q.get_message(timeout=WAIT)
        msg.nack(error=ConnectionError(f"attempt {n} refused"))
        assert nothing_ready(q), "backing off"
        clock.advance(wait)
    msg = q.get_message(timeout=WAIT)
    assert msg.attempts == 3
    msg.nack(error=ConnectionError("refused again"))
    assert nothing_ready(q)
    (dead,) = q.dead_letters()
    assert (dead.body, dead.attempts, dead.state) == ("flaky", 3, durableq.State.DEAD)
    failures = q.failures()
    assert [(f.attempt, f.cause, f.type) for f in failures] == [
        (1, "error", "ConnectionError"), (2, "error", "ConnectionError"),
        (3, "error", "ConnectionError"),
    ]
    assert "refused" in failures[0].message and "ConnectionError" in failures[0].traceback
    assert failures[0].pid == os.getpid()


def test_exceptions_outside_retry_on_go_dead_at_once(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock, retry=RetryPolicy(retry_on=(ConnectionError,)))
    q.put("bad input")
    with pytest.raises(ValueError), q.get_message(timeout=WAIT):
        raise ValueError("cannot parse")
    assert [r.body for r in q.dead_letters()] == ["bad input"]


def test_nack_delay_reschedules_explicitly(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock, retry=RetryPolicy(backoff=1000))
    q.put("later")
    q.get_message(timeout=WAIT).nack(delay=5)
    assert nothing_ready(q)
    clock.advance(5)
    assert take(q) == "later"


def test_a_nacked_message_is_demoted(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock, retry=RetryPolicy(retries=2))
    q.put("x", priority="high")
    q.get_message(timeout=WAIT).nack()  # HIGH -> MEDIUM
    q.put("y", priority="high")
    assert [take(q), take(q)] == ["y", "x"]
    q.put("z", priority="high")
    for _ in range(3):
        q.get_message(timeout=WAIT).nack()
    (dead,) = q.dead_letters()
    assert (dead.body, dead.priority) == ("z", Priority.LOW)


def test_dead_letters_round_trip(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock)
    q.put_many(["x", "y", "z"])
    for _ in range(3):
        q.get_message(timeout=WAIT).nack(requeue=False)
    assert sorted(r.body for r in q.dead_letters()) == ["x", "y", "z"]
    (y,) = [r.id for r in q.dead_letters() if r.body == "y"]
    assert q.retry_dead([y]) == [y]
    msg = q.get_message(timeout=WAIT)
    assert (msg.id, msg.body) == (y, "y")
    msg.ack()
    clock.advance(3600)
    assert q.purge_dead(older_than=7200) == 0
    assert q.purge_dead(older_than=1800) == 2
    assert q.dead_letters() == [] and q.stats()["dead"] == 0
    assert q.retry_dead() == []


def test_a_consumer_killed_holding_a_message_is_logged_as_a_crash(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put("work")
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_take_and_die, args=(q,))
    child.start()
    child.join(WAIT)
    assert q.get(timeout=WAIT) == "work"
    (crash,) = q.failures()
    assert (crash.cause, crash.pid, crash.attempt) == ("crash", child.pid, 1)


def _take_and_die(q: durableq.Queue) -> None:
    q.get(timeout=WAIT)
    os.kill(os.getpid(), signal.SIGKILL)


def test_report_groups_recurring_errors(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock, retry=RetryPolicy(retries=0))
    q.put_many([f"user-{n}" for n in range(4)])
    for _ in range(4):
        msg = q.get_message(timeout=WAIT)
        try:
            _lookup(msg.body)
        except LookupError as exc:
            msg.nack(error=exc)
    (grouped,) = q.report()
    assert (grouped.type, grouped.count, grouped.tasks) == ("KeyError", 4, 4)
    assert "_lookup" in grouped.frame and "KeyError" in grouped.sample_traceback


def _lookup(key: str) -> None:
    raise KeyError(f"no row for {key} in table 7")


# -- history and replay ---------------------------------------------------------------------


def test_history_keeps_the_newest_per_retention(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock, history=3)
    q.put_many(range(5))
    for _ in range(5):
        take(q)
        q.stats()  # the owner applied the ack (and stamped it) before the clock moves
        clock.advance(1)
    assert [r.body for r in q.history()] == [4, 3, 2]


def test_history_zero_keeps_none(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock, history=0)
    q.put_many(range(3))
    for _ in range(3):
        take(q)
    assert q.history() == [] and q.stats()["done"] == 0


def test_history_by_age(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock, history=3600.0)
    q.put("old")
    take(q)
    q.stats()
    clock.advance(7200)
    q.put("new")
    take(q)
    assert [r.body for r in q.history(since=T0)] == ["new"]


def test_replay_enqueues_copies_as_new_messages(qpath: Path, clock: ManualClock) -> None:
    q = manual(qpath, clock)
    q.put({"job": 1}, priority="low")
    take(q)
    (done,) = q.history()
    (new_id,) = q.replay([done.id])
    assert new_id > done.id
    msg = q.get_message(timeout=WAIT)
    assert (msg.id, msg.body) == (new_id, {"job": 1})
    msg.ack()
    with pytest.raises(ValueError, match="not a finished"):
        q.replay([new_id + 100])


# -- all of it across a SIGKILLed owner ---------------------------------------------------


def _owner_then_killed(path: Path, ready: Any) -> None:
    clock = ManualClock(T0)
    q = durableq.Queue(path=path, ack="manual", clock=clock, retry=RetryPolicy(retries=0))
    q.put_many(["done", "dead"])
    q.put("scheduled", delay=1000)
    q.put("expiring", ttl=50)
    q.put("urgent", deadline=T0 + 1000)
    q.get_message(timeout=WAIT).ack()  # done
    q.get_message(timeout=WAIT).nack(error=RuntimeError("boom 1"))  # dead
    q.stats()  # the owner applied both
    ready.set()
    signal.pause()


def test_policy_state_survives_a_sigkilled_owner(qpath: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    owner = ctx.Process(target=_owner_then_killed, args=(qpath, ready))
    owner.start()
    assert ready.wait(WAIT)
    os.kill(owner.pid, signal.SIGKILL)
    owner.join(WAIT)
    clock = ManualClock(T0)
    q = durableq.Queue(path=qpath, ack="manual", clock=clock, wait_for_owner=True)
    assert [r.body for r in q.dead_letters()] == ["dead"]
    assert [(f.type, f.message) for f in q.failures()] == [("RuntimeError", "boom 1")]
    assert [r.body for r in q.history(state="done")] == ["done"]
    assert q.stats()["scheduled"] == 1
    clock.advance(700)  # the deadline window opened: "urgent" goes first
    assert take(q) == "urgent"
    assert nothing_ready(q), "the ttl passed: expired; 'scheduled' is not due yet"
    assert q.stats()["expired"] == 1
    clock.advance(300)
    assert take(q) == "scheduled"
    assert q.retry_dead() != []
    assert take(q) == "dead"
    (done,) = [r for r in q.history(state="done") if r.body == "done"]
    q.replay([done.id])
    assert take(q) == "done"


def test_a_failure_applied_while_a_producer_holds_the_message_file_waits_for_it(
    qpath: Path, clock: ManualClock
) -> None:
    # The verdict moves the message (band, due time) in the producers' file: it must wait
    # for a producer's transaction, not fail and raise a store fault.
    import sqlite3
    import threading

    q = manual(qpath, clock, retry=RetryPolicy(backoff=10, jitter=False))
    q.put("x")
    msg = q.get_message(timeout=WAIT)
    con = sqlite3.connect(qpath / "cache.db", isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")  # a producer mid-commit
    release = threading.Timer(0.3, lambda: con.execute("COMMIT"))
    release.start()
    msg.nack(error=RuntimeError("later"))
    release.join()
    q.stats()  # the owner applied the nack
    assert [f.kind for f in q.faults()] == []
    assert not q.fault.is_set()
    assert nothing_ready(q)
    clock.advance(10)
    assert take(q) == "x"
    con.close()


def test_the_owner_waits_for_a_repair_holding_the_ledger(qpath: Path) -> None:
    # Another process (durableq retry/purge) writing the ledger: the owner's next lease and
    # acks wait for it rather than report a failed store.
    import sqlite3
    import threading

    q = manual(qpath, ManualClock(T0))
    q.put_many(["a", "b"])
    con = sqlite3.connect(qpath / "owner.db", isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: con.execute("COMMIT"))
    release.start()
    assert sorted([take(q), take(q)]) == ["a", "b"]
    release.join()
    assert q.stats()["acked_total"] == 2
    assert [f.kind for f in q.faults()] == [] and not q.fault.is_set()
    con.close()


@pytest.mark.parametrize(
    ("count", "age"), [(4, None), (None, 5.0), (4, 5.0), (9, 3.0), (0, None), (20, None)]
)
def test_retention_trims_exactly_the_oldest_history(
    qpath: Path, count: int | None, age: float | None
) -> None:
    """Against a reference: keep the newest ``count`` by (finished, id) and none finished
    more than ``age`` ago; ties in finish time broken by id; the newest row (by id) stays
    as a tombstone when it goes, so no id comes back."""
    store = durableq.DiskcacheStore(qpath)
    clock = ManualClock(T0)
    store.clock = clock
    store.retention = Retention(count, age)
    store.put_many([b"%d" % i for i in range(12)])
    finished = {}
    leased = store.lease("t", 12, now=clock.time(), ttl=60.0)
    order = [11, *range(11)]  # the newest id finishes first: it is the oldest history
    for n, i in enumerate(order):
        (msg,) = [m for m in leased if m.token.id == i + 1]
        store.ack([msg.token])
        finished[i + 1] = clock.time()
        if n % 2:  # two by two: equal finish times
            clock.advance(1.0)
    store.collect()
    store.trim()
    ranked = sorted(finished, key=lambda i: (finished[i], i), reverse=True)
    kept = ranked[:count] if count is not None else ranked
    if age is not None:
        kept = [i for i in kept if finished[i] >= clock.time() - age]
    assert sorted(r.id for r in store.records([State.DONE], limit=100)) == sorted(kept)
    (new,) = store.put_many([b"new"])
    assert new == 13, "an id never comes back"
    store.close()
