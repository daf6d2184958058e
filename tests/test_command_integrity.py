"""HMAC on command-queue records: tampered, truncated, foreign, copied and unsigned rows of
``commands.db`` are quarantined, never unpickled, counted and reported; the other commands
still drain."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from durableq import CommandQueue, DiskcacheStore, MemoryStore
from durableq._doctor import diagnose
from durableq._maintain import maintain
from durableq.store._command_integrity import command_ok
from durableq.store._integrity import sign_command

from .conftest import TIMEOUT

CTX = multiprocessing.get_context("fork")


class Boom:
    """Unpickling it makes a directory: proof that a payload was deserialized."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.marker,))


def evil(marker: Path) -> bytes:
    return b"\x02" + pickle.dumps(Boom(marker))  # the "auto" serializer's pickle tag


def db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path / "commands.db", isolation_level=None)


def put(store: DiskcacheStore, target: str, payload: bytes, *, hold: bool = False) -> int:
    return store.command_put(target, payload, command_type=None, expires_at=None, hold=hold,
                             now=1_000.0)


def write_with_another_key(path: str, marker: str) -> None:
    """A process holding some other key (its DURABLEQ_KEY) writes a command."""
    os.environ["DURABLEQ_KEY"] = os.urandom(32).hex()
    other = DiskcacheStore(path)
    put(other, "dev", evil(Path(marker)))
    other.command_close()
    other.close()


def plant(path: Path, how: str, marker: Path) -> int:
    """Store one bad command for "dev" as ``how`` says; returns its id."""
    con = db(path)
    store = DiskcacheStore(path)
    try:
        if how == "foreign key":
            child = CTX.Process(target=write_with_another_key, args=(str(path), str(marker)))
            child.start()
            child.join(TIMEOUT)
            assert child.exitcode == 0
            (victim,) = con.execute("SELECT max(id) FROM dq_command").fetchone()
        elif how == "tampered":
            victim = put(store, "dev", b"\x01\xa6victim")
            con.execute("UPDATE dq_command SET payload = ? WHERE id = ?", (evil(marker), victim))
        elif how == "truncated":  # signed with a tail, then cut back to a pickle that runs
            victim = put(store, "dev", evil(marker) + b"\x00" * 8)
            con.execute("UPDATE dq_command SET payload = substr(payload, 1, length(payload) - 8) "
                        "WHERE id = ?", (victim,))
        elif how == "unsigned":  # as a process of a durableq before signing writes it
            victim = put(store, "dev", evil(marker))
            con.execute("UPDATE dq_command SET mac = NULL WHERE id = ?", (victim,))
        elif how == "copied":  # a valid row moved to another id: a replay
            original = put(store, "dev", evil(marker))
            victim = original + 100
            con.execute("UPDATE dq_command SET id = ? WHERE id = ?", (victim, original))
        elif how == "not utf-8":  # text that is not UTF-8: reading it must not raise
            victim = put(store, "dev", b"\x01\xa6victim")
            con.execute("UPDATE dq_command SET payload = CAST(x'fffe41' AS TEXT), "
                        "type = CAST(x'ff' AS TEXT) WHERE id = ?", (victim,))
        elif how == "retyped":  # text where bytes were signed (SQLite keeps any type)
            victim = put(store, "dev", b"\x01\xa6victim")
            con.execute("UPDATE dq_command SET payload = 'x' WHERE id = ?", (victim,))
        else:  # "retargeted": a valid row, held for another target, handed to "dev"
            victim = put(store, "elsewhere", evil(marker), hold=True)
            con.execute("UPDATE dq_command SET target = 'dev', hold = 0, state = 0 "
                        "WHERE id = ?", (victim,))
    finally:
        store.command_close()
        store.close()
        con.close()
    return victim  # type: ignore[no-any-return]


HOW = [
    "tampered", "truncated", "foreign key", "copied", "retargeted", "unsigned", "retyped",
    "not utf-8",
]


@pytest.mark.parametrize("how", HOW)
def test_a_bad_command_is_quarantined_never_unpickled_and_the_rest_drain(
    tmp_path: Path, how: str
) -> None:
    path, marker = tmp_path / "c.q", tmp_path / "unpickled"
    cq = CommandQueue(path)
    cq.enqueue("dev", "before")
    victim = plant(path, how, marker)
    cq.enqueue("dev", "after")
    assert [c.payload for c in cq.pending("dev")] == ["before", "after"]
    assert [c.payload for c in cq.drain("dev")] == ["before", "after"]
    assert not marker.exists()
    assert cq.counts().quarantined == 1 and cq.counts().ready == 0
    (fault,) = [f for f in cq.faults() if f.kind == "quarantined"]
    assert f"1 command(s) [{victim}]" in fault.detail and "never deserialized" in fault.detail
    (row,) = db(path).execute("SELECT id, reason FROM dq_command_quarantine").fetchall()
    assert row[0] == victim and "HMAC" in row[1]
    cq.close()


def via_drain(cq: CommandQueue) -> list[Any]:
    return [c.payload for c in cq.drain("dev")]


def via_leased_drain(cq: CommandQueue) -> list[Any]:
    cmds = cq.drain("dev", ack=True, limit=2)  # the limit counts authentic commands
    cq.ack(cmds)
    return [c.payload for c in cmds]


