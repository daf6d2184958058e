"""Worker memory limits and the "auto" pool size, with tasks that really allocate."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import durableq
import durableq._limits
from durableq._limits import HIGH, LOW, MemoryWatch, auto_workers, memory_limits, parse_size

from .conftest import TIMEOUT

MB = 10**6
_kept: list[bytearray] = []


def grow_and_keep(mb: int) -> int:
    """Allocate ``mb`` MB, touched so it is resident, and keep it past the task."""
    _kept.append(bytearray(b"\x01") * (mb * MB))
    return os.getpid()


def grow_and_wait(mb: int) -> int:
    block = bytearray(b"\x01") * (mb * MB)
    time.sleep(TIMEOUT)  # killed long before: the hard limit is polled every 0.25 s
    return len(block)


def pid() -> int:
    return os.getpid()


@pytest.mark.parametrize(
    ("value", "size"),
    [(512, 512), ("512MB", 512 * MB), ("1GB", 10**9), ("1.5 GB", 15 * 10**8),
     ("2GiB", 2 * 2**30), ("64m", 64 * 2**20), ("100", 100)],
)
def test_sizes_parse(value: int | str, size: int) -> None:
    assert parse_size(value, "max_worker_memory") == size


@pytest.mark.parametrize("value", ["lots", "1 PB", "-5MB", 0, -1, "", True, 1.5])
def test_bad_sizes_are_refused_naming_the_option(value: object) -> None:
    with pytest.raises(ValueError, match="max_worker_memory must be"):
        parse_size(value, "max_worker_memory")  # type: ignore[arg-type]


def test_the_hard_limit_may_not_be_below_the_soft_one() -> None:
    with pytest.raises(ValueError, match=r"hard_worker_memory .* at least max_worker_memory"):
        memory_limits("1GB", "500MB")
    with pytest.raises(ValueError, match="hard_worker_memory must be"):
        durableq.Executor(1, hard_worker_memory="huge")


def test_auto_sizes_from_cpus_and_available_memory() -> None:
    gib = 2**30
    assert auto_workers(8, 64 * gib, gib) == 8
    assert auto_workers(8, 5 * gib, gib) == 4  # a fifth kept free
    assert auto_workers(8, gib // 2, gib) == 1  # never none


def test_auto_shrinks_under_memory_pressure_and_grows_back() -> None:
    free = [0.5]
    watch = MemoryWatch(None, None, auto=4, available=lambda: free[0])
    assert watch.resize(4) == 4
    free[0] = LOW / 2
    assert watch.resize(4) == 3 and watch.resize(1) == 1
    free[0] = (LOW + HIGH) / 2
    assert watch.resize(3) == 3  # between the marks: no flapping
    free[0] = HIGH * 2
    assert watch.resize(3) == 4 and watch.resize(4) == 4
    assert watch.stats()["memory_shrunk"] == 1


def test_a_worker_over_max_worker_memory_after_a_task_is_recycled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RSS is read at most every AFTER_TASK_EVERY per worker; read after every task here,
    # or a quick allocation right after a small task would be seen one task late.
    monkeypatch.setattr(durableq._limits, "AFTER_TASK_EVERY", 0.0)
    with durableq.Executor(1, path=tmp_path / "q", max_worker_memory="150MB") as ex:
        small = ex.submit(pid).result(TIMEOUT)
        assert ex.submit(pid).result(TIMEOUT) == small  # under the limit: same worker
        big = ex.submit(grow_and_keep, 200).result(TIMEOUT)
        assert big == small
        after = ex.submit(pid).result(TIMEOUT)
        assert after != big  # recycled: a fresh worker ran the next task
        assert ex.stats()["memory_recycled"] == 1
        (fault,) = [f for f in ex.faults() if f.kind == "worker-recycled"]
        assert f"worker {big}" in fault.detail and "max_worker_memory" in fault.detail
        assert not ex.fault.is_set()  # a recycle is not a failure


def test_a_worker_over_hard_worker_memory_mid_task_is_killed_as_a_crash(tmp_path: Path) -> None:
    with durableq.Executor(
        1, path=tmp_path / "q", hard_worker_memory="150MB", max_attempts=2
    ) as ex:
        fut = ex.submit(grow_and_wait, 300)
        with pytest.raises(durableq.WorkerCrashed) as info:
            fut.result(TIMEOUT)
        assert info.value.attempts == 2 and info.value.exitcode == -9
        assert ex.submit(pid).result(TIMEOUT) > 0  # the pool goes on
        crashes = [f for f in ex.faults() if f.kind == "worker-crashed"]
        assert len(crashes) == 2 and ex.fault.is_set()
        assert "hard_worker_memory" in crashes[0].detail and "RSS" in crashes[0].detail
        assert ex.stats()["memory_killed"] == 2


def test_max_workers_auto_starts_a_pool_that_runs() -> None:
    with durableq.Executor("auto", max_worker_memory="100MB") as ex:
        workers = ex.stats()["workers"]
        assert 1 <= workers <= (os.cpu_count() or 1)
        assert ex.submit(pid).result(TIMEOUT) > 0
    with durableq.Pool("auto") as pool:
        assert pool.apply(pid) > 0
