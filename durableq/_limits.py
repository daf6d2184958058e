"""Worker memory limits and the ``max_workers="auto"`` pool size.

The executor's dispatcher owns a ``MemoryWatch`` and asks it at two moments: after a
worker's task (over ``max_worker_memory``: the worker finishes what it holds and is
replaced, as with ``max_tasks_per_child``), and every ``POLL`` seconds while tasks run
(over ``hard_worker_memory``: killed now, the attempt charged as a crash; under memory
pressure an ``"auto"`` pool retires a worker rather than let the kernel's OOM killer pick
a process). Idle pools are never polled.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any, Final

#: Seconds between two RSS readings of running workers (hard limit, memory pressure):
#: each costs ~20 us per worker; a task can outgrow the limit by what it allocates in one.
POLL: Final = 0.25
#: After a task, a worker's RSS is read at most this often: a stream of short tasks would
#: otherwise pay a /proc read each. Its next task's end reads it again.
AFTER_TASK_EVERY: Final = 0.05
#: What an ``"auto"`` pool budgets per worker when no limit says.
DEFAULT_WORKER_MEMORY: Final = 256 * 2**20
#: ``"auto"``: retire a worker while less than LOW of memory is available; grow back to the
#: first size once more than HIGH is (the gap keeps it from flapping).
LOW: Final = 0.10
HIGH: Final = 0.25

_UNITS: Final = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(value: int | str | None, name: str) -> int | None:
    """Bytes from an int or a size such as ``"512MB"``, ``"1.5GB"``, ``"2GiB"``.

    KB/MB/GB/TB are powers of 1000; KiB/MiB/GiB/TiB (and K/M/G/T) powers of 1024.

    Raises:
        ValueError: naming ``name`` and what it accepts.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"{name} must be > 0 bytes, not {value!r}")
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f'{name} must be bytes (an int) or a size such as "512MB", "1GB" or "2GiB", '
            f"not {value!r}"
        )
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"{name} must be > 0 bytes, not {value!r}")
    return size


def memory_limits(
    soft: int | str | None, hard: int | str | None
) -> tuple[int | None, int | None]:
    """Parsed ``(max_worker_memory, hard_worker_memory)``; the hard one may not be lower."""
    s = parse_size(soft, "max_worker_memory")
    h = parse_size(hard, "hard_worker_memory")
    if s is not None and h is not None and h < s:
        raise ValueError(
            f"hard_worker_memory ({h} bytes) must be at least max_worker_memory ({s} bytes)"
        )
    return s, h


def auto_workers(cpus: int, available: int, per_worker: int) -> int:
    """One worker per CPU, as many as ``available`` memory holds at ``per_worker`` each
    (keeping a fifth free), and at least one."""
    return max(1, min(cpus, int(available * 0.8) // per_worker))


def _psutil() -> Any:
    import psutil

    return psutil


def rss(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes, None if it is gone."""
    psutil = _psutil()
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def available_fraction() -> float:
    mem = _psutil().virtual_memory()
    return float(mem.available / mem.total)


def describe(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


class MemoryWatch:
    """The dispatcher's memory limits. Not thread-safe: the dispatcher thread alone calls it.

    Args:
        soft: recycle a worker whose RSS is over this after a task.
        hard: kill a worker whose RSS is over this while it runs a task.
        auto: the ``"auto"`` pool's first size (None: a fixed size; no pressure checks).
        read_rss, available: injectable readings (tests).
    """

    def __init__(
        self,
        soft: int | None,
        hard: int | None,
        auto: int | None = None,
        *,
        read_rss: Callable[[int], int | None] = rss,
        available: Callable[[], float] = available_fraction,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.soft, self.hard, self.auto = soft, hard, auto
        self.read_rss, self.available, self.clock = read_rss, available, clock
        self.last_read: dict[int, float] = {}  # pid -> when its RSS was read after a task
        self.next_poll = 0.0
        self.recycled = 0
        self.killed = 0
        self.shrunk = 0

    @property
    def polls(self) -> bool:
        """Whether running tasks need a periodic look."""
        return self.hard is not None or self.auto is not None

    def over_soft(self, pid: int) -> int | None:
        """The worker's RSS if a task just ended over ``soft`` (rate-limited per worker)."""
        if self.soft is None:
            return None
        now = self.clock()
        if now - self.last_read.get(pid, -1e9) < AFTER_TASK_EVERY:
            return None
        self.last_read[pid] = now
        size = self.read_rss(pid)
        if size is not None and size > self.soft:
            self.recycled += 1
            return size
        return None

    def forget(self, pid: int) -> None:
        self.last_read.pop(pid, None)

    def poll_in(self) -> float:
        return max(0.0, self.next_poll - self.clock())

    def poll(self, pids: list[int]) -> list[tuple[int, int]] | None:
        """None if no poll is due, else ``[(pid, rss)]`` of running workers over ``hard``."""
        now = self.clock()
        if now < self.next_poll:
            return None
        self.next_poll = now + POLL
        if self.hard is None:
            return []
        over = []
        for pid in pids:
            size = self.read_rss(pid)
            if size is not None and size > self.hard:
                over.append((pid, size))
        self.killed += len(over)
        return over

    def resize(self, size: int) -> int:
        """The ``"auto"`` pool's size given memory pressure now: one less while below LOW
        (never under one), one more while above HIGH (never over the first size)."""
        if self.auto is None:
            return size
        free = self.available()
        if free < LOW and size > 1:
            self.shrunk += 1
            return size - 1
        if free > HIGH and size < self.auto:
            return size + 1
        return size

    def stats(self) -> dict[str, int]:
        return {
            "memory_recycled": self.recycled,
            "memory_killed": self.killed,
            "memory_shrunk": self.shrunk,
        }


def auto_size(soft: int | None, hard: int | None) -> int:
    """``max_workers="auto"`` on this machine now."""
    per_worker = hard or soft or DEFAULT_WORKER_MEMORY
    return auto_workers(os.cpu_count() or 1, int(_psutil().virtual_memory().available),
                        per_worker)
