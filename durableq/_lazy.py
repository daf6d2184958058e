"""Lazy mode: hand out new work only while the machine is not overloaded.

``Lazy`` holds the limits; a ``Sampler`` reads the machine (psutil by default); the pure
``overload`` names the first limit a sample exceeds; a ``Gate``, asked by a dispatcher
before it leases, re-samples at most every ``check_every`` seconds and records each hold
and resume. A held dispatcher leases nothing new (with ``bypass="high"``: nothing below
HIGH); what is already in flight runs on. It needs no thread of its own: the dispatcher
wakes to re-check through the timeout it already waits with (``Gate.recheck_in``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

from ._records import Fault, Priority

#: A CPU figure needs a window this long: /proc/stat counts in 10 ms ticks, so a shorter
#: one reads 0% or 100% by chance. Until the first window has passed the gate holds.
MIN_WINDOW: Final = 0.1
_BYPASS = (None, "high")


class Sample(NamedTuple):
    """One reading of the machine. ``cpu`` is None until a window has been measured."""

    cpu: float | None  #: busy fraction of all CPUs since the previous reading
    load_per_core: float  #: 1-minute load average / CPU count
    available_memory: float  #: fraction of memory available


class Sampler(Protocol):
    """Reads the machine; the gate calls it at most every ``check_every`` seconds."""

    def sample(self) -> Sample: ...


@dataclass(frozen=True)
class Lazy:
    """Limits past which a lazy queue, executor or pool holds new deliveries.

    Args:
        max_cpu: busy fraction of all CPUs (0-1) since the last check; None: no limit.
        max_load_per_core: 1-minute load average divided by the CPU count; None: no limit.
        min_available_memory: fraction of memory available (0-1); None: no limit.
        check_every: seconds between two readings of the machine.
        bypass: ``"high"`` lets HIGH-priority messages through while holding.
        sampler: reads the machine instead of psutil (tests, or another measure of load).
    """

    max_cpu: float | None = 0.9
    max_load_per_core: float | None = 1.5
    min_available_memory: float | None = 0.1
    check_every: float = 1.0
    bypass: str | None = None
    sampler: Sampler | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("max_cpu", "min_available_memory"):
            value = getattr(self, name)
            if value is not None and not (_number(value) and 0 < value <= 1):
                raise ValueError(f"Lazy({name}=...) must be a fraction in (0, 1] or None, "
                                 f"not {value!r}")
        load = self.max_load_per_core
        if load is not None and not (_number(load) and load > 0):
            raise ValueError(f"Lazy(max_load_per_core=...) must be > 0 or None, not {load!r}")
        if not (_number(self.check_every) and 0.01 <= self.check_every <= 3600):
            raise ValueError(
                f"Lazy(check_every=...) must be seconds from 0.01 to 3600, not {self.check_every!r}"
            )
        if self.bypass not in _BYPASS:
            raise ValueError(f"Lazy(bypass=...) must be None or 'high', not {self.bypass!r}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def lazy_of(spec: Lazy | bool | None) -> Lazy | None:
    """``lazy=`` as given to a queue, executor or pool: True means the default limits."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return Lazy()
    if isinstance(spec, Lazy):
        return spec
    raise TypeError(f"lazy must be a durableq.Lazy, True or None, not {type(spec).__name__}")


