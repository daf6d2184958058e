"""A queue file garbled on disk: a clear error naming it, the queue delivers what it still
can, and durableq.salvage() keeps every readable record."""

from __future__ import annotations

import gc
import os
import pickle
import queue
import sqlite3
from pathlib import Path

import pytest

import durableq

N = 3000
PAGE = 4096


def garble_middle_page(path: Path) -> None:
    con = sqlite3.connect(path / "cache.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the main file
    con.close()
    size = (path / "cache.db").stat().st_size
    with open(path / "cache.db", "r+b") as f:
        f.seek(PAGE * (size // PAGE // 2))
        f.write(os.urandom(PAGE))


def drain(q: durableq.Queue) -> list[int]:
    got = []
    while True:
        try:
            got.append(q.get(timeout=1.0)[0])
        except queue.Empty:
            return got


def test_a_garbled_page_is_named_and_every_readable_record_salvaged(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put_many([(i, "x" * 200) for i in range(N)])
    q.close()
    del q
    gc.collect()
    garble_middle_page(qpath)

    q = durableq.Queue(path=qpath)
    before = drain(q)  # delivered up to the damage: the queue goes on as far as it can
    assert 0 < len(before) < N
    assert q.fault.is_set()
    detail = [f.detail for f in q.faults() if f.kind == "store-failed"][-1]
    assert f"{qpath / 'cache.db'} is damaged" in detail and "durableq.salvage(" in detail
    with pytest.raises(durableq.QueueLocked):
        durableq.salvage(qpath)  # never under a live owner
    q.close()
    del q
    gc.collect()

    (report,) = durableq.salvage(qpath)
    lost = report.lost["dq_message"]
    assert report.path == str(qpath / "cache.db") and Path(report.kept_as).exists()
    assert 0 < len(lost) < 50  # one page of messages, no more
    assert report.rows["dq_message"] + len(lost) == N

    q = durableq.Queue(path=qpath)
    after = drain(q)
    assert sorted(before + after) == sorted(set(range(N)) - {i - 1 for i in lost})
    q.close()


def test_store_corrupt_pickles_with_its_fields() -> None:
    exc = durableq.StoreCorrupt("/q", ["/q/cache.db"], "database disk image is malformed")
    again = pickle.loads(pickle.dumps(exc))
    assert (again.path, again.files, again.detail) == (exc.path, exc.files, exc.detail)
    assert isinstance(again, durableq.StoreError) and str(again) == str(exc)
