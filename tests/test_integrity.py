"""HMAC on every stored record: tampered, truncated, foreign and replayed records are
quarantined, never unpickled, and the queue goes on."""

from __future__ import annotations

import os
import pickle
import queue
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import DiskcacheStore
from durableq.store._integrity import KEY_FILE

from .conftest import TIMEOUT


class Boom:
    """Unpickling it makes a directory: proof that a record was deserialized."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.marker,))


def evil(marker: Path) -> bytes:
    return b"\x02" + pickle.dumps(Boom(marker))  # the "auto" serializer's pickle tag


def db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path / "cache.db", isolation_level=None)


def square(x: int) -> int:
    return x * x


def test_the_key_file_is_made_0600_and_every_record_is_signed(qpath: Path) -> None:
    s = DiskcacheStore(qpath)
    s.put_many([b"\x01\xa1x", b"\x01\xa1y"])
    key = qpath / KEY_FILE
    assert len(key.read_bytes()) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    macs = [r[0] for r in db(qpath).execute("SELECT mac FROM dq_message")]
    assert len(macs) == 2 and all(m is not None and len(m) == 32 for m in macs)
    assert s.verify() == {"checked": 2, "failed": [], "failed_results": [], "quarantined": 0}
    s.close()


@pytest.mark.parametrize(
    "how", ["tampered", "truncated", "foreign key", "copied", "unsigned", "not utf-8"]
)
def test_a_bad_record_is_quarantined_never_unpickled_and_the_queue_goes_on(
    tmp_path: Path, how: str
) -> None:
    path, marker = tmp_path / "q", tmp_path / "unpickled"
    q = durableq.Queue(path=path)
    q.put("before")
    con = db(path)
    if how == "foreign key":  # a process without the queue's key writes a record
        other = DiskcacheStore(path, key=os.urandom(32))
        other.put_many([evil(marker)])
        other.close()
    else:
        q.put("victim")
        q.qsize()  # a read: the put log is moved into the message table
        (victim,) = con.execute("SELECT max(id) FROM dq_message").fetchone()
        if how == "tampered":
            con.execute("UPDATE dq_message SET body = ? WHERE id = ?", (evil(marker), victim))
        elif how == "truncated":
            con.execute("UPDATE dq_message SET body = substr(body, 1, 3) WHERE id = ?", (victim,))
        elif how == "unsigned":
            con.execute("UPDATE dq_message SET mac = NULL WHERE id = ?", (victim,))
        elif how == "not utf-8":  # text that is not UTF-8: reading its row must not raise
            con.execute(
                "UPDATE dq_message SET body = CAST(x'fffe41' AS TEXT) WHERE id = ?", (victim,)
            )
        else:  # a valid signed row copied to a new id: a replay
            con.execute(
                "INSERT INTO dq_message (id, state, priority, due, created, body, mac) "
                "SELECT id + 100, state, priority, due, created, body, mac FROM dq_message "
                "WHERE id = ?", (victim,),
            )
            con.execute("DELETE FROM dq_message WHERE id = ?", (victim,))
    q.put("after")
    assert [q.get(timeout=TIMEOUT), q.get(timeout=TIMEOUT)] == ["before", "after"]
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert not marker.exists()
    assert q.fault.is_set()
    (fault,) = [f for f in q.faults() if f.kind == "quarantined"]
    assert "HMAC" in fault.detail and "never deserialized" in fault.detail
    assert q.stats()["quarantined"] == 1
    store = DiskcacheStore.attach(path)
    (entry,) = store.quarantined()
    assert entry[0] == "message" and "HMAC" in entry[3]
    assert store.verify()["failed"] == []  # quarantined records are out of the check
    store.close()
    q.close()


def test_verify_reports_without_changing_anything(qpath: Path) -> None:
    s = DiskcacheStore(qpath)
    (i,) = s.put_many([b"\x01\xa1x"])
    db(qpath).execute("UPDATE dq_message SET body = x'0100' WHERE id = ?", (i,))
    assert s.verify()["failed"] == [i]
    assert s.verify()["failed"] == [i] and s.quarantined() == []
    s.close()


def test_a_tampered_result_is_never_unpickled(tmp_path: Path) -> None:
    path, marker = tmp_path / "q", tmp_path / "unpickled"
    with durableq.Executor(1, path=path) as ex:
        fut = ex.submit(square, 3)
        assert fut.result(TIMEOUT) == 9
    # An earlier run's results are kept until recovered() hands them out: keep one.
    ledger = sqlite3.connect(path / "owner.db", isolation_level=None)
    ledger.execute(
        "INSERT INTO dq_result (id, body, mac) VALUES (?, ?, ?)",
        (fut.task_id, b"\x00" + pickle.dumps(Boom(marker)), b"x" * 32),
    )
    with durableq.Executor(1, path=path) as ex:
        assert fut.task_id not in ex.recovered()
        assert [f.kind for f in ex.faults()] == ["quarantined"] and ex.fault.is_set()
        assert ex.stats()["quarantined"] == 1
    assert not marker.exists()


def test_a_shared_key_by_argument_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = os.urandom(32).hex()
    a = DiskcacheStore(tmp_path / "a", key=key)
    a.put_many([b"\x01\xa1x"])
    assert not (tmp_path / "a" / KEY_FILE).exists()  # a given key is never written down
    assert DiskcacheStore.attach(tmp_path / "a").verify  # readers need the key too
    monkeypatch.setenv("DURABLEQ_KEY", key)
    b = DiskcacheStore(tmp_path / "a")
    assert b.verify()["failed"] == []
    assert len(b.lease("o", 5, now=1e12, ttl=60)) == 1
    monkeypatch.setenv("DURABLEQ_KEY", "short")
    with pytest.raises(durableq.ConfigurationError, match="at least 16 bytes"):
        DiskcacheStore(tmp_path / "c")
    a.close()
    b.close()


def test_a_queue_made_before_macs_is_signed_when_opened(qpath: Path) -> None:
    s = DiskcacheStore(qpath)
    s.put_many([b"\x01\xa1x"])
    s.close()
    con = db(qpath)
    con.execute("ALTER TABLE dq_message DROP COLUMN mac")  # as an older durableq made it
    con.close()
    (qpath / KEY_FILE).unlink()
    q = durableq.Queue(path=qpath)
    assert q.get(timeout=TIMEOUT) == "x"
    q.close()


def test_a_tampered_dead_letter_is_never_decoded_nor_replayed(tmp_path: Path) -> None:
    path, marker = tmp_path / "q", tmp_path / "unpickled"
    q = durableq.Queue(path=path, ack="manual")
    q.put("fine")
    q.put("to bury")
    q.get_message(timeout=TIMEOUT).nack(requeue=False)
    q.get_message(timeout=TIMEOUT).nack(requeue=False)
    assert sorted(r.body for r in q.dead_letters()) == ["fine", "to bury"]
    con = db(path)
    (victim,) = con.execute("SELECT max(id) FROM dq_message").fetchone()
    con.execute("UPDATE dq_message SET body = ? WHERE id = ?", (evil(marker), victim))
    assert [r.body for r in q.dead_letters()] == ["fine"]
    assert [r.body for r in q.dead_letters()] == ["fine"]
    assert [f.kind for f in q.faults()].count("quarantined") == 1  # reported once
    q.retry_dead()  # revived in place: the lease's check still stands between it and a reader
    msg = q.get_message(timeout=TIMEOUT)
    assert msg.body == "fine"
    msg.ack()
    with pytest.raises(queue.Empty):
        q.get_message(timeout=0.2)
    assert q.stats()["quarantined"] == 1 and not marker.exists()
    q.close()


def test_puts_from_two_producers_in_turn_each_get_the_next_id_signed_for_it(
    tmp_path: Path,
) -> None:
    # A producer guesses its next id from its last put; another producer's put in between
    # makes the guess wrong, and the put must then take the id SQLite picks, signed for it.
    a, b = DiskcacheStore(tmp_path / "q"), DiskcacheStore(tmp_path / "q")
    ids = [s.put_many([bytes([n])])[0] for n, s in enumerate([a, a, b, a, b, b, a])]
    assert ids == list(range(1, 8))
    leased = a.lease("o", 10, now=1e12, ttl=60)
    assert [(x.token.id, x.payload) for x in leased] == [(i, bytes([i - 1])) for i in ids]
    assert a.verify()["failed"] == []  # every MAC binds the id its row has
    a.close()
    b.close()
