"""Command queues in SQLite: the ``CommandStore`` verbs for stores kept in a directory.

Commands live in their own file, ``commands.db`` (WAL, created 0600), so they never
contend with the message tables. One table, ``dq_command``; a command is ready, held
(waiting for confirmation) or in flight (drained with a lease); delivered and cancelled
ones are deleted, so the file holds live commands only. AUTOINCREMENT keeps ids from ever
coming back (``confirm``/``cancel`` take ids from callers).

- Latest intent: the partial unique index ``(target, type) WHERE keyed AND ready`` lets
  one ``INSERT ... ON CONFLICT DO UPDATE`` either store an upsert or overwrite the
  earlier one, atomically across processes.
- Drain: one ``BEGIN IMMEDIATE`` reads the target's ready rows oldest first and deletes
  them, or moves them in flight with the holder's pid and a lease deadline; a later drain
  retakes in-flight rows whose deadline passed or whose holder died.
- Expiry is a column compared at read time; ``command_expire`` deletes what expired.
- Integrity: each row carries an HMAC over its header and payload, written in the
  transaction that stores the payload and checked before a payload leaves the store; a
  failing row goes to ``dq_command_quarantine`` instead (``_command_integrity``).
- Checkpoints: SQLite's automatic WAL checkpoint runs in whichever commit crosses its
  threshold (1000 pages) and fsyncs the database (~5-10 ms). A drain is what a
  reconnecting target waits for, so a drain's commit checkpoints only past
  ``DRAIN_AUTOCHECKPOINT`` pages: the other verbs do it first, unless nothing but drains
  ran for a while. (A checkpoint in another thread does not help: under a stream of
  drains it never catches up with the WAL's end, so the WAL never restarts.)
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any, Final

from .._errors import CommandStateError
from .._records import LeaseToken, State
from .._security import create_private
from ._command_integrity import QUARANTINE_SCHEMA, CommandIntegrity
from ._command_wakeup import FifoWakeups, FifoWatch
from ._commandstore import (
    ROW_LAYOUT,
    CommandCounts,
    CommandRow,
    check_state,
    missing_error,
    select_live,
    to_row,
)
from ._sqlite import SQLiteFiles, guarded

#: WAL pages past which a drain's commit checkpoints (other verbs: SQLite's 1000).
DRAIN_AUTOCHECKPOINT: Final = 4096
#: Bytes a WAL is cut back to once checkpointed (its high-water mark stays otherwise).
WAL_SIZE_LIMIT: Final = 4 << 20
_DB: Final = "commands.db"
_WAKE_DIR: Final = "command-wake"
_READY, _HELD, _IN_FLIGHT = int(State.READY), int(State.HELD), int(State.IN_FLIGHT)

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS dq_command (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    type TEXT,
    state INTEGER NOT NULL,
    keyed INTEGER NOT NULL,
    hold INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    attempt INTEGER NOT NULL DEFAULT 0,
    holder INTEGER,
    deadline REAL,
    payload BLOB NOT NULL,
    mac BLOB
);
CREATE INDEX IF NOT EXISTS dq_command_target ON dq_command (target, state, id);
CREATE UNIQUE INDEX IF NOT EXISTS dq_command_latest ON dq_command (target, type)
    WHERE keyed = 1 AND state = {_READY};
{QUARANTINE_SCHEMA}"""
_COLUMNS: Final = ", ".join(ROW_LAYOUT)
_INSERT: Final = (
    "INSERT INTO dq_command (target, type, state, keyed, hold, created, expires, payload) "
    "VALUES (?, ?, ?, 0, ?, ?, ?, ?)"
)
_UPSERT: Final = f"""
INSERT INTO dq_command (target, type, state, keyed, hold, created, expires, payload)
VALUES (?, ?, {_READY}, 1, 0, ?, ?, ?)
ON CONFLICT (target, type) WHERE keyed = 1 AND state = {_READY}
DO UPDATE SET payload = excluded.payload, expires = excluded.expires
RETURNING id, created
"""
_LIVE: Final = f"""
SELECT {_COLUMNS}, mac FROM dq_command
 WHERE target = ? AND state IN ({{states}}) AND (expires IS NULL OR expires > ?)
 ORDER BY id
"""
_TAKE: Final = _LIVE.format(states=f"{_READY}, {_IN_FLIGHT}")
# A read first: a drain finding nothing takes no write lock (idle consumers, empty targets).
_ANY: Final = (
    f"SELECT 1 FROM dq_command WHERE target = ? AND state IN ({_READY}, {_IN_FLIGHT}) LIMIT 1"
)
_PENDING: Final = _LIVE.format(states=f"{_READY}, {_HELD}, {_IN_FLIGHT}")
_HELD_ROWS: Final = _LIVE.format(states=f"{_HELD}")
_LAST_ID: Final = "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'dq_command'"
_TOKEN: Final = f"WHERE id = ? AND attempt = ? AND state = {_IN_FLIGHT}"

