"""Numbered puts (``durableq/store/_numbers.py``): the owner numbers its puts from a block of
ids it reserved and appends them to its put log; the drain inserts them under those ids.

What must hold: every id is returned at once and is the message's id once stored; no id is
ever given twice (across blocks, processes, crashes and restarts); ``put_total`` counts
puts, never the ids a block left unused. The crash case SIGKILLs a real process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq._policy import Retention
from durableq.store import _numbers
from durableq.store._diskcache import DiskcacheStore
from durableq.store._putlog import DIRECT_BATCH, LogWriter

from .conftest import TIMEOUT
from .test_putlog import logs, message_rows


def leased(store: DiskcacheStore) -> list[tuple[int, bytes]]:
    """(id, body) of every ready message, in delivery order."""
    out = store.lease("test", 1_000_000, now=store.clock.time(), ttl=60.0)
    return [(m.token.id, m.payload) for m in out]


def numbered(store: DiskcacheStore, *items: bytes) -> list[int]:
    return store.put_numbered(list(items), due=store.clock.time())


def test_ids_come_at_once_and_name_the_stored_messages(qpath: Path) -> None:
    store = DiskcacheStore(qpath)
    assert numbered(store, b"a") == [1]
    assert numbered(store, b"b", b"c") == [2, 3]
    assert len(logs(qpath)) == 1 and message_rows(qpath) == 0  # in the log, not moved yet
    assert store.counts().put_total == 3
    assert leased(store) == [(1, b"a"), (2, b"b"), (3, b"c")]
    store.close()


def test_put_total_counts_puts_not_reserved_ids(
    qpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_numbers, "BLOCK", 4)
    store, other = DiskcacheStore(qpath), DiskcacheStore(qpath)
    given: list[int] = []
    total = 0
    for i in range(11):  # three blocks of 4, with other processes' puts between them
        given += numbered(store, b"n%d" % i)
        other.put_quiet([b"q%d" % i], due=other.clock.time())  # a plain put: id at drain
        total += 2
        assert store.counts().put_total == total
    given += store.put_many([b"direct"])  # a SQLite commit: max(id) + 1
    given += numbered(store, *[b"big"] * DIRECT_BATCH)  # committed at once, not logged
    total += 1 + DIRECT_BATCH
    assert store.counts().put_total == total
    got = leased(store)
    ids = [i for i, _ in got]
    assert len(got) == total and len(set(ids)) == total, "every put stored once, no id twice"
    assert set(given) <= set(ids)
    assert dict(got)[given[0]] == b"n0" and dict(got)[given[10]] == b"n10"
    store.close()  # the rest of the open block is counted as never used
    assert other.counts().put_total == total
    other.close()
    again = DiskcacheStore(qpath)
    (new,) = numbered(again, b"later")
    assert new > max(ids)
    assert again.counts().put_total == total + 1
    again.close()


def test_a_failed_write_gives_its_ids_back(qpath: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DiskcacheStore(qpath)
    assert numbered(store, b"a") == [1]
    real = LogWriter.append

    def fail(self: LogWriter, rows: Any, ids: Any = None) -> None:
        raise durableq.StoreError("disk full")

    monkeypatch.setattr(LogWriter, "append", fail)
    with pytest.raises(durableq.StoreError, match="disk full"):
        numbered(store, b"lost")
    monkeypatch.setattr(LogWriter, "append", real)
    assert numbered(store, b"b") == [2]
    assert store.counts().put_total == 2
    assert leased(store) == [(1, b"a"), (2, b"b")]
    store.close()


def test_a_forked_child_never_numbers_from_its_parents_block(qpath: Path) -> None:
    store = DiskcacheStore(qpath)
    assert numbered(store, b"parent") == [1]
    ctx = multiprocessing.get_context("fork")
    reply = ctx.SimpleQueue()
    child = ctx.Process(target=_number_in_child, args=(store, reply))
    child.start()
    child.join(TIMEOUT)
    (child_id,) = reply.get()
    assert numbered(store, b"parent again") == [2]
    assert child_id > 2, "the child reserved a block of its own, above the parent's"
    got = dict(leased(store))
    assert got == {1: b"parent", 2: b"parent again", child_id: b"child"}
    store.close()


def _number_in_child(store: DiskcacheStore, reply: Any) -> None:
    reply.put(numbered(store, b"child"))
    store.close()


def _number_then_die(path: str, n: int, reply: Any) -> None:
    store = DiskcacheStore(path)
    ids = []
    for i in range(n):
        ids += numbered(store, b"%d" % i)
    reply.send(ids)
    os.kill(os.getpid(), signal.SIGKILL)  # no close(): its block stays open


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_an_owner_killed_mid_block_loses_nothing_and_reuses_no_id(
    qpath: Path, method: str
) -> None:
    store = DiskcacheStore(qpath)
    assert numbered(store, b"before") == [1]
    store.close()
    ctx = multiprocessing.get_context(method)
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_number_then_die, args=(str(qpath), 300, send))
    child.start()
    ids = receive.recv()
    child.join(TIMEOUT)
    assert child.exitcode == -signal.SIGKILL
    assert ids[0] > 1 and ids == list(range(ids[0], ids[0] + 300))
    again = DiskcacheStore(qpath)
    assert again.counts().put_total == 301, "the dead owner's unused ids are not puts"
    (new,) = numbered(again, b"after")  # closes the dead owner's block from what it used
    assert new > ids[-1]
    assert again.counts().put_total == 302
    got = dict(leased(again))
    assert sorted(got) == [1, *ids, new]
    assert [got[i] for i in ids] == [b"%d" % i for i in range(300)]
    again.close()
    assert DiskcacheStore(qpath).counts().put_total == 302


def test_a_closed_block_gives_its_unused_ids_back(qpath: Path) -> None:
    store = DiskcacheStore(qpath)
    store.retention = Retention.of(0)  # acked rows are deleted, not kept as history
    assert numbered(store, b"a", b"b", b"c") == [1, 2, 3]
    tokens = [m.token for m in store.lease("test", 10, now=store.clock.time(), ttl=60.0)]
    store.ack(tokens)
    store.collect()
    assert message_rows(qpath) == 0  # every row of the block is gone
    store.close()
    again = DiskcacheStore(qpath)
    assert again.counts().put_total == 3
    assert numbered(again, b"d") == [4], "ids go on from the last one used, never back"
    again.close()


def test_executor_tasks_are_numbered_densely_and_counted_once(qpath: Path) -> None:
    with durableq.Executor(max_workers=1, path=qpath) as ex:
        fs = [ex.submit(pow, 2, i) for i in range(20)]
        assert [f.task_id for f in fs] == list(range(1, 21))
        assert [f.result(TIMEOUT) for f in fs] == [2**i for i in range(20)]
        assert ex.stats()["put_total"] == 20
    with durableq.Executor(max_workers=1, path=qpath) as ex:
        f = ex.submit(pow, 3, 2)
        assert f.task_id == 21 and f.result(TIMEOUT) == 9
        assert ex.stats()["put_total"] == 21


def _submit_then_die(path: str, reply: Any) -> None:
    ex = durableq.Executor(max_workers=1, path=path)
    reply.send([ex.submit(pow, 2, i).task_id for i in range(5)])
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_new_executor_settles_the_ids_of_a_killed_one(qpath: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_submit_then_die, args=(str(qpath), send))
    child.start()
    ids = receive.recv()
    child.join(TIMEOUT)
    assert child.exitcode == -signal.SIGKILL and ids == [1, 2, 3, 4, 5]
    with durableq.Executor(max_workers=1, path=qpath) as ex:
        assert ex.stats()["put_total"] == 5
        recovered = ex.recovered()
        assert sorted(recovered) == ids
        assert [recovered[i].result(TIMEOUT) for i in ids] == [2**i for i in range(5)]
        assert ex.submit(pow, 3, 2).task_id == 6
        assert ex.stats()["put_total"] == 6
