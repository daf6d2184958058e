"""Numbered puts: ids the queue's owner reserves in blocks, so that a put that must return
its message's id (``Executor.submit``) costs one ``write(2)`` to the put log, as a plain
``Queue.put`` does, instead of a SQLite commit.

A put log row gets its id when a reader moves it into ``dq_message`` (max(id) + 1), too
late for a caller that hands the id out at once. So the owner reserves a block of ids
ahead: one transaction on the message file that inserts a tombstone (an empty row in state
done, which every reader already skips, see ``drop_messages``) just past the block. Any
id SQLite picks from then on is above the tombstone, so nobody else can take an id of the
block. The owner then numbers its puts from the block and appends them to its put log as
numbered frames; the drain inserts them under their own ids.

``put_total`` counts puts, not ids: ``dq_ids`` holds the current block and how many ids were
skipped (each tombstone, and what a block left unused). A block is closed with what its
owner used: at the next reservation or at ``close()``; after a crash, from the highest id
the drain moved from it (ids are handed out in order, and a frame that failed to be
written gives its ids back).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from .._records import Priority, State
from ._putlog import DIRECT_BATCH, LogWriter, drains_first, rows_of
from ._sqlite import guarded

#: Ids reserved at a time: one message-file transaction per this many numbered puts.
BLOCK: Final = 1024

_DONE: Final = int(State.DONE)

#: One row: the open block (``first``..``last``; 0 when none), the highest id the drain
#: moved from it, and the ids never used by any put.
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS dq_ids (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    first INTEGER NOT NULL, last INTEGER NOT NULL, highest INTEGER NOT NULL,
    skipped INTEGER NOT NULL
);
INSERT OR IGNORE INTO dq_ids VALUES (1, 0, 0, 0, 0);
"""


def put_total_sql(schema: str = "") -> str:
    """Puts ever made: the highest id less the ids no put took (``schema``: "q." on a
    connection that attached the message file)."""
    return (
        f"SELECT coalesce((SELECT max(id) FROM {schema}dq_message), 0) - coalesce(("
        f"SELECT skipped + CASE WHEN last > 0 THEN last - max(highest, first - 1) ELSE 0 END "
        f"FROM {schema}dq_ids), 0)"
    )


_TOMBSTONE: Final = (
    "INSERT INTO dq_message (id, state, priority, due, created, body) "
    f"VALUES (?, {_DONE}, {int(Priority.MEDIUM)}, 0, ?, x'')"
)
_TOMBSTONE_AT: Final = _TOMBSTONE.replace("INSERT", "INSERT OR IGNORE", 1)
_UNTOMB: Final = (
    f"DELETE FROM dq_message WHERE id = ? AND state = {_DONE} AND finished IS NULL "
    "AND length(body) = 0"
)
#: After a drain moved numbered rows: the highest id it moved of the open block.
MOVED: Final = "UPDATE dq_ids SET highest = max(highest, ?)"


