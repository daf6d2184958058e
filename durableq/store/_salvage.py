"""Corrupt queue files: name the damaged file, and salvage every record still readable.

SQLite reports damage ("database disk image is malformed") without saying which of the
attached files it found it in, so the first such error is diagnosed with ``PRAGMA
quick_check`` on each database file and the ``StoreCorrupt`` raised names it. ``salvage``
rebuilds a damaged file from what can still be read: each table is scanned forwards and
backwards up to the damage, and the rows in between are looked up one by one, so only
rows stored on damaged pages are lost. Rows keep their ids and MACs, so a row garbled
without SQLite noticing is still caught (and quarantined) by its HMAC check. The damaged
file is kept beside the new one as ``<name>.corrupt-<time>``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Final

from .._errors import StoreCorrupt
from .._security import DATABASES, create_private

#: A diagnosis holds this long: a dispatcher retrying every 0.5 s must not re-check a
#: large file each time.
DIAGNOSIS_TTL: Final = 30.0
_diagnosed: dict[str, tuple[float, list[str]]] = {}


def is_corrupt(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "malformed" in text or "not a database" in text or "corrupt" in text


def damaged_files(directory: str) -> list[str]:
    """The database files in ``directory`` that fail ``PRAGMA quick_check``."""
    bad = []
    for name in DATABASES:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                (verdict,) = con.execute("PRAGMA quick_check(1)").fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            verdict = "unreadable"
        if verdict != "ok":
            bad.append(path)
    return bad


def corrupt_error(directory: str, exc: sqlite3.Error) -> StoreCorrupt:
    """``StoreCorrupt`` naming the damaged file(s) of ``directory``."""
    now = time.monotonic()
    cached = _diagnosed.get(directory)
    if cached is None or now - cached[0] > DIAGNOSIS_TTL:
        cached = _diagnosed[directory] = (now, damaged_files(directory))
    files = cached[1] or [os.path.join(directory, "cache.db or owner.db")]
    return StoreCorrupt(directory, files, str(exc))


@dataclass
class Salvaged:
    """What ``salvage`` did to one database file."""

    path: str
    kept_as: str = ""  #: where the damaged file now is
    rows: dict[str, int] = field(default_factory=dict)  #: rows copied, per table
    lost: dict[str, list[int]] = field(default_factory=dict)  #: rowids unreadable, per table
    error: str = ""  #: why nothing could be copied, if so


def salvage(path: str | os.PathLike[str]) -> list[Salvaged]:
    """Rebuild every damaged database file of the queue at ``path`` from its readable rows.

    The queue must have no owner (its lock is taken for the duration: ``QueueLocked``
    otherwise). Files that pass ``quick_check`` are left alone. Returns one ``Salvaged``
    per rebuilt file.
    """
    from .._lock import OwnerLock

    directory = os.path.abspath(os.fspath(path))
    lock = OwnerLock(directory, wait=False)
    try:
        done = [_rebuild(p) for p in damaged_files(directory)]
    finally:
        lock.release()
    _diagnosed.pop(directory, None)
    return done


def _rebuild(path: str) -> Salvaged:
    report = Salvaged(path)
    new = path + ".salvage"
    for leftover in (new, new + "-wal", new + "-shm", new + "-journal"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    create_private(new)
    old = sqlite3.connect(path, isolation_level=None)
    dst = sqlite3.connect(new, isolation_level=None)
    try:
        try:
            schema = old.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                "AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
        except sqlite3.Error as exc:
            report.error = f"its schema cannot be read ({exc}): nothing to copy"
            schema = []
        dst.execute("BEGIN")
        for kind, _, sql in schema:
            if kind == "table":
                dst.execute(sql)
        for kind, name, _ in schema:
            if kind == "table":
                report.rows[name], report.lost[name] = _copy(old, dst, name)
        for kind, _, sql in schema:
            if kind in ("index", "trigger", "view"):
                dst.execute(sql)
        dst.execute("COMMIT")
        dst.execute("PRAGMA journal_mode = WAL")
    finally:
        old.close()
        dst.close()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report.kept_as = f"{path}.corrupt-{stamp}"
    os.replace(path, report.kept_as)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, report.kept_as + suffix)
    os.replace(new, path)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(new + suffix):
            os.unlink(new + suffix)
    return report


def _copy(old: sqlite3.Connection, dst: sqlite3.Connection, table: str) -> tuple[int, list[int]]:
    """Copy every readable row of ``table``; returns (rows copied, rowids lost)."""
    cols = [row[1] for row in old.execute(f'PRAGMA table_info("{table}")')]
    names = ", ".join(f'"{c}"' for c in cols)
    insert = (
        f'INSERT OR REPLACE INTO "{table}" (rowid, {names}) '
        f"VALUES ({', '.join('?' * (len(cols) + 1))})"
    )
    select = f'SELECT rowid, {names} FROM "{table}"'
    seen: set[int] = set()

    def scan(order: str) -> int | None:
        """Rows in ``order`` until the damage; returns the last rowid read."""
        last = None
        try:
            for row in old.execute(f"{select} ORDER BY rowid {order}"):
                if row[0] in seen:
                    break  # the two scans met: nothing is damaged in between
                dst.execute(insert, row)
                seen.add(row[0])
                last = row[0]
        except sqlite3.DatabaseError:
            pass
        return last

    low = scan("ASC")
    high = scan("DESC")
    lost: list[int] = []
    if high is not None and (low is None or high - low > 1) and high - 1 not in seen:
        for rowid in range((low or 0) + 1, high):  # between the damage's two edges
            try:
                row = old.execute(f"{select} WHERE rowid = ?", (rowid,)).fetchone()
            except sqlite3.DatabaseError:
                lost.append(rowid)
                continue
            if row is not None:
                dst.execute(insert, row)
                seen.add(rowid)
    return len(seen), lost
