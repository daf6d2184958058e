"""Task functions the executor benchmarks submit.

They live in a module of their own, not in the scripts, because ``durableq.Executor``
stores each task's function by import path: a parent restarted by ``crash_recovery.py`` is a
new interpreter whose ``__main__`` may differ, and loky's workers re-import functions. Both
scripts run with ``bench/`` first on ``sys.path`` (Python puts a script's directory there),
which children inherit.
"""

from __future__ import annotations

import hashlib
import os
import time

import psutil

HOLD_MAX_S = 120.0  # a held task gives up after this, should nobody ever release it


def noop(i: int) -> int:
    return i


def spin(i: int, seconds: float = 0.001) -> int:
    """Busy-wait ``seconds`` of CPU (not sleep), then return ``i``."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass
    return i


def _append(path: str, line: str) -> None:
    # One write(2) on an O_APPEND descriptor: lines from many processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def hold(i: int, marker: str, release: str) -> int:
    """Append ``pid monotonic_ns`` to ``marker``, then wait until ``release`` exists."""
    _append(marker, f"{os.getpid()} {time.monotonic_ns()}\n")
    deadline = time.monotonic() + HOLD_MAX_S
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return i


def digest(i: int) -> str:
    """The value task ``i`` must return: cheap to recompute, wrong if mixed up with another."""
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=8).hexdigest()


def checked(i: int, gen: int, log: str, work_s: float) -> tuple[int, str]:
    """Log this execution (``i gen pid monotonic_ns``), sleep ``work_s``, return ``digest``."""
    _append(log, f"{i} {gen} {os.getpid()} {time.monotonic_ns()}\n")
    time.sleep(work_s)
    return i, digest(i)


def dead(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_dead(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; returns those still alive after ``timeout``.

    A zombie counts as dead: an orphan's zombie waits for init to reap it, which here
    happens about once a second, so ``psutil.wait_procs`` would add that second.
    """
    deadline = time.monotonic() + timeout
    while (alive := [p for p in procs if not dead(p)]) and time.monotonic() < deadline:
        time.sleep(0.001)
    return alive
