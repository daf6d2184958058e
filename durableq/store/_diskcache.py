"""The embedded store: a diskcache directory holding the messages, plus the owner's ledger.

diskcache creates and configures the directory (WAL journal, settings, metadata) with
eviction turned off. Two SQLite files keep writers apart, so a producer never waits for
the owner's lock and the owner never waits for a producer's:

- ``cache.db`` (diskcache's database): table ``dq_message``, appended to by producers.
- ``owner.db``: table ``dq_delivery``, written only by the owner: which messages are in
  flight, with their attempt counts; which were acked or buried and await collection.

A message is ready when it is in ``dq_message`` with no ledger entry, or with one that
says it was requeued. Acked rows are removed from ``dq_message`` in batches (a short
transaction per ``GC_BATCH`` acks), and their ledger entries after that; a crash between
the two steps only leaves entries that match no message. Messages are read and written with
prepared SQL on per-thread connections because diskcache's key/value calls cost ~4x a raw
statement (docs/design.md). diskcache types never leave this module.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

import diskcache

from .._clock import SYSTEM, Clock
from .._errors import ConfigurationError, StoreError, StoreTimeout
from .._policy import Retention
from .._records import Fault, Leased, LeaseToken, Priority, State
from .._security import DATABASES, create_private, make_directory, tighten
from ._command_wakeup import FifoWakeups, FifoWatch
from ._integrity import Integrity, sign_message
from ._numbers import MOVED, NumberedPuts
from ._numbers import SCHEMA as _IDS_SCHEMA
from ._putlog import DIRECT_BATCH, Drained, LogReader, LogWriter, drains_first, rows_of
from ._sqlite import SET_BASED, SYNC, Busy, SQLiteFiles, guarded, is_busy, many
from ._sqlite_commands import SQLiteCommands
from ._sqlite_policy import PolicyVerbs, drop_messages

FORMAT: Final = 2
_FORMAT_KEY: Final = "durableq.format"
_DB: Final = "cache.db"  # diskcache's database file name
_LEDGER: Final = "owner.db"
#: Acked rows collected per transaction on the message file. Uncollected rows sit at the
#: head of the delivery order and every lease skips them: small keeps leases cheap, large
#: takes the producers' lock less often.
GC_BATCH: Final = 256

_READY, _IN_FLIGHT, _DONE, _DEAD, _EXPIRED = (
    int(s) for s in (State.READY, State.IN_FLIGHT, State.DONE, State.DEAD, State.EXPIRED)
)
_HIGH: Final = int(Priority.HIGH)

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS dq_message (
    id INTEGER PRIMARY KEY,
    state INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT {int(Priority.MEDIUM)},
    due REAL NOT NULL DEFAULT 0,
    key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    body BLOB NOT NULL,
    error BLOB,
    deadline REAL,
    bump REAL,
    expires REAL,
    finished REAL,
    flags INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dq_message_order ON dq_message (state, priority, due, id);
CREATE INDEX IF NOT EXISTS dq_message_bump ON dq_message (bump) WHERE bump IS NOT NULL;
CREATE INDEX IF NOT EXISTS dq_message_expires ON dq_message (expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS dq_message_finished ON dq_message (finished)
    WHERE finished IS NOT NULL;
CREATE INDEX IF NOT EXISTS dq_message_tombstone ON dq_message (id)
    WHERE state = {_DONE} AND finished IS NULL;
CREATE TABLE IF NOT EXISTS dq_log (name TEXT PRIMARY KEY, offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dq_fault (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL
);
"""
_LEDGER_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS dq_delivery (
    id INTEGER PRIMARY KEY, attempts INTEGER NOT NULL, state INTEGER NOT NULL,
    expiry REAL,  -- in flight: lease deadline; finished: when
    errors INTEGER NOT NULL DEFAULT 0, crashes INTEGER NOT NULL DEFAULT 0,
    timeouts INTEGER NOT NULL DEFAULT 0, flags INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dq_delivery_state ON dq_delivery (state);
CREATE TABLE IF NOT EXISTS dq_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dq_result (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
INSERT OR IGNORE INTO dq_meta VALUES ('acked_total', 0);
INSERT OR IGNORE INTO dq_meta VALUES ('late_total', 0);
CREATE TABLE IF NOT EXISTS dq_failure (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, msg INTEGER NOT NULL, name TEXT NOT NULL,
    attempt INTEGER NOT NULL, cause TEXT NOT NULL, type TEXT NOT NULL, message TEXT NOT NULL,
    traceback TEXT NOT NULL, pid INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dq_failure_time ON dq_failure (time);
CREATE INDEX IF NOT EXISTS dq_failure_msg ON dq_failure (msg);
"""

# One message in one statement, its own transaction: the id SQLite would pick (max + 1,
# read under the write lock the INSERT takes first) and the MAC that binds it, from the
# dq_sign function each connection registers. One call instead of four (BEGIN, max, INSERT,
# COMMIT): each call gives up the GIL, and a producer sharing its process with a busy
# dispatcher thread waits for the GIL after every one.
_INSERT_ONE: Final = (
    "INSERT INTO dq_message "
    "(id, state, priority, due, created, body, deadline, bump, expires, mac) "
    f"SELECT n, {_READY}, ?1, ?2, ?3, ?4, ?5, ?6, ?7, dq_sign(n, ?3, ?4) "
    "FROM (SELECT coalesce(max(id), 0) + 1 AS n FROM dq_message)"
)
# The same with the id guessed (and the MAC made) beforehand: inserts nothing unless the
# guess is the id SQLite would pick, max + 1.
_INSERT_GUESSED: Final = (
    "INSERT INTO dq_message "
    "(id, state, priority, due, created, body, deadline, bump, expires, mac) "
    f"SELECT ?1, {_READY}, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 "
    "WHERE (SELECT coalesce(max(id), 0) FROM dq_message) = ?1 - 1"
)
#: Pages in the message file's write-ahead log before a producer checkpoints it itself
#: (SQLite's default is 1000: a put in ~250 paid for the copy and an fsync).
PRODUCER_CHECKPOINT: Final = 16384
#: The log size past which the owner checkpoints it (SQLite's own default: 1000 pages).
CHECKPOINT_BYTES: Final = 4 * 1024 * 1024
#: Directory (in the queue directory) of the FIFOs that wake its owner when another
#: program made messages ready (``wake_owner``): a ``durableq worker``'s, a Queue's.
WAKE_DIR: Final = "task-wake"
WAKE_TARGET: Final = "tasks"
#: History rows collected between two retention trims.
TRIM_EVERY: Final = 1024
# Run on the ledger connection, with the message file attached as "q".
# One band at a time: a range seek on (state, priority, due), so messages scheduled for
# later are never scanned (one query over every band would walk all of them).
_CANDIDATES: Final = f"""
SELECT m.id, coalesce(d.attempts, m.attempts), m.body, m.deadline, m.created, m.mac
  FROM q.dq_message AS m LEFT JOIN dq_delivery AS d ON d.id = m.id
 WHERE m.state = {_READY} AND m.priority = ? AND m.due <= ?
   AND (d.state IS NULL OR d.state = {_READY}) AND (m.expires IS NULL OR m.expires > ?)
 ORDER BY m.due, m.id LIMIT ?
"""
LATE: Final = 1  #: flags bit: delivered after its deadline
_SETTLE: Final = (
    "UPDATE dq_delivery SET state = ?, expiry = ? "
    f"WHERE id = ? AND attempts = ? AND state = {_IN_FLIGHT}"
)

# Many leases settled by one statement, matched by (id, attempts): a stale token (its
# lease expired and the message went out again) matches nothing.
_SETTLE_MANY: Final = (
    "UPDATE dq_delivery SET state = ?, expiry = ? FROM (VALUES {values}) AS t "
    "WHERE dq_delivery.id = t.column1 AND dq_delivery.attempts = t.column2 "
    f"AND dq_delivery.state = {_IN_FLIGHT}"
)
_RESULT: Final = "INSERT OR REPLACE INTO dq_result (id, body, mac) VALUES (?, ?, ?)"
# The results of the leases _SETTLE_MANY just settled: (id, body, mac, attempts) rows
# whose lease is now in the new state under that attempt.
_RESULTS_MANY: Final = (
    "INSERT OR REPLACE INTO dq_result (id, body, mac) "
    "SELECT r.column1, r.column2, r.column3 FROM (VALUES {values}) AS r "
    "JOIN dq_delivery AS d ON d.id = r.column1 AND d.attempts = r.column4 AND d.state = ?"
)
# An upsert, not a replace: a redelivery keeps the message's failure counters.
_LEASE_MANY: Final = f"""
INSERT INTO dq_delivery (id, attempts, state, expiry, flags)
SELECT column1, column2, {_IN_FLIGHT}, column3, column4 FROM (VALUES {{values}}) WHERE true
ON CONFLICT (id) DO UPDATE SET attempts = excluded.attempts, state = {_IN_FLIGHT},
    expiry = excluded.expiry, flags = flags | excluded.flags
"""
_INSERT_MANY: Final = (
    "INSERT INTO dq_message "
    "(id, state, priority, due, created, body, deadline, bump, expires, mac) "
    f"SELECT column1, {_READY}, column2, column3, column4, column5, column6, column7, "
    "column8, column9 FROM (VALUES {values})"
)
_COLLECT: Final = (
    "UPDATE dq_message SET state = v.column1, attempts = v.column2, finished = v.column3, "
    "flags = v.column4, bump = NULL, expires = NULL FROM (VALUES {values}) AS v "
    "WHERE dq_message.id = v.column5"
)
_COLLECT_ONE: Final = (
    "UPDATE dq_message SET state = ?, attempts = ?, finished = ?, flags = ?, "
    "bump = NULL, expires = NULL WHERE id = ?"
)
_UNLOG: Final = "DELETE FROM dq_log WHERE name IN (SELECT column1 FROM (VALUES {values}))"
# Matched by (id, state, attempts): an entry that changed since it was collected (revived
# by a repair, delivered and finished again) is not the one collected, and stays.
_UNLEDGER: Final = (
    "DELETE FROM dq_delivery WHERE id IN (SELECT d.id FROM (VALUES {values}) AS v "
    "JOIN dq_delivery AS d ON d.id = v.column1 AND d.state = v.column2 "
    "AND d.attempts = v.column3)"
)
_FINISHED_WHERE: Final = f"FROM dq_delivery WHERE state IN ({_DONE}, {_DEAD}, {_EXPIRED})"
_FINISHED: Final = f"SELECT id, state, attempts, expiry, flags {_FINISHED_WHERE}"

# A discarded message leaves no history: finished (expiry) stays NULL.
_DISCARD: Final = f"""
INSERT OR REPLACE INTO dq_delivery (id, attempts, state, expiry)
SELECT m.id, coalesce(d.attempts, m.attempts), {_DONE}, NULL
  FROM q.dq_message AS m LEFT JOIN dq_delivery AS d ON d.id = m.id
 WHERE m.id = ? AND m.state = {_READY} AND (d.state IS NULL OR d.state = {_READY})
"""
_UNFINISHED: Final = f"""
SELECT m.id FROM q.dq_message AS m LEFT JOIN dq_delivery AS d ON d.id = m.id
 WHERE m.id <= ? AND m.state = {_READY} AND (d.state IS NULL OR d.state IN ({_READY}, {_IN_FLIGHT}))
 ORDER BY m.id
"""


class DiskcacheStore(SQLiteCommands, PolicyVerbs, Integrity, NumberedPuts, SQLiteFiles):
    """Messages in a diskcache directory; survives SIGKILL of any process (``sync="full"``:
    also power loss).

    Args:
        path: the queue directory, created 0700 when missing.
        sync: ``"normal"`` survives process crashes; ``"full"`` fsyncs every commit.
        size_limit: passed to diskcache; eviction is always off, so it never drops a message.
        timeout: seconds to wait for a database write lock before ``StoreTimeout``.
        trusted: open ``path`` even if another user could write to it (dangerous: see
            docs/security.md); otherwise that raises ``UnsafePath``.
        key: the HMAC key every record is signed with (bytes, or 64 hex digits); default
            ``DURABLEQ_KEY``, else the ``key`` file in ``path`` (made 0600 if missing).
    """

    shared: ClassVar[bool] = True
    _local: threading.local
    _group: list[_Slot]
    _leading: bool
    _log_writer: LogWriter | None  # this process's put log, made by its first put_quiet
    _log_reader: LogReader | None
    _log_lock: threading.Lock
    _attached: bool
    _collector: _Collection | None  # a batch being moved by a helper thread
    _helper: _Helper | None
    _drain_guess: int
    #: Put transactions committed by this process (group commit makes it < puts).
    commits: int

    @guarded
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: str = "normal",
        size_limit: int | None = None,
        timeout: float = 10.0,
        trusted: bool = False,
        key: bytes | str | None = None,
    ) -> None:
        if sync not in SYNC:
            raise ConfigurationError(f"sync must be 'normal' or 'full', not {sync!r}")
        self.path = os.path.abspath(os.fspath(path))
        self._key_spec, self._key = key, None
        self.sync = sync
        self.timeout = timeout
        self._init_process_state()
        make_directory(self.path, trusted=trusted)
        for name in DATABASES:
            create_private(os.path.join(self.path, name))  # before SQLite makes it 0644
        tighten(self.path)
        try:
            # Never evict: a queue that drops work loses data, whatever size_limit says.
            cache = diskcache.Cache(
                self.path,
                eviction_policy="none",
                cull_limit=0,
                size_limit=size_limit if size_limit is not None else 2**62,
                sqlite_synchronous=2 if sync == "full" else 1,
            )
            try:
                cache.add(_FORMAT_KEY, FORMAT)
                stored = cache.get(_FORMAT_KEY)
            finally:
                cache.close()
            if stored != FORMAT:
                raise ConfigurationError(
                    f"{self.path} holds queue format {stored!r}; this durableq reads {FORMAT}"
                )
            messages, ledger = self._messages(), self._ledger()
            self._busy_retry("create", lambda: messages.executescript(_SCHEMA))
            self._busy_retry("create", lambda: messages.executescript(_IDS_SCHEMA))
            self._busy_retry("create", lambda: ledger.executescript(_LEDGER_SCHEMA))
            self._mac_key()  # made now, 0600, by the first process to open the queue
            self._busy_retry("create", self._migrate)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open queue store {self.path}: {exc}") from exc

    # -- connections and transactions -------------------------------------------------

    @classmethod
    def attach(cls, path: str | os.PathLike[str], *, timeout: float = 10.0) -> DiskcacheStore:
        """Open an existing queue directory without creating or changing anything: for
        readers (``durableq.inspect``) that must not disturb a running owner."""
        store = cls.__new__(cls)
        store.__setstate__({"path": os.path.abspath(os.fspath(path)), "sync": "normal",
                            "timeout": timeout, "key": None})
        store._attached = True
        return store

    def _connections(self) -> Any:
        local = self._local
        if getattr(local, "pid", None) != _pid[0]:
            # A connection must never cross fork(): open fresh ones in each process.
            local.pid, local.messages, local.ledger = _pid[0], None, None
            local.next_id = 0  # the id this connection's next put guesses (_commit_one)
        return local

    def _messages(self) -> sqlite3.Connection:
        """The message file: producers append here."""
        local = self._connections()
        if local.messages is None:
            con = self._connect(_DB)
            # The owner checkpoints (collect); a producer does only if the log grows large
            # anyway, so a put rarely pays for copying pages into the database file.
            con.execute(f"PRAGMA wal_autocheckpoint = {PRODUCER_CHECKPOINT}")
            con.create_function("dq_sign", 3, _signer(weakref.ref(self)), deterministic=True)
            local.messages = con
        return local.messages  # type: ignore[no-any-return]

    def _ledger(self) -> sqlite3.Connection:
        """The owner's ledger, with the message file attached read-mostly as ``q``."""
        local = self._connections()
        if local.ledger is None:
            con = self._connect(_LEDGER)
            # Ledger transactions begin deferred (BEGIN IMMEDIATE would lock the attached
            # message file against producers), so a write takes its lock mid-transaction;
            # when it opens the transaction, this waits for a repair by another process.
            # (A write after a read cannot wait: SQLite answers busy at once. Verbs that also
            # write the message file begin IMMEDIATE for that reason: _sqlite_policy._BOTH.)
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            messages = os.path.join(self.path, _DB)
            self._busy_retry("open", lambda: con.execute("ATTACH DATABASE ? AS q", (messages,)))
            local.ledger = con
        return local.ledger  # type: ignore[no-any-return]

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        con = self._ledger()
        return self._busy_retry("read", lambda: con.execute(sql, args).fetchall())

    # -- producers ----------------------------------------------------------------------

    @guarded
    def put_many(
        self,
        payloads: Sequence[bytes],
        *,
        priority: int = Priority.MEDIUM,
        due: float = 0.0,
        deadline: float | None = None,
        bump: float | None = None,
        expires: float | None = None,
    ) -> list[int]:
        """Commit ``payloads``; concurrent callers in this process share one transaction.

        Group commit: the first caller leads and commits every batch queued while it waits
        for the lock, so threads putting at once pay for one commit (one fsync with
        ``sync="full"``) instead of one each.
        """
        slot = _Slot(rows_of(payloads, self.clock.time(), priority, due, deadline, bump, expires))
        with self._group_lock:
            self._group.append(slot)
            lead = not self._leading
            self._leading = True
            if not lead:
                slot.done = threading.Event()  # only followers wait: the leader needs none
        if not lead:
            slot.done.wait()
            if not slot.lead:
                return slot.result()
        with self._group_lock:
            batch, self._group = self._group, []
        try:
            self._commit_group(batch)
        finally:
            with self._group_lock:
                if self._group:
                    self._group[0].lead = True  # hand over: it commits what queued meanwhile
                    self._group[0].done.set()  # queued while we led: so it is a follower
                else:
                    self._leading = False
            for other in batch:
                if other.done is not None:
                    other.done.set()
        return slot.result()

    def _commit_group(self, batch: list[_Slot]) -> None:
        con = self._messages()
        if len(batch) == 1 and len(batch[0].rows) == 1:
            self._commit_one(con, batch[0])
            return
        try:
            with self._write(con):
                # Ids chosen here as SQLite would (never reused: see collect) so that each
                # row's MAC can bind its id: a signed row copied elsewhere fails its check.
                (top,) = con.execute("SELECT max(id) FROM dq_message").fetchone()
                next_id = (top or 0) + 1
                for s in batch:
                    s.ids = list(range(next_id, next_id + len(s.rows)))
                    next_id += len(s.rows)
                    many(con, _INSERT_MANY, self._signed(s.ids, s.rows))
            self.commits += 1
        except BaseException as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            for s in batch:  # one caller's bad batch must not fail the others
                s.ids = []
                self._commit_group([s])

    def _commit_one(self, con: sqlite3.Connection, slot: _Slot) -> None:
        row = slot.rows[0]
        body: Any = row[3]
        if not isinstance(body, bytes | bytearray | memoryview):
            slot.error = StoreError(f"a message body must be bytes, not {type(body).__name__}")
            return
        local = self._connections()
        guess: int = getattr(local, "next_id", 0)
        try:
            if guess:
                # This connection's last put was id - 1; if nobody put since, this is the
                # id SQLite picks, and the MAC is made here: no call back into Python (and
                # the GIL) while the INSERT holds the write lock.
                signed = (guess, *row, sign_message(self._mac_key(), guess, row[2], body))
                cur = self._busy_retry("put", lambda: con.execute(_INSERT_GUESSED, signed))
                if not cur.rowcount:
                    guess = 0  # another producer's put came between: ask SQLite
            if not guess:
                cur = self._busy_retry("put", lambda: con.execute(_INSERT_ONE, row))
                guess = int(cur.lastrowid or 0)
        except BaseException as exc:
            local.next_id = 0
            slot.error = exc
            return
        local.next_id = guess + 1
        slot.ids = [guess]
        self.commits += 1

    def put_quiet(  # unguarded: the log path never enters SQLite (see _put_direct_many)
        self,
        payloads: Sequence[bytes],
        *,
        priority: int = Priority.MEDIUM,
        due: float = 0.0,
        deadline: float | None = None,
        bump: float | None = None,
        expires: float | None = None,
    ) -> None:
        """``put_many`` for a caller that needs no ids (``Queue.put``): appends one frame
        to this process's put log (``_putlog``), durable once this returns; the next
        reader of the store moves it into the message table, ids and all."""
        if len(payloads) >= DIRECT_BATCH:
            self._put_direct_many(
                payloads, priority=priority, due=due, deadline=deadline, bump=bump,
                expires=expires,
            )
            return
        rows = rows_of(payloads, self.clock.time(), priority, due, deadline, bump, expires)
        self._writer().append(rows)

    def _writer(self) -> LogWriter:
        """This process's put log, made by its first put (no lock once it exists)."""
        writer = self._log_writer
        if writer is not None:
            return writer
        with self._log_lock:
            if self._log_writer is None:
                self._log_writer = LogWriter(
                    self.path, self._mac_key(), full_sync=self.sync == "full"
                )
            return self._log_writer

    @guarded
    def _put_direct_many(self, payloads: Sequence[bytes], **timing: Any) -> list[int]:
        """A large batch costs a few us a row in one transaction, paid here and not by the
        reader; this process's earlier frames go first, so that its order holds."""
        self._drain()
        return self.put_many(payloads, **timing)

    @guarded
    def ingest(self) -> None:
        """Move what the put logs hold into the message table now (an owner told that
        puts piled up, so that no later read pays for all of them at once)."""
        self._drain()

    def _drain(self) -> None:
        """Move what the put logs hold into the message table (see ``_putlog``): called by
        every verb that reads the delivery order or its counts."""
        if self._attached:
            # A reader (inspect, the command line) moves them too, as the owner would:
            # nothing changes but where they are kept. Best effort: it may lack the key,
            # or the right to write, and then shows what was moved already.
            try:
                self._drain_logs()
            except (StoreError, ConfigurationError, OSError):
                pass
        else:
            self._drain_logs()

    def _drain_logs(self) -> int:
        """One drain; how far it got (rows moved and logs advanced; 0: nothing to do)."""
        reader = self._log_reader
        if reader is None:
            with self._log_lock:
                if self._log_reader is None:
                    self._log_reader = LogReader(self.path, self._mac_key(create=False))
                reader = self._log_reader
        if not reader.pending():
            return 0
        con = self._messages()
        with self._log_lock:
            try:
                drained = self._drain_once(con, reader, reader.offsets)
            except _Raced:  # another process drained too: read where it left off
                reader.offsets = None
                drained = self._drain_once(con, reader, None)
        for name in drained.finished:  # read to the end, committed, the writer gone
            reader.remove(name)
        now = self.clock.time()
        for problem in drained.problems:
            (self.on_integrity_fault or self.record_fault)(Fault("quarantined", now, problem))
        return len(drained.rows) + len(drained.numbered) + len(drained.offsets)

    def _drain_once(
        self, con: sqlite3.Connection, reader: LogReader, known: dict[str, int] | None
    ) -> Drained:
        """One drain transaction. ``known``: the offsets this process last committed or
        read, trusted without a read; each is checked as it is advanced (``_Raced`` rolls
        everything back when another process moved one meanwhile)."""
        with self._write(con):
            offsets = known
            if offsets is None:
                offsets = dict(con.execute("SELECT name, offset FROM dq_log").fetchall())
            drained = reader.read(offsets)
            rows = drained.rows
            signed: list[tuple[Any, ...]] = []
            if len(rows) == 1 and self._drain_guess:
                # As a single put does: guess the id (our last + 1), sign it beforehand.
                guess, row = self._drain_guess, rows[0]
                signed = [(guess, *row, sign_message(self._mac_key(), guess, row[2], row[3]))]
                if not con.execute(_INSERT_GUESSED, signed[0]).rowcount:
                    self._drain_guess = 0
            if rows and not (len(rows) == 1 and self._drain_guess):
                (top,) = con.execute("SELECT max(id) FROM dq_message").fetchone()
                self._drain_guess = (top or 0) + 1
                ids = range(self._drain_guess, self._drain_guess + len(rows))
                signed = self._signed(ids, rows)
                many(con, _INSERT_MANY, signed)
            self._drain_guess += len(rows)
            if drained.numbered:  # under the ids their owner gave them (_numbers)
                numbered = self._signed(drained.ids, drained.numbered)
                many(con, _INSERT_MANY, numbered)
                con.execute(MOVED, (max(drained.ids),))
                signed += numbered
            for name, end in drained.offsets:
                if name in offsets:
                    moved = con.execute(
                        "UPDATE dq_log SET offset = ? WHERE name = ? AND offset = ?",
                        (end, name, offsets[name]),
                    ).rowcount
                else:
                    moved = con.execute(
                        "INSERT OR IGNORE INTO dq_log (name, offset) VALUES (?, ?)", (name, end)
                    ).rowcount
                if not moved:
                    raise _Raced
            if drained.stale:  # logs deleted after an earlier drain committed
                many(con, _UNLOG, [(n,) for n in drained.stale])
        self.remember(signed)  # committed: a lease soon after need not sign them again
        new = dict(offsets)
        new.update(drained.offsets)
        for name in drained.stale:
            new.pop(name, None)
        reader.offsets = new
        return drained

    # -- the owner's verbs: they write the ledger only --------------------------------------

    @guarded
    @drains_first
    def lease(
        self, owner: str, n: int, *, now: float, ttl: float, max_priority: int = Priority.LOW
    ) -> list[Leased]:
        con = self._ledger()
        quarantined: list[int] = []
        with self._write(con, "BEGIN"):
            # Take the ledger's write lock before reading (a write after a read cannot wait
            # for another process's repair); matching no row, it writes nothing.
            con.execute("DELETE FROM dq_delivery WHERE 0")
            while True:  # checked before any body leaves the store
                rows = self._candidates(con, now, n, max_priority)
                bad = self._untrusted(rows)
                if not bad:
                    break
                self._quarantine(con, bad, now)
                quarantined += [r[0] for r in bad]
            late = 0
            leases = []
            for id_, attempts, _, deadline, *_ in rows:
                flags = LATE if deadline is not None and deadline < now else 0
                late += flags
                leases.append((id_, attempts + 1, now + ttl, flags))
            many(con, _LEASE_MANY, leases)
            if late:
                con.execute(
                    "UPDATE dq_meta SET value = value + ? WHERE name = 'late_total'", (late,)
                )
        if quarantined:
            self._report("message", quarantined, now)
        return [Leased(LeaseToken(id_, attempts + 1), body) for id_, attempts, body, *_ in rows]

    def _settle(
        self, tokens: Sequence[LeaseToken], state: int, results: Sequence[bytes] | None
    ) -> int:
        con = self._ledger()
        finished = None if state == _READY else self.clock.time()
        signed = None
        if results is not None:
            signed = [
                (t.id, r, self._result_mac(t.id, r))
                for t, r in zip(tokens, results, strict=True)
            ]
        with self._write(con, "BEGIN"):
            applied = _settled(con, state, finished, tokens, signed)
            if state == _DONE:
                con.execute(
                    "UPDATE dq_meta SET value = value + ? WHERE name = 'acked_total'", (applied,)
                )
        return applied

    @guarded
    def ack(self, tokens: Sequence[LeaseToken], *, results: Sequence[bytes] | None = None) -> int:
        if not tokens:
            return 0
        applied = self._settle(tokens, _DONE, results)
        self._uncollected += applied
        if self._uncollected >= GC_BATCH:
            self._collect_beside()
        return applied

    @guarded
    def nack(
        self,
        tokens: Sequence[LeaseToken],
        *,
        requeue: bool,
        results: Sequence[bytes] | None = None,
    ) -> int:
        if not tokens:
            return 0
        applied = self._settle(tokens, _READY if requeue else _DEAD, results)
        if not requeue:
            self._uncollected += applied
        return applied

    @guarded
    @drains_first
    def discard(self, ids: Sequence[int]) -> int:
        # Marked done in the ledger (without counting as acked): collected like an ack.
        con = self._ledger()
        with self._write(con, "BEGIN"):
            applied: int = con.executemany(_DISCARD, [(i,) for i in ids]).rowcount
        self._uncollected += applied
        return applied

    @guarded
    @drains_first
    def unfinished(self, upto: int) -> list[int]:
        return [i for (i,) in self._read(_UNFINISHED, (upto,))]

    @guarded
    def results(self, upto: int) -> dict[int, bytes]:
        rows = self._read("SELECT id, body, mac FROM dq_result WHERE id <= ?", (upto,))
        return self._checked_results(rows, self.clock.time())

    @guarded
    def results_of(self, ids: Sequence[int]) -> dict[int, bytes]:
        rows = []
        for i in range(0, len(ids), 500):  # SQLite's bound on host parameters
            part = ids[i : i + 500]
            rows += self._read("SELECT id, body, mac FROM dq_result WHERE id IN "
                               f"({','.join('?' * len(part))})", tuple(part))
        return self._checked_results(rows, self.clock.time())

    @guarded
    def forget(self, ids: Sequence[int]) -> int:
        con = self._ledger()
        with self._write(con, "BEGIN"):
            gone: int = con.executemany(
                "DELETE FROM dq_result WHERE id = ?", [(i,) for i in ids]
            ).rowcount
        return gone

    @guarded
    def collect(self, *, wait: bool = True) -> int:
        """Move finished messages out of the delivery order: acked and expired ones into
        history (or gone, with ``history=0``), dead ones into the dead letters.

        With ``wait=False`` it gives up at once if a producer holds the lock; the rows stay
        marked in the ledger and are collected next time. Returns how many were collected.
        """
        self._finish_collecting()  # one at a time: a later one sees what it did
        if not self._read(f"SELECT 1 {_FINISHED_WHERE} LIMIT 1"):
            self._uncollected = 0
            return 0  # without taking the producers' lock
        try:
            rows = self._move(wait=wait)
        except Busy:
            return 0
        self._unledger(rows)
        self._uncollected = 0
        return len(rows)

    def _collect_beside(self) -> None:
        """``collect`` for a busy owner (from ``ack``): the message-file half runs in a
        helper thread, whose SQLite work (the updates, the history trim, the checkpoint)
        runs beside the owner's instead of in its turn; the owner drops the ledger entries
        once it is done, at a later ack. One batch at a time."""
        job = self._collector
        if job is not None:
            if not job.done.is_set():
                return  # still at it: these rows wait for the next batch
            self._finish_collecting()
        self._uncollected = 0
        job = self._collector = _Collection()
        with self._log_lock:
            helper = self._helper
            if helper is None:
                helper = self._helper = _Helper(self._move_beside)
        helper.give(job)

    @guarded
    def _move_beside(self, job: _Collection) -> None:
        # It waits for the lock (no one waits on this thread), where giving up at once lost
        # to a producer committing batches one time in three: acked rows piled up (~700,
        # up to 5,000) and every lease walked past them.
        try:
            job.rows = self._move(wait=True)
        except StoreTimeout:
            pass  # a producer held the lock throughout: the rows stay marked
        except sqlite3.Error as exc:
            job.error = self._error("collect", exc)
        except BaseException as exc:  # handed to the owner's thread by _finish_collecting
            job.error = exc
        finally:
            job.done.set()

    def _finish_collecting(self) -> None:
        """Wait for the helper's batch, if any, and drop its rows' ledger entries; raise
        what it raised (the rows stay marked, collected again next time)."""
        job, self._collector = self._collector, None
        if job is None:
            return
        job.done.wait()
        if job.error is not None:
            raise job.error
        if job.rows:
            self._unledger(job.rows)

    def _finished_rows(self) -> list[Any]:
        return self._read(_FINISHED)

    def _move(self, *, wait: bool) -> list[Any]:
        """The message-file half of ``collect``, then a checkpoint if the log grew; returns
        the rows moved.

        The finished rows are read from the ledger under the message file's lock, not
        before it: a repair in another process (``revive``) takes that lock too, and may
        have collected a row, made it ready again and had it delivered meanwhile; moving
        a row read before would bury a message in use, or bring it back once more.
        """
        keep = self.retention.keeps
        con = self._messages()
        with self._write(con) if wait else self._try_write(con):
            rows = self._finished_rows()
            gone = {
                r[0] for r in rows
                if (r[1] == _DONE and r[3] is None) or (r[1] != _DEAD and not keep)
            }
            kept = [(r[1], r[2], r[3], r[4], r[0]) for r in rows if r[0] not in gone]
            (top,) = con.execute("SELECT max(id) FROM dq_message").fetchone()
            drop_messages(con, "dq_message", gone, top)  # the newest stays a tombstone
            if SET_BASED:
                many(con, _COLLECT, kept)
            else:
                con.executemany(_COLLECT_ONE, kept)
            self._collected += len(kept)
            if self._collected >= max(TRIM_EVERY, (self.retention.count or 0) // 2):
                self._trim(con, top)
        self._checkpoint(con)
        return rows

    def _unledger(self, rows: list[Any]) -> None:
        if not rows:
            return
        ledger = self._ledger()
        with self._write(ledger, "BEGIN"):
            many(ledger, _UNLEDGER, [(r[0], r[1], r[2]) for r in rows])

    def _checkpoint(self, con: sqlite3.Connection) -> None:
        """Copy the message file's log into the database once it passed CHECKPOINT_BYTES,
        without waiting for anyone: readers or a writer in the way just leave part of it for
        the next time."""
        try:
            if os.path.getsize(os.path.join(self.path, _DB + "-wal")) < CHECKPOINT_BYTES:
                return
        except OSError:
            return  # no log file: nothing to copy
        try:
            con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise self._error("checkpoint", exc) from exc

    @guarded
    @drains_first
    def requeue_expired(self, now: float) -> int:
        con = self._ledger()
        with self._write(con, "BEGIN"):
            count: int = con.execute(
                f"UPDATE dq_delivery SET state = {_READY}, expiry = NULL "
                f"WHERE state = {_IN_FLIGHT} AND expiry < ?",
                (now,),
            ).rowcount
        if now == float("inf"):
            self.collect()  # at open: nothing competes yet
        return count

    # -- wakeups from other programs --------------------------------------------------------

    def watch_puts(self) -> FifoWatch | None:
        """A FIFO in the queue directory that ``wake_owner`` writes to: the owner's
        dispatcher polls it, so messages another program made ready (``durableq retry``,
        ``replay``, ``import``, a ``Submitter``) go out at once, not at its next safety
        re-check. Its producers' puts need none: they notify over the owner's pipe.

        None where the file system has no FIFOs: those messages then wait for the
        safety re-check, and the queue works as before."""
        wakeups = FifoWakeups(os.path.join(self.path, WAKE_DIR))
        wakeups.poke([WAKE_TARGET])  # removes the FIFOs of killed owners (no one reads them)
        try:
            return wakeups.watch(WAKE_TARGET)
        except OSError:
            return None

    # -- reads: any process -------------------------------------------------------------------

    @staticmethod
    def _candidates(
        con: sqlite3.Connection, now: float, n: int, max_priority: int = Priority.LOW
    ) -> list[Any]:
        """Up to ``n`` deliverable messages in (priority, due, id) order."""
        rows: list[Any] = []
        for band in range(int(max_priority) + 1):
            rows += con.execute(_CANDIDATES, (band, now, now, n - len(rows))).fetchall()
            if len(rows) >= n:
                break
        return rows

    @guarded
    @drains_first
    def has_ready(self, now: float) -> bool:
        con = self._ledger()
        return bool(self._busy_retry("read", lambda: self._candidates(con, now, 1)))

    @guarded
    def record_fault(self, fault: Fault) -> None:
        con = self._messages()
        try:
            with self._write(con):
                con.execute(
                    "INSERT INTO dq_fault (time, kind, detail) VALUES (?, ?, ?)",
                    (fault.time, fault.kind, fault.detail),
                )
        except StoreError:
            pass  # the store is what failed; the caller keeps the fault in memory too

    @guarded
    def faults(self, limit: int = 100) -> list[Fault]:
        rows = self._read(
            "SELECT kind, time, detail FROM q.dq_fault ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [Fault(*row) for row in reversed(rows)]

    @guarded
    def close(self) -> None:
        try:
            self._finish_collecting()
        except Exception:
            pass  # its rows stay marked: collected by whoever opens the store next
        try:
            self._release_numbers()
        except StoreError:
            pass  # counted by the next owner instead, from what was moved of the block
        local = self._local
        if getattr(local, "pid", None) == os.getpid():
            for con in (local.messages, local.ledger):
                if con is not None:
                    con.close()
        self._local = threading.local()
        with self._log_lock:
            if self._log_writer is not None:
                self._log_writer.close()  # its lock goes: the log is deleted once read
            if self._log_reader is not None:
                self._log_reader.close()
            self._log_writer = self._log_reader = None

    # -- pickling: by path, reconnecting in the new process --------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # A key given as key= goes along (to this program's own children); one from the
        # key file or DURABLEQ_KEY is found there again.
        return {"path": self.path, "sync": self.sync, "timeout": self.timeout,
                "key": self._key_spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.sync, self.timeout = state["path"], state["sync"], state["timeout"]
        self._key_spec, self._key = state.get("key"), None
        self._init_process_state()

    def _init_process_state(self) -> None:
        _live.add(self)
        self._reported = set()
        self._fresh = {}
        self._local = threading.local()
        self._uncollected = 0
        self._collected = 0
        self.retention = Retention()
        self.clock: Clock = SYSTEM
        self._group = []
        self._group_lock = threading.Lock()
        self._leading = False
        self.commits = 0
        self._log_writer = None
        self._log_reader = None
        self._log_lock = threading.Lock()
        self._attached = False
        self._collector = None
        self._drain_guess = 0  # the id this process's next one-row drain guesses
        self._numbers = None  # a child never numbers from its parent's block
        self._numbers_lock = threading.Lock()
        self._helper = None

    def __repr__(self) -> str:
        return f"DiskcacheStore({self.path!r}, sync={self.sync!r})"


# After fork() the child gets copies of locks another thread may have held and of the
# parent's connections: give every store a fresh start there. The parent's connections are
# kept unreferenced-but-alive rather than closed: closing them in the child could drop
# locks the parent holds on the same files.
_live: weakref.WeakSet[DiskcacheStore] = weakref.WeakSet()
_inherited: list[Any] = []


#: This process's id, kept current across fork() (os.getpid() is a system call per store
#: verb otherwise).
_pid = [os.getpid()]


def _after_fork_in_child() -> None:
    _pid[0] = os.getpid()
    for store in list(_live):
        _inherited.append(store._local)
        # The parent's put log and its lock are not the child's: drop our copies of them.
        if store._log_writer is not None:
            store._log_writer.forget()
        if store._log_reader is not None:
            store._log_reader.forget()
        store._init_process_state()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _settled(
    con: sqlite3.Connection,
    state: int,
    finished: float | None,
    tokens: Sequence[LeaseToken],
    results: list[tuple[int, bytes, bytes]] | None,
) -> int:
    """Settle the leases ``tokens`` still hold, storing the results ``(id, body, mac)``
    (one per token) of those settled; how many were settled.

    Results are matched in SQL to the leases just settled, by (id, attempt) in the new
    state, so that no row comes back to Python to say which (see ``many``).
    """
    if not SET_BASED:
        applied = 0
        for i, t in enumerate(tokens):
            if con.execute(_SETTLE, (state, finished, *t)).rowcount:
                applied += 1
                if results is not None:
                    con.execute(_RESULT, results[i])
        return applied
    applied = many(con, _SETTLE_MANY, tokens, before=(state, finished))
    if results is not None and applied:
        rows = [(*r, t.attempt) for t, r in zip(tokens, results, strict=True)]
        many(con, _RESULTS_MANY, rows, after=(state,))
    return applied


def wake_owner(path: str | os.PathLike[str]) -> None:
    """Wake whoever watches the queue directory ``path`` (``DiskcacheStore.watch_puts``);
    cheap when nobody does."""
    FifoWakeups(os.path.join(os.fspath(path), WAKE_DIR)).poke([WAKE_TARGET])


def _signer(store: weakref.ref[DiskcacheStore]) -> Any:
    """``dq_sign(id, created, body)`` for SQL: a weak reference, so that the connection
    (kept by the store) does not keep its store alive."""

    def sign(id_: int, created: float, body: bytes) -> bytes:
        owner = store()
        if owner is None:
            raise StoreError("the store was closed")
        return sign_message(owner._mac_key(), id_, created, body)

    return sign


class _Raced(Exception):
    """Another process drained a put log while this one did: roll back, read again."""


class _Collection:
    """One batch of finished rows that a helper thread moves (``_collect_beside``)."""

    __slots__ = ("done", "error", "rows")

    def __init__(self) -> None:
        self.rows: list[Any] = []  # those moved, once done
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Helper:
    """A thread that runs one job at a time and ends after ``LINGER`` seconds without one,
    so that a busy store keeps one thread (and its SQLite connection) and an idle or
    closed one keeps none."""

    LINGER: ClassVar[float] = 0.2

    def __init__(self, run: Callable[[_Collection], None]) -> None:
        self._run = run
        self._cond = threading.Condition(threading.Lock())
        self._job: _Collection | None = None
        self._running = False

    def give(self, job: _Collection) -> None:
        with self._cond:
            self._job = job
            self._cond.notify()
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="durableq-collect", daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._job is None:
                    if not self._cond.wait(self.LINGER) and self._job is None:
                        self._running = False
                        return
                job, self._job = self._job, None
            self._run(job)


class _Slot:
    """One caller's batch in a group commit."""

    __slots__ = ("done", "error", "ids", "lead", "rows")

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.done: threading.Event = None  # type: ignore[assignment]
        self.lead = False
        self.ids: list[int] = []
        self.error: BaseException | None = None

    def result(self) -> list[int]:
        if self.error is not None:
            raise self.error
        return self.ids
