"""One contract, every command store: the CommandStore protocol's promises, verb by verb.

Server stores added later subclass ``CommandStoreContract`` and provide ``make_store``.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from durableq import (
    CommandNotFound,
    CommandStateError,
    CommandStore,
    DiskcacheStore,
    LeaseToken,
    MemoryStore,
    StoreTimeout,
)
from durableq.store import CommandRow

T0 = 1_000.0
ME = os.getpid()


def dead_pid() -> int:
    """A pid that no process has any more (its process exited and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def ids(rows: list[CommandRow]) -> list[int]:
    return [r.id for r in rows]


class CommandStoreContract:
    def make_store(self, tmp_path: Path) -> CommandStore:
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[CommandStore]:
        s = self.make_store(tmp_path)
        yield s
        s.command_close()

    def put(self, store: CommandStore, target: str, payload: bytes, *, hold: bool = False,
            expires_at: float | None = None, command_type: str | None = None) -> int:
        return store.command_put(target, payload, command_type=command_type,
                                 expires_at=expires_at, hold=hold, now=T0)

    def drain(self, store: CommandStore, target: str, *, now: float = T0,
              lease: float | None = None, limit: int | None = None,
              holder: int = ME) -> list[CommandRow]:
        return store.command_drain(target, now=now, limit=limit, lease=lease, holder=holder)

    def test_implements_the_protocol(self, store: CommandStore) -> None:
        assert isinstance(store, CommandStore)

    def test_put_then_pending_lists_oldest_first_without_delivering(
        self, store: CommandStore
    ) -> None:
        a = self.put(store, "dev", b"a", command_type="x", expires_at=T0 + 60)
        b = self.put(store, "dev", b"b")
        self.put(store, "other", b"c")
        assert a < b
        first = store.command_pending("dev", now=T0)
        assert first == store.command_pending("dev", now=T0), "pending must not deliver"
        assert first[0] == CommandRow(a, "dev", "x", b"a", T0, T0 + 60, False, False, 0)
        assert ids(first) == [a, b]

    def test_upsert_replaces_payload_and_expiry_in_place(self, store: CommandStore) -> None:
        a = self.put(store, "dev", b"a")
        x = store.command_upsert("dev", "temp", b"20", expires_at=T0 + 10, now=T0)
        b = self.put(store, "dev", b"b")
        again = store.command_upsert("dev", "temp", b"21", expires_at=T0 + 99, now=T0 + 1)
        assert again == x
        rows = store.command_pending("dev", now=T0 + 50)
        assert [(r.id, r.payload) for r in rows] == [(a, b"a"), (x, b"21"), (b, b"b")]
        assert rows[1].expires_at == T0 + 99 and rows[1].created_at == T0

    def test_upserts_are_per_target_and_type(self, store: CommandStore) -> None:
        one = store.command_upsert("dev", "temp", b"1", expires_at=None, now=T0)
        two = store.command_upsert("dev", "fan", b"2", expires_at=None, now=T0)
        three = store.command_upsert("other", "temp", b"3", expires_at=None, now=T0)
        assert len({one, two, three}) == 3

    def test_plain_put_with_a_type_is_not_replaced(self, store: CommandStore) -> None:
        a = self.put(store, "dev", b"a", command_type="temp")
        x = store.command_upsert("dev", "temp", b"x", expires_at=None, now=T0)
        assert a != x
        assert [r.payload for r in store.command_pending("dev", now=T0)] == [b"a", b"x"]

    def test_upsert_after_delivery_stores_a_new_command(self, store: CommandStore) -> None:
        x = store.command_upsert("dev", "temp", b"1", expires_at=None, now=T0)
        assert ids(self.drain(store, "dev")) == [x]
        y = store.command_upsert("dev", "temp", b"2", expires_at=None, now=T0)
        assert y != x
        assert [r.payload for r in self.drain(store, "dev")] == [b"2"]

    def test_upsert_while_in_flight_supersedes_the_older_on_nack(
        self, store: CommandStore
    ) -> None:
        store.command_upsert("dev", "temp", b"old", expires_at=None, now=T0)
        (old,) = self.drain(store, "dev", lease=30)
        new = store.command_upsert("dev", "temp", b"new", expires_at=None, now=T0)
        assert new != old.id
        assert store.command_nack([LeaseToken(old.id, old.attempt)]) == 1
        assert [r.payload for r in store.command_pending("dev", now=T0)] == [b"new"]
        assert [r.payload for r in self.drain(store, "dev")] == [b"new"]

    def test_retaken_superseded_upsert_is_dropped(self, store: CommandStore) -> None:
        store.command_upsert("dev", "temp", b"old", expires_at=None, now=T0)
        self.drain(store, "dev", lease=5)
        store.command_upsert("dev", "temp", b"new", expires_at=None, now=T0)
        assert [r.payload for r in self.drain(store, "dev", now=T0 + 6)] == [b"new"]
        assert store.command_counts(T0 + 6).in_flight == 0

    def test_held_until_confirmed(self, store: CommandStore) -> None:
        h = self.put(store, "dev", b"fw", hold=True)
        p = self.put(store, "dev", b"plain")
        assert ids(self.drain(store, "dev")) == [p]
        held = store.command_pending("dev", now=T0, held_only=True)
        assert [(r.id, r.requires_confirmation, r.confirmed) for r in held] == [(h, True, False)]
        assert store.command_confirm(h, now=T0) == "dev"
        assert store.command_confirm(h, now=T0) == "dev", "confirming twice is harmless"
        assert store.command_pending("dev", now=T0, held_only=True) == []
        (row,) = self.drain(store, "dev")
        assert (row.id, row.requires_confirmation, row.confirmed) == (h, True, True)

    def test_confirm_errors(self, store: CommandStore) -> None:
        delivered = self.put(store, "dev", b"a")
        self.drain(store, "dev")
        plain = self.put(store, "dev", b"b")
        expired = self.put(store, "dev", b"c", hold=True, expires_at=T0 + 1)
        with pytest.raises(CommandNotFound):
            store.command_confirm(10_000, now=T0)
        with pytest.raises(CommandStateError, match="delivered"):
            store.command_confirm(delivered, now=T0)
        with pytest.raises(CommandStateError, match="does not require"):
            store.command_confirm(plain, now=T0)
        with pytest.raises(CommandStateError, match="expired"):
            store.command_confirm(expired, now=T0 + 1)
        held = self.put(store, "dev", b"d", hold=True)
        store.command_confirm(held, now=T0)
        self.drain(store, "dev", lease=30)
        with pytest.raises(CommandStateError, match="being delivered"):
            store.command_confirm(held, now=T0)

    def test_cancel(self, store: CommandStore) -> None:
        a = self.put(store, "dev", b"a")
        h = self.put(store, "dev", b"h", hold=True)
        b = self.put(store, "dev", b"b")
        assert store.command_cancel(a, now=T0) == "dev"
        assert store.command_cancel(h, now=T0) == "dev"
        with pytest.raises(CommandStateError):
            store.command_cancel(a, now=T0)
        with pytest.raises(CommandNotFound):
            store.command_cancel(10_000, now=T0)
        self.drain(store, "dev", lease=30)
        with pytest.raises(CommandStateError, match="being delivered"):
            store.command_cancel(b, now=T0)
        assert store.command_pending("dev", now=T0 + 31) != []

    def test_drain_takes_ready_ones_oldest_first_once(self, store: CommandStore) -> None:
        put = [self.put(store, "dev", b"%d" % i) for i in range(5)]
        self.put(store, "other", b"x")
        first = self.drain(store, "dev", limit=2)
        assert ids(first) == put[:2] and [r.attempt for r in first] == [1, 1]
        assert ids(self.drain(store, "dev")) == put[2:]
        assert self.drain(store, "dev") == []
        assert len(store.command_pending("other", now=T0)) == 1

    def test_ids_are_never_reused(self, store: CommandStore) -> None:
        a = self.put(store, "dev", b"a")
        self.drain(store, "dev")
        assert self.put(store, "dev", b"b") > a

    def test_leased_commands_come_back_after_the_deadline(self, store: CommandStore) -> None:
        a = self.put(store, "dev", b"a")
        (first,) = self.drain(store, "dev", lease=5)
        assert first.attempt == 1
        assert self.drain(store, "dev", now=T0 + 4, lease=5) == []
        assert store.command_pending("dev", now=T0 + 4) == [], "out on a live lease"
        assert ids(store.command_pending("dev", now=T0 + 6)) == [a]
        (second,) = self.drain(store, "dev", now=T0 + 6, lease=5)
        assert (second.id, second.attempt) == (a, 2)
        assert store.command_ack([LeaseToken(a, 1)]) == 0, "the older delivery's ack is stale"
        assert store.command_ack([LeaseToken(a, 2)]) == 1
        assert self.drain(store, "dev", now=T0 + 60) == []

    def test_a_dead_holder_loses_its_lease_at_once(self, store: CommandStore) -> None:
        a = self.put(store, "dev", b"a")
        self.drain(store, "dev", lease=300, holder=dead_pid())
        (again,) = self.drain(store, "dev", lease=300)
        assert (again.id, again.attempt) == (a, 2)
        assert self.drain(store, "dev", lease=300) == [], "a live holder keeps its lease"

    def test_nack_returns_commands_in_order(self, store: CommandStore) -> None:
        put = [self.put(store, "dev", b"%d" % i) for i in range(3)]
        taken = self.drain(store, "dev", lease=30)
        assert store.command_nack([LeaseToken(r.id, r.attempt) for r in taken[:2]]) == 2
        assert store.command_nack([LeaseToken(put[0], 7)]) == 0, "stale token"
        assert ids(self.drain(store, "dev")) == put[:2]

    def test_expired_are_never_returned_and_expire_removes_them(
        self, store: CommandStore
    ) -> None:
        self.put(store, "dev", b"old", expires_at=T0 + 5)
        keep = self.put(store, "dev", b"keep", expires_at=T0 + 50)
        self.put(store, "dev", b"held", hold=True, expires_at=T0 + 5)
        store.command_upsert("dev", "t", b"u", expires_at=T0 + 5, now=T0)
        assert ids(store.command_pending("dev", now=T0 + 5)) == [keep]
        assert store.command_pending("dev", now=T0 + 5, held_only=True) == []
        counts = store.command_counts(T0 + 5)
        assert (counts.ready, counts.held, counts.expired) == (1, 0, 3)
        assert store.command_expire(T0 + 5) == 3
        assert store.command_counts(T0 + 5).expired == 0
        assert ids(self.drain(store, "dev", now=T0 + 5)) == [keep]

    def test_expired_in_flight_commands_are_not_redelivered(self, store: CommandStore) -> None:
        self.put(store, "dev", b"a", expires_at=T0 + 5)
        self.drain(store, "dev", lease=1)
        assert self.drain(store, "dev", now=T0 + 6) == []
        assert store.command_expire(T0 + 6) == 1

    def test_watch_wakes_on_its_targets_commands(self, store: CommandStore) -> None:
        with store.command_watch("dev") as watch:
            assert not watch.wait(0.01)
            self.put(store, "other", b"x")
            assert not watch.wait(0.01), "another target's command must not wake it"
            self.put(store, "dev", b"y")
            assert watch.wait(30)
            h = self.put(store, "dev", b"held", hold=True)
            store.command_confirm(h, now=T0)
            assert watch.wait(30)
            store.command_upsert("dev", "t", b"u", expires_at=None, now=T0)
            assert watch.wait(30)

    def test_counts(self, store: CommandStore) -> None:
        self.put(store, "a", b"1")
        self.put(store, "a", b"2", hold=True)
        self.put(store, "b", b"3")
        self.drain(store, "b", lease=30)
        assert tuple(store.command_counts(T0)) == (1, 1, 1, 0, 0)


class TestMemoryCommandStore(CommandStoreContract):
    def make_store(self, tmp_path: Path) -> CommandStore:
        return MemoryStore()


class TestDiskcacheCommandStore(CommandStoreContract):
    def make_store(self, tmp_path: Path) -> CommandStore:
        return DiskcacheStore(tmp_path / "q")

    def test_commands_have_their_own_private_file(self, tmp_path: Path) -> None:
        s = DiskcacheStore(tmp_path / "q")
        s.command_put("dev", b"x", command_type=None, expires_at=None, hold=False, now=T0)
        for name in ("commands.db", "commands.db-wal"):
            assert stat.S_IMODE(os.stat(tmp_path / "q" / name).st_mode) == 0o600
        con = sqlite3.connect(tmp_path / "q" / "cache.db")
        tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master")}
        con.close()
        assert not any("command" in t for t in tables)
        s.command_close()
        s.close()

    def test_state_survives_reopening_and_ids_stay_unique(self, tmp_path: Path) -> None:
        s = DiskcacheStore(tmp_path / "q")
        a = s.command_put("dev", b"a", command_type=None, expires_at=None, hold=False, now=T0)
        h = s.command_put("dev", b"h", command_type=None, expires_at=None, hold=True, now=T0)
        s.command_confirm(h, now=T0)
        s.command_drain("dev", now=T0, limit=1, lease=None, holder=ME)
        s.command_close()
        s = pickle.loads(pickle.dumps(DiskcacheStore(tmp_path / "q")))
        assert ids(s.command_pending("dev", now=T0)) == [h]
        s.command_drain("dev", now=T0, limit=None, lease=None, holder=ME)
        assert s.command_put("dev", b"c", command_type=None, expires_at=None, hold=False,
                             now=T0) > h > a
        with pytest.raises(CommandStateError):
            s.command_cancel(h, now=T0)
        s.command_close()

    def test_a_drain_finding_nothing_takes_no_write_lock(self, tmp_path: Path) -> None:
        s = DiskcacheStore(tmp_path / "q", timeout=0.2)
        s.command_put("busy", b"x", command_type=None, expires_at=None, hold=False, now=T0)
        s.command_put("held", b"x", command_type=None, expires_at=None, hold=True, now=T0)
        other = sqlite3.connect(tmp_path / "q" / "commands.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process mid-write
        try:
            for target in ("idle", "held"):
                assert s.command_drain(target, now=T0, limit=None, lease=None, holder=ME) == []
            with pytest.raises(StoreTimeout):
                s.command_drain("busy", now=T0, limit=None, lease=None, holder=ME)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert len(s.command_drain("busy", now=T0, limit=None, lease=None, holder=ME)) == 1
        s.command_close()

    def test_store_size_follows_live_commands(self, tmp_path: Path) -> None:
        s = DiskcacheStore(tmp_path / "q")
        for i in range(2000):
            target, type_ = f"dev-{i % 10}", f"t{i // 10 % 5}"
            s.command_upsert(target, type_, b"x" * 100, expires_at=None, now=T0)
        assert tuple(s.command_counts(T0)) == (50, 0, 0, 0, 0)
        con = sqlite3.connect(tmp_path / "q" / "commands.db")
        (rows,) = con.execute("SELECT count(*) FROM dq_command").fetchone()
        con.close()
        assert rows == 50
        s.command_close()