def via_consume(cq: CommandQueue) -> list[Any]:
    return [c.payload for c in cq.consume("dev", timeout=0)]


def via_confirmations(cq: CommandQueue) -> list[Any]:
    return [c.payload for c in cq.pending_confirmations("dev")]


@pytest.mark.parametrize("read", [via_drain, via_leased_drain, via_consume, via_confirmations])
def test_every_way_out_of_the_store_checks_first(
    tmp_path: Path, read: Callable[[CommandQueue], list[Any]]
) -> None:
    path, marker = tmp_path / "c.q", tmp_path / "unpickled"
    cq = CommandQueue(path)

    def enqueue(payload: str) -> int:
        if read is via_confirmations:
            return cq.enqueue_with_confirmation("dev", None, payload)
        return cq.enqueue("dev", payload)

    enqueue("before")
    victim = enqueue("victim")
    db(path).execute("UPDATE dq_command SET payload = ? WHERE id = ?", (evil(marker), victim))
    enqueue("after")
    assert read(cq) == ["before", "after"]
    assert not marker.exists()
    assert cq.counts().quarantined == 1
    assert [f.kind for f in cq.faults()] == ["quarantined"]
    cq.close()


def test_a_column_of_the_wrong_type_fails_the_check() -> None:
    key, payload = os.urandom(32), b"\x01\xa1x"
    good = (7, "dev", "t", payload, 1.5, None, 0, 0, 0, 0, None, None,
            sign_command(key, 7, "dev", "t", 1.5, False, payload))
    assert command_ok(key, good)
    for column, value in [(0, 8), (1, b"dev"), (1, "dev\udc80"), (2, b"t"), (2, None),
                          (3, "x"), (4, "1.5"), (4, None), (6, 1), (12, None), (12, "m"),
                          (12, b"m" * 32)]:
        bad = list(good)
        bad[column] = value
        assert not command_ok(key, bad), (column, value)


def test_rows_are_signed_and_an_upsert_signs_its_new_payload(tmp_path: Path) -> None:
    path = tmp_path / "c.q"
    cq = CommandQueue(path)
    cq.enqueue("dev", "plain", command_type="t")
    cid = cq.enqueue_or_update("dev", "set", {"v": 1})
    con = db(path)
    (before,) = con.execute("SELECT mac FROM dq_command WHERE id = ?", (cid,)).fetchone()
    # A forged payload in the upserted row is replaced, and signed, by the next update.
    con.execute("UPDATE dq_command SET payload = x'00' WHERE id = ?", (cid,))
    assert cq.enqueue_or_update("dev", "set", {"v": 2}) == cid
    (after,) = con.execute("SELECT mac FROM dq_command WHERE id = ?", (cid,)).fetchone()
    assert len(after) == 32 and after != before
    store = DiskcacheStore.attach(path)
    assert store.verify_commands() == {"checked": 2, "failed": [], "quarantined": 0,
                                       "unsigned": 0}
    store.close()
    assert [c.payload for c in cq.drain("dev")] == ["plain", {"v": 2}]
    assert cq.counts().quarantined == 0 and cq.faults() == []
    cq.close()


def test_a_commands_file_made_before_signing_is_signed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "c.q"
    cq = CommandQueue(path)
    ids = [cq.enqueue("dev", i) for i in range(3)]
    cq.enqueue_with_confirmation("dev", "fw", "held")
    cq.close()
    con = db(path)
    con.execute("DROP TABLE dq_command_quarantine")  # as an older durableq made it
    con.execute("ALTER TABLE dq_command DROP COLUMN mac")
    store = DiskcacheStore.attach(path)
    assert store.verify_commands() == {"checked": 0, "failed": [], "quarantined": 0,
                                       "unsigned": 4}
    store.close()
    cq = CommandQueue(path)
    assert [c.payload for c in cq.pending_confirmations("dev")] == ["held"]
    assert [c.id for c in cq.drain("dev")] == ids
    assert cq.counts().quarantined == 0 and cq.faults() == []
    cq.close()


def test_doctor_counts_failing_and_quarantined_commands(tmp_path: Path) -> None:
    path = tmp_path / "c.q"
    cq = CommandQueue(path)
    cq.enqueue("dev", "fine")
    victim = cq.enqueue("dev", "victim")
    db(path).execute("UPDATE dq_command SET payload = x'0100' WHERE id = ?", (victim,))

    def check() -> Any:
        with maintain(path) as queue:
            (found,) = [c for c in diagnose(queue).checks if c.name == "command signatures"]
        return found

    found = check()
    assert (found.status, found.ids) == ("problem", [victim])
    assert "1 command(s) fail their HMAC" in found.detail
    assert len(cq.pending("dev")) == 1  # meets it: quarantined
    found = check()
    assert found.status == "ok" and "1 command(s) authentic; 1 quarantined earlier" in found.detail
    cq.close()


def test_a_queue_without_commands_gets_no_command_check(qpath: Path) -> None:
    DiskcacheStore(qpath).close()
    with maintain(qpath) as queue:
        assert "command signatures" not in [c.name for c in diagnose(queue).checks]


def test_memory_store_commands_need_no_mac() -> None:
    cq = CommandQueue(store=MemoryStore())
    cq.enqueue("dev", "x")
    assert [c.payload for c in cq.drain("dev")] == ["x"]
    assert cq.counts().quarantined == 0 and cq.faults() == []
    cq.close()