class PsutilSampler:
    """``psutil.cpu_percent(interval=None)`` (the busy share since the previous call: no
    sleeping), ``os.getloadavg()`` and ``psutil.virtual_memory()``: ~100 us a reading."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        import psutil

        self._psutil = psutil
        self._clock = clock
        self._cores = psutil.cpu_count() or 1
        self._cpu: float | None = None
        self._since = clock()
        psutil.cpu_percent(interval=None)  # starts the first window

    def sample(self) -> Sample:
        psutil = self._psutil
        now = self._clock()
        if now - self._since >= MIN_WINDOW:
            self._cpu = psutil.cpu_percent(interval=None) / 100.0
            self._since = now
        mem = psutil.virtual_memory()
        return Sample(self._cpu, os.getloadavg()[0] / self._cores, mem.available / mem.total)


def overload(lazy: Lazy, sample: Sample) -> str | None:
    """The first limit ``sample`` exceeds, described, or None: the pure decision."""
    if sample.cpu is None:
        return "measuring"
    if lazy.max_cpu is not None and sample.cpu > lazy.max_cpu:
        return f"CPU {sample.cpu:.0%} > {lazy.max_cpu:.0%}"
    if lazy.max_load_per_core is not None and sample.load_per_core > lazy.max_load_per_core:
        return f"load {sample.load_per_core:.2f} per core > {lazy.max_load_per_core:g}"
    mem = lazy.min_available_memory
    if mem is not None and sample.available_memory < mem:
        return f"available memory {sample.available_memory:.0%} < {mem:.0%}"
    return None


#: ``Gate.admit`` answers: the lowest-priority band that may be leased now.
ALL: Final = int(Priority.LOW)
HIGH_ONLY: Final = int(Priority.HIGH)
NONE: Final = -1


class Gate:
    """A dispatcher's lazy-mode check. Not thread-safe: the dispatcher thread alone calls it.

    Args:
        lazy: the limits.
        record: called with a ``lazy-hold`` / ``lazy-resume`` fault for the fault log.
        sampler: reads the machine (default ``PsutilSampler``).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        lazy: Lazy,
        record: Callable[[Fault], None],
        *,
        sampler: Sampler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lazy = lazy
        self.record = record
        self.clock = clock
        sampler = sampler if sampler is not None else lazy.sampler
        self.sampler = sampler if sampler is not None else PsutilSampler(clock)
        # Why it holds now, or None. A real sampler needs one window before its first
        # CPU figure: a lazy dispatcher starts "measuring" (held, but not an overload).
        self.reason: str | None = None if sampler is not None else "measuring"
        self.next_check = clock() + (0.0 if sampler is not None else MIN_WINDOW)
        self.holds = 0
        self.held_seconds = 0.0
        self.held_since = 0.0
        self.samples = 0

    @property
    def held(self) -> bool:
        return self.reason is not None

    def admit(self) -> int:
        """The lowest band a lease may take now: ``ALL``, ``HIGH_ONLY`` or ``NONE``."""
        now = self.clock()
        if now >= self.next_check:
            self.next_check = now + (
                MIN_WINDOW if self.reason == "measuring" else self.lazy.check_every
            )
            self.samples += 1
            self._became(overload(self.lazy, self.sampler.sample()), now)
        if self.reason is None:
            return ALL
        return HIGH_ONLY if self.lazy.bypass == "high" else NONE

    def _became(self, reason: str | None, now: float) -> None:
        was_holding = self.reason not in (None, "measuring")
        self.reason = reason
        holding = reason not in (None, "measuring")
        if holding and not was_holding:
            self.held_since = now
            self.holds += 1
            self.record(Fault("lazy-hold", time.time(), f"new deliveries held: {reason}"))
        elif was_holding and not holding:
            held = now - self.held_since
            self.held_seconds += held
            self.record(Fault("lazy-resume", time.time(), f"deliveries resumed after {held:.1f} s"))

    def recheck_in(self) -> float | None:
        """Seconds until the next reading while holding (the dispatcher's wait timeout)."""
        if self.reason is None:
            return None
        return max(0.0, self.next_check - self.clock())

    def stats(self) -> dict[str, Any]:
        held = self.reason not in (None, "measuring")
        now = self.clock()
        return {
            "lazy_held": held,
            "lazy_reason": self.reason if held else None,
            "lazy_holds": self.holds,
            "lazy_held_seconds": round(
                self.held_seconds + (now - self.held_since if held else 0.0), 3
            ),
        }
