"""Failure policy on the Executor and Pool: retries of raised exceptions with their own
budget, retry_on, dead letters and their revival, the failure log and its report, the
recurring-error hook, history and replay, deadlines and expiry under a ManualClock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import Executor, ManualClock, Priority, TaskExpired

from .conftest import TIMEOUT


def flaky(counter: str, fail_times: int) -> int:
    """Raise ConnectionError the first ``fail_times`` calls (counted in a file)."""
    with open(counter, "a") as f:
        f.write("x")
    calls = os.path.getsize(counter)
    if calls <= fail_times:
        raise ConnectionError(f"refused on call {calls}")
    return calls


def lookup(key: int) -> None:
    raise KeyError(f"no row {key} in table 12")


def bad_value() -> None:
    raise ValueError("not retried")


def echo(x: Any) -> Any:
    return x


def test_retries_run_a_raising_task_again_and_log_each_failure(tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    with Executor(1) as ex:
        fut = ex.options(retries=2, retry_on=(ConnectionError,)).submit(flaky, counter, 2)
        assert fut.result(TIMEOUT) == 3
        failures = ex.failures()
    assert [(f.attempt, f.cause, f.type, f.name) for f in failures] == [
        (1, "error", "ConnectionError", f"{__name__}.flaky"),
        (2, "error", "ConnectionError", f"{__name__}.flaky"),
    ]
    assert "refused on call 1" in failures[0].message
    assert "flaky" in failures[0].traceback and failures[0].pid not in (0, os.getpid())


def test_the_exception_reaches_the_future_after_the_last_retry(tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    with Executor(1) as ex:
        fut = ex.options(retries=1).submit(flaky, counter, 5)
        with pytest.raises(ConnectionError, match="call 2"):
            fut.result(TIMEOUT)
        (dead,) = ex.dead_letters()
    assert dead.id == fut.task_id and dead.body[0] is flaky and dead.attempts == 2


def test_exceptions_outside_retry_on_are_not_retried() -> None:
    with Executor(1, retries=5, retry_on=(ConnectionError,)) as ex:
        with pytest.raises(ValueError):
            ex.submit(bad_value).result(TIMEOUT)
        assert len(ex.failures()) == 1


def test_default_is_no_retry_as_process_pool_executor_and_dead_tasks_can_be_revived(
    tmp_path: Path,
) -> None:
    counter = str(tmp_path / "calls")
    with Executor(1, path=tmp_path / "q") as ex:
        fut = ex.submit(flaky, counter, 1)
        with pytest.raises(ConnectionError):
            fut.result(TIMEOUT)
        assert [d.id for d in ex.dead_letters()] == [fut.task_id]
        assert ex.retry_dead() == [fut.task_id]
        (again,) = ex.task_futures([fut.task_id]).values()
        assert again.result(TIMEOUT) == 2
        assert ex.dead_letters() == []
        assert ex.stats()["dead"] == 0


def test_report_groups_failures_and_the_hook_fires_at_the_threshold() -> None:
    seen: list[durableq.ErrorGroup] = []
    with Executor(2, on_recurring_error=seen.append, threshold=3) as ex:
        fs = [ex.submit(lookup, k) for k in range(5)]
        for f in fs:
            with pytest.raises(KeyError):
                f.result(TIMEOUT)
        (grouped,) = ex.report()
    assert (grouped.type, grouped.count, grouped.tasks) == ("KeyError", 5, 5)
    assert grouped.message == "'no row <n> in table <n>'" and "lookup" in grouped.frame
    assert len(seen) == 1 and seen[0].count == 3 and seen[0].fingerprint == grouped.fingerprint


def test_history_and_replay(tmp_path: Path) -> None:
    with Executor(1, path=tmp_path / "q", history=10) as ex:
        assert ex.submit(echo, "a").result(TIMEOUT) == "a"
        assert ex.submit(echo, "b").result(TIMEOUT) == "b"
        done = ex.history(state="done")
        assert [r.body[1] for r in done] == [("b",), ("a",)]
        new = ex.replay([done[1].id])
        (fut,) = ex.task_futures(new).values()
        assert fut.result(TIMEOUT) == "a"


def test_a_task_near_its_deadline_runs_first_and_an_expired_one_never_runs() -> None:
    clock = ManualClock(1_800_000_000.0)
    start = clock.time()
    with Executor(1, clock=clock, deadline_window=60) as ex:
        # Hold the one worker on a task while the others queue up behind it.
        first = ex.options(delay=10).submit(echo, "first")
        late = ex.options(ttl=5, delay=10).submit(echo, "never")
        plain = ex.options(delay=10).submit(echo, "plain")
        urgent = ex.options(delay=10, deadline=start + 100).submit(echo, "urgent")
        clock.advance(40)  # all due; "urgent" is inside its window; "never" expired
        with pytest.raises(TaskExpired):
            late.result(TIMEOUT)
        assert {first.result(TIMEOUT), plain.result(TIMEOUT), urgent.result(TIMEOUT)} == {
            "first", "plain", "urgent",
        }
        assert [r.priority for r in ex.history(state="done") if r.body[1] == ("urgent",)] == [
            Priority.HIGH
        ]
        assert ex.stats()["expired"] == 1


def test_pool_offers_the_same_reads(tmp_path: Path) -> None:
    with durableq.Pool(1, path=tmp_path / "q") as pool:
        with pytest.raises(KeyError):
            pool.apply(lookup, (1,))
        assert [f.type for f in pool.failures()] == ["KeyError"]
        assert len(pool.dead_letters()) == 1 and pool.report()[0].count == 1
