"""The store reads and repairs behind ``durableq ls`` and ``durableq doctor``."""

from __future__ import annotations

import time
from pathlib import Path

from durableq import DiskcacheStore, State

NOW = time.time()


def _store(path: Path) -> DiskcacheStore:
    store = DiskcacheStore(path)
    store.put_many([b"a", b"b", b"c", b"d", b"e"])  # 1-5
    store.put_many([b"later"], due=NOW + 3600)  # 6: scheduled
    (one, two, _) = store.lease("t", 3, now=NOW, ttl=60)  # 1, 2, 3
    store.ack([one.token])
    store.nack([two.token], requeue=False)
    return store


def test_listing_pages_every_state_by_id(tmp_path: Path) -> None:
    store = _store(tmp_path / "q")
    def ids(*states: State, after: int = 0, limit: int = 100) -> list[int]:
        return [r.id for r in store.listing(states, now=NOW, after=after, limit=limit)]

    assert ids(State.READY) == [4, 5]
    assert ids(State.SCHEDULED) == [6]
    assert ids(State.IN_FLIGHT) == [3]
    assert ids(State.DEAD) == [2]  # still only in the ledger
    assert ids(State.DONE) == [1]
    assert ids(State.READY, State.IN_FLIGHT, State.SCHEDULED, limit=2) == [3, 4]
    assert ids(State.READY, State.IN_FLIGHT, State.SCHEDULED, after=4) == [5, 6]
    dead = store.listing([State.DEAD], now=NOW)[0]
    assert (dead.state, dead.attempts, dead.body) == (State.DEAD, 1, b"b")
    assert dead.finished is not None
    store.collect()
    assert (ids(State.DEAD), ids(State.DONE)) == ([2], [1])  # now in the message file
    assert store.listing([State.IN_FLIGHT], now=NOW)[0].state == State.IN_FLIGHT


def test_expired_leases_and_quarantine(tmp_path: Path) -> None:
    store = _store(tmp_path / "q")
    assert store.expired_leases(NOW + 61) == [(3, NOW + 60)]
    assert store.expired_leases(NOW) == []
    assert store.quarantine([3, 4, 6, 99], now=NOW, reason="not a payload") == [4, 6]
    assert [r.id for r in store.listing([State.DEAD], now=NOW)] == [2, 4, 6]
    (failure,) = store.failures(id=4)
    assert (failure.type, failure.message) == ("Quarantined", "not a payload")
    assert store.counts().dead == 3
    assert store.revive([4], now=NOW) == [4]
    assert [r.id for r in store.listing([State.READY], now=NOW)] == [4, 5]


def test_tallies_agree_with_counts(tmp_path: Path) -> None:
    store = _store(tmp_path / "q")
    counts = store.counts()
    assert store.tallies() == {
        "put_total": 6, "acked_total": 1, "late_total": 0, "in_flight": 1, "dead": 1,
        "expired": 0,
    }
    assert (counts.in_flight, counts.dead, counts.acked_total) == (1, 1, 1)
    store.collect()
    assert store.tallies()["dead"] == 1