class NumberedPuts:
    """Mixed into ``DiskcacheStore``: ``put_numbered`` and its id blocks."""

    _numbers: list[int] | None  # [next id, last id, first id] of this process's block
    _numbers_lock: threading.Lock
    clock: Any

    if TYPE_CHECKING:  # provided by DiskcacheStore
        def _messages(self) -> sqlite3.Connection: ...
        def _write(self, con: sqlite3.Connection, begin: str = ...) -> Any: ...
        def _drain_logs(self) -> int: ...
        def _writer(self) -> LogWriter: ...
        def _put_direct_many(self, payloads: Sequence[bytes], **timing: Any) -> list[int]: ...

    def put_numbered(
        self,
        payloads: Sequence[bytes],
        *,
        priority: int = Priority.MEDIUM,
        due: float = 0.0,
        deadline: float | None = None,
        bump: float | None = None,
        expires: float | None = None,
    ) -> list[int]:
        """``put_many`` for the queue's owner only: the ids come from a block it reserved,
        the rows go to its put log (durable once this returns, as ``put_quiet``'s) and
        into the message table at the next read. Another process must not call this
        while the owner lives: it would number from a block of its own, which is safe,
        but skew ``put_total`` for the owner's block."""
        if len(payloads) >= DIRECT_BATCH:
            return self._put_direct_many(
                payloads, priority=priority, due=due, deadline=deadline, bump=bump,
                expires=expires,
            )
        rows = rows_of(payloads, self.clock.time(), priority, due, deadline, bump, expires)
        with self._numbers_lock:
            block = self._numbers
            if block is None or block[0] + len(rows) - 1 > block[1]:
                block = self._reserve(len(rows))
            ids = list(range(block[0], block[0] + len(rows)))
            self._writer().append(rows, ids)  # raises: the ids stay free for the next put
            block[0] += len(rows)
        return ids

    @guarded
    def _reserve(self, n: int) -> list[int]:
        """Close the open block and reserve the next (the caller holds the numbers lock)."""
        ours = self._numbers
        if ours is None and self._open_block():
            # Not through settle_ids(): its owner may live on (this is its forked child),
            # so none of its ids go back; those it did not use are counted as skipped.
            self._settle_ids(give_back=False)
        con = self._messages()
        with self._write(con):
            (skipped,) = con.execute("SELECT skipped FROM dq_ids").fetchone()
            if ours is not None:
                skipped += ours[1] - ours[0] + 1  # what is left of ours: never used
            (top,) = con.execute("SELECT max(id) FROM dq_message").fetchone()
            first, last = (top or 0) + 1, (top or 0) + max(n, BLOCK)
            con.execute(_TOMBSTONE, (last + 1, self.clock.time()))
            con.execute(
                "UPDATE dq_ids SET first = ?, last = ?, highest = ?, skipped = ?",
                (first, last, first - 1, skipped + 1),  # the tombstone's id: no put's
            )
        self._numbers = [first, last, first]
        return self._numbers

    @guarded
    def settle_ids(self) -> None:
        """For a new owner, under the queue's lock: close the block an earlier owner left
        open, as ``close()`` would have (see ``_settle_ids``)."""
        with self._numbers_lock:
            if self._numbers is None and self._open_block():
                self._settle_ids(give_back=True)

    def _open_block(self) -> bool:
        con = self._messages()
        (last,) = con.execute("SELECT last FROM dq_ids").fetchone()
        return bool(last)

    def _release_numbers(self) -> None:
        """At close: the rest of this process's block is never used."""
        with self._numbers_lock:
            if self._numbers is not None:
                self._settle_ids(give_back=True)
                self._numbers = None

    def _settle_ids(self, *, give_back: bool) -> None:
        """Close the open block, ours or a dead owner's. Every numbered frame is moved
        first, so the ids above the highest one moved were never given to a put. With
        ``give_back``, if nothing was stored above the block since, they are given back:
        the tombstone goes (one stays at the last id used if its row was collected: no
        id ever comes back) and the next id is the one after it. Else they are skipped."""
        while self._drain_logs():
            pass
        con = self._messages()
        with self._write(con):
            first, last, highest, skipped = con.execute(
                "SELECT first, last, highest, skipped FROM dq_ids"
            ).fetchone()
            ours = self._numbers
            if ours is not None and ours[2] != first:  # another reserved since: ours only
                skipped += ours[1] - ours[0] + 1
            elif last:
                used_to = max(highest, first - 1)
                (top,) = con.execute("SELECT max(id) FROM dq_message").fetchone()
                if give_back and top == last + 1 and con.execute(_UNTOMB, (top,)).rowcount:
                    skipped -= 1  # the tombstone's id, and the unused ones, are free again
                    if used_to:  # its row may be collected: max(id) must not fall below
                        con.execute(_TOMBSTONE_AT, (used_to, self.clock.time()))
                else:
                    skipped += last - used_to
                first = last = highest = 0
            con.execute(
                "UPDATE dq_ids SET first = ?, last = ?, highest = ?, skipped = ?",
                (first, last, highest, skipped),
            )

    @guarded
    @drains_first
    def top_id(self) -> int:
        """The highest id stored or reserved: every id above is still unused."""
        con = self._messages()
        (top,) = con.execute("SELECT max(id) FROM dq_message").fetchone()
        return int(top or 0)
