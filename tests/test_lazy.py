"""Lazy mode: new deliveries held while a (fake) machine is overloaded, resumed after."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import pytest

import durableq
from durableq import Lazy, Sample
from durableq._lazy import ALL, HIGH_ONLY, NONE, Gate, PsutilSampler, overload
from durableq._records import Fault

from .conftest import TIMEOUT

CALM = Sample(cpu=0.2, load_per_core=0.3, available_memory=0.8)
BUSY = Sample(cpu=0.99, load_per_core=0.3, available_memory=0.8)


class FakeSampler:
    """What the machine looks like, set by the test."""

    def __init__(self, sample: Sample = CALM) -> None:
        self.now = sample
        self.calls = 0

    def sample(self) -> Sample:
        self.calls += 1
        return self.now


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def square(x: int) -> int:
    return x * x


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_cpu": 1.5}, "max_cpu"),
        ({"min_available_memory": 0}, "min_available_memory"),
        ({"max_load_per_core": -1}, "max_load_per_core"),
        ({"check_every": 0}, "check_every"),
        ({"check_every": float("nan")}, "check_every"),
        ({"bypass": "low"}, "bypass"),
        ({"max_cpu": True}, "max_cpu"),
    ],
)
def test_bad_limits_are_refused_naming_the_option(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Lazy(**kwargs)  # type: ignore[arg-type]


def test_the_decision_names_the_first_limit_exceeded() -> None:
    lazy = Lazy(max_cpu=0.9, max_load_per_core=1.5, min_available_memory=0.1)
    assert overload(lazy, CALM) is None
    assert overload(lazy, BUSY) == "CPU 99% > 90%"
    assert overload(lazy, CALM._replace(load_per_core=2.0)) == "load 2.00 per core > 1.5"
    assert overload(lazy, CALM._replace(available_memory=0.05)) == "available memory 5% < 10%"
    assert overload(Lazy(max_cpu=None), BUSY) is None
    assert overload(lazy, CALM._replace(cpu=None)) == "measuring"


def test_the_gate_samples_every_check_every_and_records_hold_and_resume() -> None:
    sampler, clock, log = FakeSampler(), FakeClock(), []
    gate = Gate(Lazy(check_every=1.0), log.append, sampler=sampler, clock=clock)
    assert gate.admit() == ALL and sampler.calls == 1
    sampler.now = BUSY
    clock.t += 0.5
    assert gate.admit() == ALL and sampler.calls == 1  # not re-sampled before check_every
    assert gate.recheck_in() is None
    clock.t += 0.5
    assert gate.admit() == NONE and sampler.calls == 2
    assert gate.recheck_in() == 1.0
    clock.t += 2.5
    assert gate.stats() == {
        "lazy_held": True, "lazy_reason": "CPU 99% > 90%", "lazy_holds": 1,
        "lazy_held_seconds": 2.5,
    }
    sampler.now = CALM
    assert gate.admit() == ALL
    assert [(f.kind, f.detail) for f in log] == [
        ("lazy-hold", "new deliveries held: CPU 99% > 90%"),
        ("lazy-resume", "deliveries resumed after 2.5 s"),
    ]
    assert gate.stats()["lazy_held"] is False and gate.stats()["lazy_held_seconds"] == 2.5


def test_bypass_high_lets_the_high_band_through_while_holding() -> None:
    sampler = FakeSampler(BUSY)
    gate = Gate(Lazy(bypass="high"), lambda f: None, sampler=sampler, clock=FakeClock())
    assert gate.admit() == HIGH_ONLY


def test_the_psutil_sampler_measures_a_window_before_its_first_cpu_figure() -> None:
    clock = FakeClock()
    sampler = PsutilSampler(clock)
    first = sampler.sample()
    assert first.cpu is None and 0 < first.available_memory <= 1 and first.load_per_core >= 0
    clock.t += 0.2
    cpu = sampler.sample().cpu
    assert cpu is not None and 0 <= cpu <= 1
    log: list[Fault] = []
    gate = Gate(Lazy(), log.append, clock=clock)
    assert gate.admit() == NONE and gate.recheck_in() == pytest.approx(0.1)
    assert gate.stats()["lazy_held"] is False and log == []  # measuring is not a hold


def test_a_lazy_queue_holds_deliveries_while_overloaded_and_resumes(tmp_path: Path) -> None:
    sampler = FakeSampler(BUSY)
    q = durableq.Queue(path=tmp_path / "q", lazy=Lazy(check_every=0.02, sampler=sampler))
    q.put("held")
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)  # a dozen checks, all overloaded
    stats = q.stats()
    assert stats["lazy_held"] is True and stats["lazy_holds"] == 1 and stats["delivered"] == 0
    sampler.now = CALM
    assert q.get(timeout=TIMEOUT) == "held"
    kinds = [f.kind for f in q.faults()]
    assert kinds == ["lazy-hold", "lazy-resume"]
    assert not q.fault.is_set()  # a hold is logged, but nothing failed
    q.close()


def test_a_lazy_executor_starts_nothing_new_while_overloaded(tmp_path: Path) -> None:
    sampler = FakeSampler(CALM)
    lazy = Lazy(check_every=0.02, sampler=sampler)
    with durableq.Executor(1, path=tmp_path / "q", lazy=lazy) as ex:
        assert ex.submit(square, 3).result(TIMEOUT) == 9
        sampler.now = BUSY
        time.sleep(0.05)  # past check_every: the next look at the gate samples again
        fut = ex.submit(square, 4)
        assert not fut.running()
        time.sleep(0.3)  # ~15 checks: none may start it
        assert not fut.running() and not fut.done()
        assert ex.stats()["lazy_held"] is True
        sampler.now = CALM
        assert fut.result(TIMEOUT) == 16
        assert [f.kind for f in ex.faults()] == ["lazy-hold", "lazy-resume"]
        assert not ex.fault.is_set()


def test_a_pool_takes_lazy_too() -> None:
    with durableq.Pool(1, lazy=Lazy(sampler=FakeSampler())) as pool:
        assert pool.apply(square, (5,)) == 25


def test_bypass_high_delivers_high_messages_while_holding_the_rest(tmp_path: Path) -> None:
    sampler = FakeSampler(BUSY)
    lazy = Lazy(check_every=0.02, bypass="high", sampler=sampler)
    q = durableq.Queue(path=tmp_path / "q", lazy=lazy)
    q.put("medium")
    q.put("urgent", priority="high")
    assert q.get(timeout=TIMEOUT) == "urgent"
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    sampler.now = CALM
    assert q.get(timeout=TIMEOUT) == "medium"
    q.close()


def test_bypass_high_runs_high_tasks_on_a_held_executor(tmp_path: Path) -> None:
    sampler = FakeSampler(BUSY)
    lazy = Lazy(check_every=0.02, bypass="high", sampler=sampler)
    with durableq.Executor(1, path=tmp_path / "q", lazy=lazy) as ex:
        low = ex.submit(square, 2)
        high = ex.options(priority="high").submit(square, 3)
        assert high.result(TIMEOUT) == 9
        assert not low.running() and not low.done()
        sampler.now = CALM
        assert low.result(TIMEOUT) == 4


def test_memory_store_leases_only_up_to_a_band() -> None:
    store = durableq.MemoryStore()
    store.put_many([b"m"], priority=durableq.Priority.MEDIUM)
    store.put_many([b"h"], priority=durableq.Priority.HIGH)
    got = store.lease("o", 5, now=time.time(), ttl=60, max_priority=durableq.Priority.HIGH)
    assert [g.payload for g in got] == [b"h"]
    assert [g.payload for g in store.lease("o", 5, now=time.time(), ttl=60)] == [b"m"]
