"""SQLite plumbing for the embedded store: connections, transactions, busy retries, and
the guard that keeps fork() from copying a thread's SQLite mutexes into a child.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

from .._errors import StoreError, StoreTimeout
from ._salvage import corrupt_error, is_corrupt

T = TypeVar("T")

SYNC: Final = {"normal": "NORMAL", "full": "FULL"}
#: SQLite runs UPDATE ... FROM (3.33): else ``many`` callers fall back to executemany.
SET_BASED: Final = sqlite3.sqlite_version_info >= (3, 33)
#: Variables one statement of ``many`` binds at most (SQLite allows 32,766 since 3.32).
_MAX_VARIABLES: Final = 4000


def many(
    con: sqlite3.Connection,
    template: str,
    rows: Sequence[Sequence[Any]],
    *,
    before: Sequence[Any] = (),
    after: Sequence[Any] = (),
) -> int:
    """Run ``template`` with ``{values}`` a VALUES list of ``rows``, one statement per
    chunk, binding ``before`` and ``after`` around them; the rows changed.

    What ``executemany`` does in one step per row, this does in one step per statement:
    every step gives up the GIL, and a thread that gives it up while another waits for it
    waits in turn to get it back, which is most of the cost of a busy owner's round.
    """
    if not rows:
        return 0
    width = len(rows[0])
    # Statements of power-of-two sizes only (n rows take popcount(n) of them): a handful
    # of texts per template that stay in the connection's statement cache, where one text
    # per row count made SQLite parse a new statement nearly every call (~1 us a row).
    per = 1 << (max(1, (_MAX_VARIABLES - len(before) - len(after)) // width).bit_length() - 1)
    row_sql = "(" + ", ".join(["?"] * width) + ")"
    changed = 0
    start = 0
    while start < len(rows):
        size = min(per, 1 << ((len(rows) - start).bit_length() - 1))
        part = rows[start : start + size]
        start += size
        args = list(before)
        for row in part:
            args += row
        args += after
        changed += con.execute(_sized(template, row_sql, size), args).rowcount
    return changed


@functools.lru_cache(maxsize=512)
def _sized(template: str, row_sql: str, size: int) -> str:
    return template.format(values=", ".join([row_sql] * size))


class ForkGuard:
    """Threads enter SQLite together; fork() waits until none is inside.

    A thread inside SQLite may hold one of its C mutexes (the VFS's file-lock table, the
    allocator); a child forked at that moment inherits it locked and hangs on its first
    SQLite call (seen in half the forks of a store-busy process). So every store verb runs
    in ``shared()``, and a fork handler waits for them to finish and holds new ones back
    until the child exists. Re-entrant per thread: a verb may call another.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._forking = False
        self._depth = threading.local()

    def enter(self) -> int:
        """Enter a store verb; returns the depth to hand back to ``leave``."""
        local = self._depth
        depth: int = getattr(local, "n", 0)
        if depth == 0:
            with self._cond:
                while self._forking:
                    self._cond.wait()
                self._inside += 1
        local.n = depth + 1
        return depth

    def leave(self, depth: int) -> None:
        self._depth.n = depth
        if depth == 0:
            with self._cond:
                self._inside -= 1
                if not self._inside and self._forking:
                    self._cond.notify_all()  # before_fork waits for the last one out

    @contextmanager
    def shared(self) -> Iterator[None]:
        depth = self.enter()
        try:
            yield
        finally:
            self.leave(depth)

    def before_fork(self) -> None:
        if getattr(self._depth, "n", 0):
            return  # forking from inside a verb: nothing to wait for that would ever end
        self._cond.acquire()
        self._forking = True
        while self._inside:
            self._cond.wait()
        # keep holding the lock through fork(): no thread can enter SQLite meanwhile

    def after_fork_in_parent(self) -> None:
        if self._forking:
            self._forking = False
            self._cond.notify_all()
            self._cond.release()

    def after_fork_in_child(self) -> None:
        self.__init__()  # type: ignore[misc]  # the parent's threads do not exist here


guard = ForkGuard()
os.register_at_fork(
    before=guard.before_fork,
    after_in_parent=guard.after_fork_in_parent,
    after_in_child=guard.after_fork_in_child,
)


def guarded(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        depth = guard.enter()  # not a context manager: this runs on every store call
        try:
            return method(*args, **kwargs)
        finally:
            guard.leave(depth)

    return wrapper


def is_busy(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)



def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class Busy(Exception):
    """A non-waiting write found the lock taken."""




class SQLiteFiles:
    """Per-thread, per-process connections to SQLite files in one directory, with
    transactions that retry finely while another connection holds the lock."""

    path: str
    sync: str
    timeout: float

    def _connect(self, name: str) -> sqlite3.Connection:
        con = sqlite3.connect(
            os.path.join(self.path, name),
            timeout=0,  # busy: handled by _busy_retry, far finer than SQLite's 1 ms naps
            isolation_level=None,
            check_same_thread=False,
            cached_statements=512,  # many(): a few sizes of each set-based statement
        )
        # Even a no-op journal_mode pragma may find a writer's lock: retry like any write.
        self._busy_retry("open", lambda: con.execute("PRAGMA journal_mode = WAL"))
        con.execute(f"PRAGMA synchronous = {SYNC[self.sync]}")
        # A text value that is not UTF-8 (written into the file by someone else) must not
        # make every read of its row raise: it is read with replacement characters, and a
        # record holding one fails its signature check like any other forged record.
        con.text_factory = _text
        return con


    def _busy_retry(self, step: str, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying while another connection holds the lock.

        SQLite's own busy handler naps 1, 2, 5, 10... ms; a collision with another short
        transaction would lose milliseconds. Retrying from 20 us up, bounded by ``timeout``,
        keeps a collision near the length of the other transaction.
        """
        delay, deadline = 20e-6, 0.0
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise self._error(step, exc) from exc
                now = time.monotonic()
                if not deadline:
                    deadline = now + self.timeout
                elif now >= deadline:
                    raise self._error(step, exc) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.002)
            except sqlite3.Error as exc:
                raise self._error(step, exc) from exc

    @contextmanager
    def _write(self, con: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
        # IMMEDIATE takes the write lock now: no deadlock upgrading a read lock later. The
        # ledger uses a plain BEGIN: it has one writer, and IMMEDIATE would also lock the
        # attached message file against producers.
        self._busy_retry("begin", lambda: con.execute(begin))
        try:
            yield
        except BaseException as exc:
            con.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._error("write", exc) from exc
            raise
        try:
            self._busy_retry("commit", lambda: con.execute("COMMIT"))
        except StoreError:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _error(self, step: str, exc: sqlite3.Error) -> StoreError:
        if is_corrupt(exc):
            return corrupt_error(self.path, exc)  # names the damaged file
        if is_busy(exc):
            return StoreTimeout(
                f"{self.path} stayed locked for {self.timeout:g} s during {step}; "
                "raise timeout= or look for a stuck process"
            )
        return StoreError(f"{step} failed on {self.path}: {exc}")


    @contextmanager
    def _try_write(self, con: sqlite3.Connection) -> Iterator[None]:
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise Busy from exc
            raise self._error("begin", exc) from exc
        try:
            yield
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

