"""Stored records carry an HMAC-SHA256, checked before anything is deserialized.

The key is 32 random bytes in ``key`` (0600) in the queue directory, made by the first
process that opens the queue, or given as ``key=`` or ``DURABLEQ_KEY`` so that several hosts
(or a directory someone else could read) share one. Each message is signed over its
header (id, creation time) and body; each kept result over its id and body; each command
(``commands.db``, ``_command_integrity``) over its id, target, type, creation time, hold flag
and payload. The id binds a record to its place: a valid record copied into another row
fails. Bookkeeping columns (state, priority, due time, attempts) are not signed: the owner
rewrites them, and altering them can reorder or delay work but never makes a process run
code of someone's choosing.

A record failing its check is never unpickled: the owner moves it to quarantine
(``dq_quarantine`` in the owner's ledger, out of the delivery order), counts it, and logs
a fault; the queue goes on.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final, Protocol

from .._errors import ConfigurationError, StoreError
from .._records import Fault

KEY_FILE: Final = "key"
KEY_SIZE: Final = 32
ENV: Final = "DURABLEQ_KEY"
_MESSAGE: Final = struct.Struct("<4sqd")  # tag, id, created
_RESULT: Final = struct.Struct("<4sq")  # tag, id
_COMMAND: Final = struct.Struct("<4sqd?Ii")  # tag, id, created, hold, len(target), len(type)


def key_from(spec: bytes | str) -> bytes:
    """A key given by the user: bytes, or text (64 hex digits, or any passphrase)."""
    if isinstance(spec, str):
        try:
            raw = bytes.fromhex(spec) if len(spec) == 2 * KEY_SIZE else spec.encode()
        except ValueError:
            raw = spec.encode()
    elif isinstance(spec, bytes | bytearray):
        raw = bytes(spec)
    else:
        raise TypeError(f"key must be bytes or str, not {type(spec).__name__}")
    if len(raw) < 16:
        raise ConfigurationError(
            f"a queue key must be at least 16 bytes, not {len(raw)}: use 32 random bytes "
            '(python -c "import secrets; print(secrets.token_hex(32))")'
        )
    return raw


def load_key(directory: str, spec: bytes | str | None, *, create: bool) -> bytes | None:
    """The queue's key: ``spec``, else ``DURABLEQ_KEY``, else the key file (made 0600 if
    missing and ``create``). None if there is none and ``create`` is False."""
    if spec is not None:
        return key_from(spec)
    env = os.environ.get(ENV)
    if env:
        return key_from(env)
    path = os.path.join(directory, KEY_FILE)
    try:
        with open(path, "rb") as f:
            key = f.read(KEY_SIZE + 1)
    except FileNotFoundError:
        if not create:
            return None
        return _create_key(path)
    if len(key) != KEY_SIZE:
        raise ConfigurationError(
            f"{path} holds {len(key)} bytes, not a {KEY_SIZE}-byte queue key; restore it, or "
            f"remove it only if the queue holds nothing (every stored record would fail)"
        )
    return key


def _create_key(path: str) -> bytes:
    """Write a fresh key atomically: another process creating one at the same moment
    either wins (we read its key) or loses (it reads ours)."""
    key = os.urandom(KEY_SIZE)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if the key exists: never replaced
    except FileExistsError:
        with open(path, "rb") as f:
            key = f.read(KEY_SIZE)
    finally:
        os.unlink(tmp)
    return key


def sign_message(
    key: bytes, id_: int, created: float, body: bytes | bytearray | memoryview
) -> bytes:
    # A copy of a keyed HMAC: cheaper than hmac.digest's one-shot (see _keyed).
    h = _keyed(key).copy()
    h.update(_MESSAGE.pack(b"dqm1", id_, created))
    h.update(body)
    return h.digest()


def sign_result(key: bytes, id_: int, body: bytes) -> bytes:
    h = _keyed(key).copy()
    h.update(_RESULT.pack(b"dqr1", id_))
    h.update(body)
    return h.digest()


def sign_command(
    key: bytes, id_: int, target: str, command_type: str | None, created: float, hold: bool,
    payload: bytes,
) -> bytes:
    """A command's MAC over its header and payload; lengths keep target and type apart
    (``-1``: no type)."""
    t = target.encode()
    c = b"" if command_type is None else command_type.encode()
    n = -1 if command_type is None else len(c)
    h = _keyed(key).copy()
    h.update(_COMMAND.pack(b"dqc1", id_, created, hold, len(t), n) + t + c + payload)
    return h.digest()


class _Mac(Protocol):
    """What a keyed HMAC offers: ``hmac.HMAC``, or OpenSSL's own object behind it."""

    def copy(self) -> _Mac: ...
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> _Mac:
    """An HMAC already keyed, to be copied: a copy costs less than ``hmac.digest``'s
    one-shot (OpenSSL 3 looks up the algorithm on every such call), and every put, drain
    and lease signs or checks a record. OpenSSL's own HMAC object when ``hmac`` wraps one
    (CPython's ``HMAC._hmac``): its copy, update and digest skip a Python frame each
    (2.1 -> 1.4 us a MAC)."""
    h = hmac.new(key, digestmod=hashlib.sha256)
    inner = getattr(h, "_hmac", None)
    return h if inner is None else inner


