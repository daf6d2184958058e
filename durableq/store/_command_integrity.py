"""HMAC on command-queue records: every row of ``dq_command`` (``commands.db``) carries a
MAC over its header (id, target, type, creation time, hold flag) and payload, with the queue
directory's key (``_integrity``), checked before a payload leaves the store.

A row failing its check (altered, truncated, written with another key or none, or copied
from another id or target) is never handed out, so never deserialized: the verb that meets
it moves it to ``dq_command_quarantine`` (in a drain's own transaction; a read takes a short
one), counts it (``command_counts().quarantined``) and logs a ``quarantined`` fault in the
store's fault log; the other commands go on. Bookkeeping columns (state, expiry, attempt,
keyed, holder, lease deadline) are not signed: verbs rewrite them, and altering them can
reorder, delay, drop or release work but never makes a consumer decode a payload the key's
holders did not write.
"""

from __future__ import annotations

import hmac
import os
import sqlite3
import struct
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._commandstore import ROW_LAYOUT
from ._integrity import WHY, sign_command

T = TypeVar("T")

QUARANTINE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS dq_command_quarantine (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, reason TEXT NOT NULL, target TEXT, type TEXT,
    created REAL, hold INTEGER, payload BLOB, mac BLOB
);
"""
_SIGN: Final = "UPDATE dq_command SET mac = ? WHERE id = ?"
_ROWS: Final = f"SELECT {', '.join(ROW_LAYOUT)} FROM dq_command"
#: Rows as ``command_ok`` takes them.
SIGNED_ROWS: Final = f"SELECT {', '.join(ROW_LAYOUT)}, mac FROM dq_command"


def command_ok(key: bytes, r: Sequence[Any]) -> bool:
    """Whether a row laid out as ``ROW_LAYOUT`` plus its MAC (at 12) holds that MAC.

    A column of the wrong type (SQLite keeps what it is given) fails, as a bad MAC does.
    """
    try:
        return hmac.compare_digest(sign_command(key, r[0], r[1], r[2], r[4], r[6], r[3]), r[12])
    except (TypeError, AttributeError, struct.error, UnicodeEncodeError):
        # not bytes or None for a MAC or payload, not str for target or type (no
        # .encode), not a number for the id or time, a lone surrogate: no producer wrote it
        return False


class CommandIntegrity:
    """Signing, checking, quarantine and migration for ``SQLiteCommands``."""

    path: str

    if TYPE_CHECKING:
        def _mac_key(self, *, create: bool = True) -> bytes: ...
        def _report(self, kind: str, ids: Sequence[int], now: float) -> None: ...
        def _busy_retry(self, step: str, fn: Callable[[], T]) -> T: ...
        def _write(self, con: sqlite3.Connection, begin: str = ...) -> Any: ...

    def _command_sign(
        self, con: sqlite3.Connection, id_: int, target: str, command_type: str | None,
        created: float, hold: bool, payload: bytes,
    ) -> None:
        """Inside the caller's write: sign the row just stored or updated as ``id_``."""
        key = self._mac_key(create=False)
        mac = sign_command(key, id_, target, command_type, created, hold, bytes(payload))
        con.execute(_SIGN, (mac, id_))

    def _command_split(
        self, rows: Sequence[Sequence[Any]], limit: int | None = None
    ) -> tuple[list[Any], list[Any]]:
        """Rows in order: up to ``limit`` authentic ones, and the failing ones met before."""
        key = self._mac_key(create=False)
        good: list[Any] = []
        bad: list[Any] = []
        for r in rows:
            if limit is not None and len(good) >= limit:
                break
            (good if command_ok(key, r) else bad).append(r)
        return good, bad

    def _command_quarantine(
        self, con: sqlite3.Connection, rows: Sequence[Sequence[Any]], now: float
    ) -> None:
        """Inside the caller's write: copy failing rows to quarantine and delete them."""
        con.executemany(
            "INSERT OR REPLACE INTO dq_command_quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r[0], now, WHY, r[1], r[2], r[4], r[6], r[3], r[12]) for r in rows],
        )
        con.executemany("DELETE FROM dq_command WHERE id = ?", [(r[0],) for r in rows])

    def _command_set_aside(self, con: sqlite3.Connection, ids: list[int], now: float) -> None:
        """Quarantine rows a read found failing, in a write of its own, if they still fail
        (an upsert may have stored a signed payload in one meanwhile); then report them."""
        marks = ", ".join("?" * len(ids))
        with self._write(con):
            rows = con.execute(f"{SIGNED_ROWS} WHERE id IN ({marks}) ORDER BY id", ids).fetchall()
            _, bad = self._command_split(rows)
            self._command_quarantine(con, bad, now)
        if bad:
            self._report("command", [r[0] for r in bad], now)

    def _command_migrate(self, con: sqlite3.Connection) -> None:
        """Give a ``commands.db`` made before signing its MAC column, and sign what it
        holds (it was written while only its owner could write there)."""
        if _has_mac(con):
            return
        with self._write(con):
            if _has_mac(con):
                return  # another process migrated it meanwhile
            con.execute("ALTER TABLE dq_command ADD COLUMN mac BLOB")
            key = self._mac_key(create=False)
            con.executemany(_SIGN, [
                (sign_command(key, r[0], r[1], r[2], r[4], bool(r[6]), r[3]), r[0])
                for r in con.execute(_ROWS).fetchall()
            ])

    # -- for durableq doctor ---------------------------------------------------------------

    def verify_commands(self) -> dict[str, Any] | None:
        """Check every command in ``commands.db`` against its MAC, changing nothing (a
        read-only connection); None if no command queue was ever kept in the directory.

        Returns ``{"checked": n, "failed": [ids], "quarantined": n, "unsigned": n}``
        (``unsigned``: commands of a file made before signing, signed when it is next
        opened). Raises ``ConfigurationError`` if the directory has no key.
        """
        path = os.path.join(self.path, "commands.db")
        if not os.path.exists(path):
            return None
        key = self._mac_key(create=False)
        uri = f"file:{urllib.parse.quote(path)}?mode=ro"
        con = self._busy_retry("open", lambda: sqlite3.connect(uri, uri=True, timeout=0))
        try:
            def read() -> dict[str, Any] | None:
                tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master")}
                quarantined = 0
                if "dq_command_quarantine" in tables:
                    (quarantined,) = con.execute(
                        "SELECT count(*) FROM dq_command_quarantine").fetchone()
                if "dq_command" not in tables:
                    return None
                if not _has_mac(con):
                    (n,) = con.execute("SELECT count(*) FROM dq_command").fetchone()
                    return {"checked": 0, "failed": [], "quarantined": quarantined,
                            "unsigned": n}
                rows = con.execute(SIGNED_ROWS).fetchall()
                return {"checked": len(rows),
                        "failed": sorted(r[0] for r in rows if not command_ok(key, r)),
                        "quarantined": quarantined, "unsigned": 0}

            return self._busy_retry("read", read)
        finally:
            con.close()


def _has_mac(con: sqlite3.Connection) -> bool:
    return any(row[1] == "mac" for row in con.execute("PRAGMA table_info(dq_command)"))
