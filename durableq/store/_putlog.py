"""Put logs: each producing process appends its puts to a file of its own; the next
reader of the store moves them into ``dq_message`` in one transaction.

Why: a SQLite commit costs a producer ~30 us of CPU (two pages into the write-ahead log and
its locks) and makes every producer take one writer lock in turn; one ``write(2)`` to a
file nobody else writes costs ~3 us and survives a crash of the process just as well (the
kernel's page cache outlives the process). ``sync="full"`` adds an ``fdatasync`` that
concurrent puts of one process share (group commit), as SQLite's own would be.

Layout: ``<queue>/logs/<time ns>-<pid>-<random>.log``, 0600. A producer creates its log
under a temporary name, takes an exclusive ``flock`` on it, then renames it into place, so
a reader that can take that lock knows the writer is gone (the lock dies with its
process). A log is a sequence of frames, one per ``put`` or ``put_many``::

    header <II> (payload length, rows) | payload | HMAC-SHA256 (32 bytes)
    payload = rows of <iddddI> (priority, due, created, deadline, bump, expires, body
              length; NaN for "none") followed by the body

A numbered frame (the top bit of its row count set) carries each row's id before it, as
``<q>``: ids the queue's owner reserved (``DiskcacheStore.put_numbered``), so that a put
that must name its message at once still costs one ``write(2)``.

The MAC covers a tag, the log's name, the frame's offset, the header and the payload: a
frame copied to another place fails. A frame is written with one ``write(2)``: all its rows
or none (a short write, the disk full, is cut off again before ``put`` raises).

Moving (``drain``): under the message file's write lock, each log is read from the offset
``dq_log`` records for it; the rows of its complete, valid frames are inserted and the
offset advanced in the same transaction, so every frame lands exactly once. A frame that
fails its MAC is never inserted: it and the rest of that log are skipped and reported. A
log read to its end whose writer is gone is deleted, then its ``dq_log`` row.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hmac
import math
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from .._errors import StoreError
from ._integrity import _keyed

DIRECTORY: Final = "logs"
SUFFIX: Final = ".log"
_HEADER: Final = struct.Struct("<II")  # payload length, rows
_ROW: Final = struct.Struct("<idddddI")
_ID: Final = struct.Struct("<q")
#: Row-count bit of a numbered frame: each row starts with its id.
NUMBERED: Final = 0x8000_0000
_MAC_SIZE: Final = 32
_TAG: Final = b"dql1"
#: Batches of at least this many messages are committed to the message table by their
#: producer (``put_quiet``, ``put_numbered``), not appended to its put log.
DIRECT_BATCH: Final = 64
#: A producer starts a new log once its current one holds this much.
ROTATE_BYTES: Final = 32 * 1024 * 1024
#: Bytes read from the logs by one drain at most: bounds its transaction and memory.
DRAIN_BYTES: Final = 8 * 1024 * 1024
_NONE: Final = math.nan
#: Seconds between checks, by a reader with nothing new to read, for logs whose writer
#: died (to delete them).
LIVENESS_EVERY: Final = 1.0
#: A directory's mtime may tick only every few ms (the kernel's coarse clock): a listing
#: younger than this is checked again.
_COARSE_NS: Final = 50_000_000


def _opt(x: float | None) -> float:
    return _NONE if x is None else x


def _unopt(x: float) -> float | None:
    return None if x != x else x


def _mac(key: bytes, name: bytes, offset: int, header: bytes, payload: bytes | memoryview) -> bytes:
    h = _keyed(key).copy()
    h.update(_TAG + len(name).to_bytes(2, "little") + name + offset.to_bytes(8, "little"))
    h.update(header)
    h.update(payload)
    return h.digest()


def rows_of(
    payloads: Sequence[bytes], created: float, priority: int, due: float,
    deadline: float | None, bump: float | None, expires: float | None,
) -> list[tuple[Any, ...]]:
    """A put's rows, in the order the log and the message table share: (priority, due,
    created, body, deadline, bump, expires)."""
    return [(priority, due, created, p, deadline, bump, expires) for p in payloads]


def encode_rows(
    rows: Sequence[tuple[Any, ...]], ids: Sequence[int] | None = None
) -> tuple[bytes, bytes]:
    """``(header, payload)`` of a frame holding ``rows`` of (priority, due, created, body,
    deadline, bump, expires); numbered with ``ids`` (one per row) when given."""
    parts: list[bytes | bytearray | memoryview] = []
    pack = _ROW.pack
    if ids is not None and len(ids) != len(rows):
        raise ValueError(f"{len(ids)} ids for {len(rows)} rows")
    for i, (priority, due, created, body, deadline, bump, expires) in enumerate(rows):
        if not isinstance(body, bytes | bytearray | memoryview):
            raise StoreError(f"a message body must be bytes, not {type(body).__name__}")
        if ids is not None:
            parts.append(_ID.pack(ids[i]))
        parts.append(
            pack(priority, due, created, _opt(deadline), _opt(bump), _opt(expires), len(body))
        )
        parts.append(body)
    payload = b"".join(parts)
    count = len(rows) if ids is None else len(rows) | NUMBERED
    return _HEADER.pack(len(payload), count), payload


def decode_rows(payload: memoryview, count: int) -> tuple[list[tuple[Any, ...]], list[int]]:
    """The rows of a frame's payload (already checked by its MAC), and their ids if the
    frame is numbered (else an empty list)."""
    rows = []
    ids = []
    numbered = bool(count & NUMBERED)
    at = 0
    unpack = _ROW.unpack_from
    for _ in range(count & ~NUMBERED):
        if numbered:
            ids.append(_ID.unpack_from(payload, at)[0])
            at += _ID.size
        priority, due, created, deadline, bump, expires, n = unpack(payload, at)
        at += _ROW.size
        body = bytes(payload[at : at + n])
        at += n
        rows.append((priority, due, created, body, _unopt(deadline), _unopt(bump), _unopt(expires)))
    if at != len(payload):
        raise ValueError("frame payload does not match its row count")
    if numbered and min(ids, default=1) < 1:
        raise ValueError("a numbered frame holds an id below 1")
    return rows, ids


class LogWriter:
    """This process's own log in one queue directory (one per store object)."""

    def __init__(self, directory: str, key: bytes, *, full_sync: bool) -> None:
        self.directory = directory
        self.key = key
        self.full_sync = full_sync
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._fd = -1
        self._name = b""
        self._size = 0  # bytes written to the current log (we are its only writer)
        self._synced = 0  # of which fdatasync'ed (sync="full")
        self._pid = os.getpid()

    def append(self, rows: Sequence[tuple[Any, ...]], ids: Sequence[int] | None = None) -> None:
        """Write ``rows`` as one frame (numbered with ``ids`` if given); durable against a
        process crash once this returns (and against power loss with ``full_sync``).
        Raises ``StoreError``; nothing of the frame is left in the log then."""
        header, payload = encode_rows(rows, ids)
        with self._lock:
            if self._pid != os.getpid():
                self.forget()  # a forked child: the parent's log is not ours
            try:
                if self._fd < 0 or self._size >= ROTATE_BYTES:
                    self._rotate()
                frame = header + payload + _mac(self.key, self._name, self._size, header, payload)
            except OSError as exc:
                raise StoreError(f"cannot write the put log in {self.directory}: {exc}") from exc
            written = 0
            try:
                while written < len(frame):  # one write(2) unless the disk fills mid-frame
                    n = os.write(self._fd, frame[written:])
                    if not n:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    written += n
            except OSError as exc:
                if written:
                    self._cut()
                raise StoreError(
                    f"cannot write the put log in {self.directory}: {exc} "
                    f"({written} of {len(frame)} bytes written, then cut off)"
                ) from exc
            self._size += written
            fd, end = self._fd, self._size
        if self.full_sync:
            self._sync(fd, end)

    def _sync(self, fd: int, end: int) -> None:
        """Group commit: one fdatasync covers every frame written before it started."""
        with self._sync_lock:
            if self._synced >= end and fd == self._fd:
                return
            with self._lock:
                upto, current = self._size, self._fd
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise StoreError(f"cannot sync the put log in {self.directory}: {exc}") from exc
            if current == fd:
                self._synced = upto

    def _cut(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._close()  # cannot cut the torn frame off: the reader stops before it

    def _rotate(self) -> None:
        """Start a new log: made under a temporary name, locked, then renamed into place,
        so no reader ever sees it unlocked while its writer lives."""
        if self._fd >= 0:
            if self.full_sync:
                os.fdatasync(self._fd)
            self._close()
        os.makedirs(os.path.join(self.directory, DIRECTORY), mode=0o700, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        tmp = os.path.join(self.directory, DIRECTORY, "." + name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, os.path.join(self.directory, DIRECTORY, name))
            if self.full_sync:
                _sync_directory(os.path.join(self.directory, DIRECTORY))
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._name, self._size, self._synced = fd, name.encode(), 0, 0

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock: the log may go once it is read
        self._fd, self._name, self._size, self._synced = -1, b"", 0, 0

    def forget(self) -> None:
        """In a forked child: drop (without writing to) the parent's log. Closing our copy
        of its descriptor keeps the parent's lock; it is only released with the parent's."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._name, self._size, self._synced = -1, b"", 0, 0
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._pid = os.getpid()

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._close()


def _sync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Drained:
    """What one drain read: rows to insert (those of numbered frames apart, with their
    ids), new offsets, logs to delete, problems."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    numbered: list[tuple[Any, ...]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # of the numbered rows, in order
    offsets: list[tuple[str, int]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # offsets kept for logs now deleted
    problems: list[str] = field(default_factory=list)


class LogReader:
    """The logs of one queue directory, as this process last saw them: keeps each open
    (an ``fstat`` says whether it grew) and the directory's mtime (a log came or went)."""

    def __init__(self, directory: str, key: bytes) -> None:
        self.path = os.path.join(directory, DIRECTORY)
        self.key = key
        self._fds: dict[str, int] = {}
        self._seen: dict[str, int] = {}  # offset up to which each log was found drained
        self._mtime = -1
        self._names: list[str] = []  # the logs, as of _mtime
        self._next_check = 0.0  # when pending() next asks whether writers are gone
        self._pid = os.getpid()
        #: ``dq_log`` as this process last committed or read it (None: read it first).
        self.offsets: dict[str, int] | None = None

    def pending(self) -> bool:
        """Whether a log may hold frames not yet moved (cheap: a stat, an fstat per log)."""
        if self._pid != os.getpid():
            self.forget()
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return False
        if self._relist(mtime):
            return True
        seen = self._seen
        if any(os.fstat(fd).st_size > seen.get(name, 0) for name, fd in self._fds.items()):
            return True
        now = time.monotonic()
        if now < self._next_check:
            return False
        # Once a second at most: a log read to its end whose writer has died since goes.
        self._next_check = now + LIVENESS_EVERY
        return any(self._writer_gone(fd) for fd in self._fds.values())

    def read(self, offsets: dict[str, int]) -> Drained:
        """Inside the caller's write transaction: every complete frame past ``offsets``
        (as ``dq_log`` holds them), up to ``DRAIN_BYTES``."""
        if self._pid != os.getpid():
            self.forget()
        out = Drained()
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if self._relist(mtime):  # a log came or went: list them again
                self._names = sorted(
                    n for n in os.listdir(self.path) if n.endswith(SUFFIX) and n[0] != "."
                )
                self._mtime = mtime
        except FileNotFoundError:
            return out
        names = self._names
        out.stale = sorted(set(offsets) - set(names))
        for old in set(self._fds) - set(names):
            os.close(self._fds.pop(old))
            self._seen.pop(old, None)
        budget = DRAIN_BYTES
        for name in names:
            if budget <= 0:
                break  # the rest waits for the next drain, in order
            fd = self._fds.get(name)
            if fd is None:
                try:
                    fd = os.open(os.path.join(self.path, name), os.O_RDONLY | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue  # deleted meanwhile by another reader
                self._fds[name] = fd
            # Asked first: once its writer is gone, the log never changes again.
            gone = self._writer_gone(fd)
            start = offsets.get(name, 0)
            size = os.fstat(fd).st_size
            end = start
            if size > start:
                data = os.pread(fd, min(size - start, budget), start)
                if len(data) >= _HEADER.size and len(data) < size - start:
                    # The budget is soft: a frame larger than it is read whole.
                    need = _HEADER.size + _HEADER.unpack_from(data)[0] + _MAC_SIZE
                    if need > len(data):
                        data = os.pread(fd, min(size - start, need), start)
                budget -= len(data)
                used, problem = self._frames(name, start, memoryview(data), out)
                end = start + used
                if problem is not None:
                    out.problems.append(
                        f"put log {name}: frame at offset {end} fails its check ({problem}); "
                        f"its {size - end} bytes to the end of the log skipped"
                    )
                    end = size
                elif gone and end < size and start + len(data) == size:
                    out.problems.append(
                        f"put log {name}: {size - end} bytes of an incomplete last frame "
                        "dropped (its writer died writing it, or the disk filled)"
                    )
                    end = size
                if end != start:
                    out.offsets.append((name, end))
            self._seen[name] = end
            if gone and end == size:
                out.finished.append(name)
        return out

    def _relist(self, mtime: int) -> bool:
        """Whether the listing may be out of date: the directory changed since, or changed
        so recently that a later change could carry the same (coarse) timestamp."""
        return mtime != self._mtime or time.time_ns() - mtime < _COARSE_NS

    def _frames(
        self, name: str, offset: int, data: memoryview, out: Drained
    ) -> tuple[int, str | None]:
        """Collect the rows of the complete frames at the start of ``data``: (bytes used,
        None), stopping at an incomplete frame; or (offset of a bad frame, what is wrong)."""
        raw_name = name.encode()
        at = 0
        while len(data) - at >= _HEADER.size:
            length, count = _HEADER.unpack_from(data, at)
            end = at + _HEADER.size + length + _MAC_SIZE
            if end > len(data):
                break  # incomplete: the rest is on its way (or was torn)
            header = bytes(data[at : at + _HEADER.size])
            payload = data[at + _HEADER.size : end - _MAC_SIZE]
            mac = data[end - _MAC_SIZE : end]
            if not hmac.compare_digest(_mac(self.key, raw_name, offset + at, header, payload), mac):
                return at, "bad MAC"
            try:
                rows, ids = decode_rows(payload, count)
            except (ValueError, struct.error) as exc:
                return at, str(exc)
            if ids:
                out.numbered += rows
                out.ids += ids
            else:
                out.rows += rows
            at = end
        return at, None

    def _writer_gone(self, fd: int) -> bool:
        """Whether the log's writer is gone: its lock can be taken (and is, for good: the
        log will be deleted, and no process ever writes another's log)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def remove(self, name: str) -> None:
        """Delete a drained log whose writer is gone."""
        fd = self._fds.pop(name, None)
        self._seen.pop(name, None)
        try:
            os.unlink(os.path.join(self.path, name))
        except FileNotFoundError:
            pass
        if fd is not None:
            os.close(fd)

    def forget(self) -> None:
        """In a forked child: the parent's descriptors are not ours to use (a lock taken
        through one would be the parent's too)."""
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds, self._seen, self._mtime, self._pid = {}, {}, -1, os.getpid()
        self._names, self.offsets = [], None

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds, self._seen, self._mtime = {}, {}, -1
        self._names, self.offsets = [], None


_F = TypeVar("_F", bound=Callable[..., Any])


def drains_first(method: _F) -> _F:
    """For a store verb that reads the delivery order or its counts: move what the put
    logs hold into the message table first (``_drain``: a stat when there is nothing)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._drain()
        return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