# After fork(), the parent's connections stay referenced here, never closed: closing one in
# the child would drop the POSIX locks the child's own connections hold on the same file.
_inherited: list[sqlite3.Connection] = []


def _delete(con: sqlite3.Connection, ids: list[int]) -> None:
    """Delete rows by id, a few hundred per statement (one statement each costs ~5 us)."""
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        con.execute(f"DELETE FROM dq_command WHERE id IN ({', '.join('?' * len(chunk))})", chunk)


class SQLiteCommands(CommandIntegrity, SQLiteFiles):
    """The ``CommandStore`` verbs over ``commands.db`` in the store's directory (``path``)."""

    # -- connections and wakeups ------------------------------------------------------

    def _command_db(self) -> sqlite3.Connection:
        local: Any = self.__dict__.get("_cq_local")
        if local is None:
            local = self.__dict__.setdefault("_cq_local", threading.local())
        if getattr(local, "pid", None) != os.getpid():
            if getattr(local, "con", None) is not None:
                _inherited.append(local.con)
            local.pid, local.con = os.getpid(), None
        if local.con is None:
            create_private(os.path.join(self.path, _DB))  # 0600 before SQLite makes it
            con = self._connect(_DB)
            con.execute("PRAGMA cache_size = -16384")  # 16 MiB: the target index stays hot
            con.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            self._busy_retry("create", lambda: con.executescript(_SCHEMA))
            self._busy_retry("create", lambda: self._command_migrate(con))
            local.con = con
        return local.con  # type: ignore[no-any-return]

    def _command_wakeups(self) -> FifoWakeups:
        wakeups: FifoWakeups | None = self.__dict__.get("_cq_wakeups")
        if wakeups is None:
            wakeups = self.__dict__.setdefault(
                "_cq_wakeups", FifoWakeups(os.path.join(self.path, _WAKE_DIR))
            )
        return wakeups

    def _command_missing(
        self, con: sqlite3.Connection, operation: str, command_id: int
    ) -> Exception:
        (last,) = con.execute(_LAST_ID).fetchone()
        return missing_error(operation, command_id, last)

    # -- producers ------------------------------------------------------------------------

    @guarded
    def command_put(
        self,
        target: str,
        payload: bytes,
        *,
        command_type: str | None,
        expires_at: float | None,
        hold: bool,
        now: float,
    ) -> int:
        con = self._command_db()
        state = _HELD if hold else _READY
        with self._write(con):
            cur = con.execute(_INSERT, (target, command_type, state, int(hold), now, expires_at,
                                        payload))
            id_: int = cur.lastrowid  # type: ignore[assignment]
            self._command_sign(con, id_, target, command_type, now, hold, payload)
        if not hold:
            self._command_wakeups().poke([target])
        return id_

    @guarded
    def command_upsert(
        self, target: str, command_type: str, payload: bytes, *, expires_at: float | None,
        now: float,
    ) -> int:
        con = self._command_db()
        with self._write(con):
            args = (target, command_type, now, expires_at, payload)
            id_, created = con.execute(_UPSERT, args).fetchone()
            # Kept id and creation time, new payload: sign it again.
            self._command_sign(con, id_, target, command_type, created, False, payload)
        self._command_wakeups().poke([target])
        return id_  # type: ignore[no-any-return]

    # -- consumers ------------------------------------------------------------------------

    @guarded
    def command_pending(
        self, target: str, *, now: float, held_only: bool = False
    ) -> list[CommandRow]:
        con = self._command_db()
        sql = _HELD_ROWS if held_only else _PENDING
        rows = self._busy_retry("read", lambda: con.execute(sql, (target, now)).fetchall())
        live, _ = select_live(rows, now)
        good, bad = self._command_split(live)
        if bad:  # never handed out; set aside in a write of its own
            self._command_set_aside(con, [r[0] for r in bad], now)
        return [to_row(r) for r in good]

    @guarded
    def command_drain(
        self, target: str, *, now: float, limit: int | None, lease: float | None, holder: int
    ) -> list[CommandRow]:
        con = self._command_db()
        if not self._busy_retry("read", lambda: con.execute(_ANY, (target,)).fetchone()):
            return []
        (pages,) = con.execute("PRAGMA wal_autocheckpoint").fetchone()
        con.execute(f"PRAGMA wal_autocheckpoint = {DRAIN_AUTOCHECKPOINT}")
        try:
            return self._command_take(con, target, now, limit, lease, holder)
        finally:
            con.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")

    def _command_take(
        self, con: sqlite3.Connection, target: str, now: float, limit: int | None,
        lease: float | None, holder: int,
    ) -> list[CommandRow]:
        with self._write(con):
            rows, superseded = select_live(con.execute(_TAKE, (target, now)).fetchall(), now)
            rows, bad = self._command_split(rows, limit)  # checked before they leave
            if bad:
                self._command_quarantine(con, bad, now)
            gone = [r[0] for r in rows] if lease is None else []
            _delete(con, gone + superseded)
            if lease is not None:
                con.executemany(
                    f"UPDATE dq_command SET state = {_IN_FLIGHT}, attempt = attempt + 1, "
                    "holder = ?, deadline = ? WHERE id = ?",
                    [(holder, now + lease, r[0]) for r in rows],
                )
        if bad:
            self._report("command", [r[0] for r in bad], now)
        return [to_row(r, r[8] + 1) for r in rows]

    @guarded
    def command_ack(self, tokens: Sequence[LeaseToken]) -> int:
        if not tokens:
            return 0
        con = self._command_db()
        with self._write(con):
            done: int = con.executemany(f"DELETE FROM dq_command {_TOKEN}", tokens).rowcount
        return done

    @guarded
    def command_nack(self, tokens: Sequence[LeaseToken]) -> int:
        if not tokens:
            return 0
        con = self._command_db()
        targets = set()
        with self._write(con):
            applied = 0
            for token in tokens:
                row = con.execute(f"SELECT target, type, keyed FROM dq_command {_TOKEN}",
                                  token).fetchone()
                if row is None:
                    continue
                target, type_, keyed = row
                applied += 1
                if keyed and con.execute(
                    f"SELECT 1 FROM dq_command WHERE target = ? AND type = ? AND keyed = 1 "
                    f"AND state = {_READY}", (target, type_),
                ).fetchone():
                    con.execute("DELETE FROM dq_command WHERE id = ?", (token[0],))
                    continue  # a newer intent replaced it meanwhile
                con.execute(
                    f"UPDATE dq_command SET state = {_READY}, holder = NULL, deadline = NULL "
                    "WHERE id = ?", (token[0],),
                )
                targets.add(target)
        self._command_wakeups().poke(targets)
        return applied

    @guarded
    def command_confirm(self, command_id: int, *, now: float) -> str:
        con = self._command_db()
        with self._write(con):
            row = con.execute(
                "SELECT target, state, hold, expires FROM dq_command WHERE id = ?", (command_id,)
            ).fetchone()
            if row is None:
                raise self._command_missing(con, "confirm", command_id)
            target, state, hold, expires = row
            check_state("confirm", command_id, state, expires, now)
            if not hold:
                raise CommandStateError(command_id, "confirm", "it does not require confirmation")
            if state == _HELD:
                con.execute(f"UPDATE dq_command SET state = {_READY} WHERE id = ?", (command_id,))
        self._command_wakeups().poke([target])
        return target  # type: ignore[no-any-return]

    @guarded
    def command_cancel(self, command_id: int, *, now: float) -> str:
        con = self._command_db()
        with self._write(con):
            row = con.execute(
                "SELECT target, state FROM dq_command WHERE id = ?", (command_id,)
            ).fetchone()
            if row is None:
                raise self._command_missing(con, "cancel", command_id)
            if row[1] == _IN_FLIGHT:
                check_state("cancel", command_id, row[1], None, now)
            con.execute("DELETE FROM dq_command WHERE id = ?", (command_id,))
        return row[0]  # type: ignore[no-any-return]

    @guarded
    def command_expire(self, now: float) -> int:
        con = self._command_db()
        with self._write(con):
            gone: int = con.execute(
                "DELETE FROM dq_command WHERE expires IS NOT NULL AND expires <= ?", (now,)
            ).rowcount
        return gone

    @guarded
    def command_counts(self, now: float) -> CommandCounts:
        con = self._command_db()
        rows = self._busy_retry("read", lambda: con.execute(
            "SELECT state, coalesce(expires <= ?, 0), count(*) FROM dq_command GROUP BY 1, 2 "
            "UNION ALL SELECT -1, 0, count(*) FROM dq_command_quarantine",  # -1: quarantined
            (now,),
        ).fetchall())
        live = {state: n for state, expired, n in rows if not expired}
        return CommandCounts(
            ready=live.get(_READY, 0), held=live.get(_HELD, 0),
            in_flight=live.get(_IN_FLIGHT, 0),
            expired=sum(n for _, expired, n in rows if expired),
            quarantined=live.get(-1, 0),
        )

    def command_watch(self, target: str) -> FifoWatch:
        return self._command_wakeups().watch(target)

    @guarded
    def command_close(self) -> None:
        local: Any = self.__dict__.get("_cq_local")
        if local is not None and getattr(local, "pid", None) == os.getpid() and local.con:
            local.con.close()
            local.con = None