def message_ok(key: bytes, id_: int, created: Any, body: Any, mac: Any) -> bool:
    """Whether a stored message is as signed; a column of the wrong type (text planted
    where bytes belong, a non-number time) fails the check, it never raises."""
    if not (_is_bytes(body) and _is_bytes(mac) and isinstance(created, float | int)):
        return False
    return hmac.compare_digest(sign_message(key, id_, created, body), mac)


def result_ok(key: bytes, id_: int, body: Any, mac: Any) -> bool:
    if not (_is_bytes(body) and _is_bytes(mac)):
        return False
    return hmac.compare_digest(sign_result(key, id_, body), mac)


def _is_bytes(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


#: Rows (and the largest body) ``remember`` keeps: 8 MiB at most.
FRESH_MAX: Final = 8192
FRESH_BODY_MAX: Final = 1024

WHY: Final = (
    "failed its HMAC check (altered or truncated on disk, or written without this queue's "
    "key); quarantined, never deserialized"
)


_QUARANTINED: Final = 8  # State.QUARANTINED, in the owner's ledger
_QUARANTINE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS dq_quarantine (
    id INTEGER NOT NULL, kind TEXT NOT NULL, time REAL NOT NULL, reason TEXT NOT NULL,
    created REAL, body BLOB NOT NULL, mac BLOB, PRIMARY KEY (kind, id)
);
"""


class Integrity:
    """The HMAC side of ``DiskcacheStore``: signing, checking, quarantine, migration."""

    path: str
    _key: bytes | None
    _key_spec: bytes | str | None
    _reported: set[int]  # finished records already reported as failing
    #: id -> (created, body, mac) of rows this process signed and committed moments ago
    #: (``remember``): a lease compares them instead of computing each MAC again.
    _fresh: dict[int, tuple[Any, bytes, bytes]]
    #: Called with each quarantine fault (the owner sets it to raise its fault Event);
    #: the store's own fault log otherwise.
    on_integrity_fault: Callable[[Fault], None] | None = None

    if TYPE_CHECKING:
        def _messages(self) -> sqlite3.Connection: ...
        def _ledger(self) -> sqlite3.Connection: ...
        def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...
        def _write(
            self, con: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"
        ) -> AbstractContextManager[None]: ...
        def record_fault(self, fault: Fault) -> None: ...

    def _mac_key(self, *, create: bool = True) -> bytes:
        if self._key is None:
            self._key = load_key(self.path, self._key_spec, create=create)
            if self._key is None:
                raise ConfigurationError(
                    f"{self.path} has no {KEY_FILE} file and no key= or {ENV} was given: "
                    "its records cannot be checked"
                )
        return self._key

    def _signed(self, ids: Sequence[int], rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """``(id, *row, mac)`` for rows of (priority, due, created, body, ...)."""
        key = self._mac_key()
        for row in rows:
            if not isinstance(row[3], bytes | bytearray | memoryview):
                raise StoreError(f"a message body must be bytes, not {type(row[3]).__name__}")
        return [
            (i, *row, sign_message(key, i, row[2], row[3]))
            for i, row in zip(ids, rows, strict=True)
        ]

    def _result_mac(self, id_: int, body: bytes) -> bytes:
        return sign_result(self._mac_key(), id_, body)

    def _untrusted(self, rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
        """Rows ``(id, ..., body at 2, ..., created, mac)`` whose MAC fails.

        A row this process signed moments ago (``remember``) is checked by comparing its
        created time, body and MAC with what was signed: the same verdict (the MAC is a
        function of id, created time and body), at a byte comparison's cost."""
        key = self._mac_key()
        fresh = self._fresh
        full = len(fresh) >= FRESH_MAX
        bad = []
        missed = 0
        for r in rows:
            if fresh.pop(r[0], None) == (r[-2], r[2], r[-1]):
                continue
            missed += 1
            if not message_ok(key, r[0], r[-2], r[2], r[-1]):
                bad.append(r)
        if full and missed == len(rows):
            fresh.clear()  # it holds rows not leased now (expired, purged, held back)
        return bad

    def remember(self, signed: Sequence[tuple[Any, ...]]) -> None:
        """After the commit of ``signed`` rows ``(id, priority, due, created, body, ...,
        mac)``: keep the small ones for ``_untrusted``, up to ``FRESH_MAX``. Once full it
        keeps what it has: leases take the oldest rows first, and those are the ones kept
        (a backlog's newer rows are checked the long way); a lease that finds none of its
        rows there empties it."""
        fresh = self._fresh
        room = FRESH_MAX - len(fresh)
        for r in signed:
            if room <= 0:
                break
            if len(r[4]) <= FRESH_BODY_MAX:
                fresh[r[0]] = (r[3], r[4], r[-1])
                room -= 1

    def _quarantine(
        self, con: sqlite3.Connection, rows: Sequence[Sequence[Any]], now: float
    ) -> None:
        """Inside the caller's ledger transaction: copy the rows to quarantine and take
        them out of the delivery order for good."""
        con.executemany(
            "INSERT OR REPLACE INTO dq_quarantine VALUES (?, 'message', ?, ?, ?, ?, ?)",
            [(r[0], now, WHY, r[-2], r[2], r[-1]) for r in rows],
        )
        con.executemany(
            "INSERT INTO dq_delivery (id, attempts, state, expiry) "
            f"VALUES (?, 0, {_QUARANTINED}, NULL) "
            f"ON CONFLICT (id) DO UPDATE SET state = {_QUARANTINED}, expiry = NULL",
            [(r[0],) for r in rows],
        )

    def _report(self, kind: str, ids: Sequence[int], now: float) -> None:
        shown = ", ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
        fault = Fault("quarantined", now, f"{len(ids)} {kind}(s) [{shown}] {WHY}")
        (self.on_integrity_fault or self.record_fault)(fault)

    def _checked_results(
        self, rows: Sequence[tuple[int, bytes, bytes | None]], now: float
    ) -> dict[int, bytes]:
        """Kept results whose MAC holds; the others go to quarantine (and are dropped)."""
        key = self._mac_key()
        bad = [r for r in rows if not result_ok(key, r[0], r[1], r[2])]
        if bad:
            con = self._ledger()
            with self._write(con, "BEGIN"):
                con.executemany(
                    "INSERT OR REPLACE INTO dq_quarantine VALUES (?, 'result', ?, ?, NULL, ?, ?)",
                    [(i, now, WHY, body, mac) for i, body, mac in bad],
                )
                con.executemany("DELETE FROM dq_result WHERE id = ?", [(r[0],) for r in bad])
            self._report("result", [r[0] for r in bad], now)
        bad_ids = {r[0] for r in bad}
        return {i: body for i, body, _ in rows if i not in bad_ids}

    def _authentic(self, rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
        """Finished records (history, dead letters) read as ``(id, ..., created at 5, ...,
        body at 10, mac at 11)`` whose MAC holds; the others are left out, never handed
        to a caller that would deserialize or replay them, and reported once."""
        key = self._mac_key()
        good: list[Sequence[Any]] = []
        bad: list[Sequence[Any]] = []
        for r in rows:
            (good if message_ok(key, r[0], r[5], r[10], r[11]) else bad).append(r)
        new = [r[0] for r in bad if r[0] not in self._reported]
        if new:
            self._reported.update(new)
            self._report("stored message", new, time.time())
        return good

    def _migrate(self) -> None:
        """Add the MAC columns and the quarantine table to a queue made before them, and
        sign what it holds (it was written while only its owner could write there)."""
        messages, ledger = self._messages(), self._ledger()
        for con, table, select, sign in (
            (messages, "dq_message", "SELECT id, created, body FROM dq_message", _sign_row),
            (ledger, "dq_result", "SELECT id, body FROM dq_result", _sign_result_row),
        ):
            if _has_mac(con, table):
                continue
            with self._write(con, "BEGIN IMMEDIATE"):
                if _has_mac(con, table):
                    continue  # another process migrated it meanwhile
                con.execute(f"ALTER TABLE {table} ADD COLUMN mac BLOB")
                key = self._mac_key()
                con.executemany(
                    f"UPDATE {table} SET mac = ? WHERE id = ?",
                    [(sign(key, r), r[0]) for r in con.execute(select).fetchall()],
                )
        ledger.executescript(_QUARANTINE_SCHEMA)

    # -- for durableq doctor ---------------------------------------------------------------

    def verify(self) -> dict[str, Any]:
        """Check every stored message and kept result against its MAC, changing nothing.

        Returns ``{"checked": n, "failed": [ids of messages], "failed_results": [ids],
        "quarantined": n}``. The owner quarantines failing records as it meets them.
        """
        key = self._mac_key(create=False)
        rows = self._read(
            "SELECT m.id, m.created, m.body, m.mac FROM q.dq_message AS m "
            "LEFT JOIN dq_delivery AS d ON d.id = m.id "
            f"WHERE NOT (m.state = 4 AND m.finished IS NULL) "  # tombstones: emptied bodies
            f"AND (d.state IS NULL OR d.state != {_QUARANTINED})"
        )
        results = self._read("SELECT id, body, mac FROM dq_result")
        (quarantined,) = self._read("SELECT count(*) FROM dq_quarantine")[0]
        return {
            "checked": len(rows) + len(results),
            "failed": [r[0] for r in rows if not message_ok(key, r[0], r[1], r[2], r[3])],
            "failed_results": [r[0] for r in results if not result_ok(key, *r)],
            "quarantined": quarantined,
        }

    def quarantined(self, limit: int = 100) -> list[tuple[str, int, float, str]]:
        """``(kind, id, time, reason)`` of quarantined records, newest first."""
        return [
            (kind, id_, t, reason)
            for kind, id_, t, reason in self._read(
                "SELECT kind, id, time, reason FROM dq_quarantine ORDER BY time DESC LIMIT ?",
                (limit,),
            )
        ]

    def quarantined_count(self) -> int:
        (n,) = self._read("SELECT count(*) FROM dq_quarantine")[0]
        return int(n)


def _sign_row(key: bytes, row: Sequence[Any]) -> bytes:
    return sign_message(key, row[0], row[1], row[2])


def _sign_result_row(key: bytes, row: Sequence[Any]) -> bytes:
    return sign_result(key, row[0], row[1])


def _has_mac(con: sqlite3.Connection, table: str) -> bool:
    return any(row[1] == "mac" for row in con.execute(f"PRAGMA table_info({table})"))
