"""``durableq top``: a live view of a queue, refreshed from the store's tallies.

Every tick reads ``tallies()`` (index seeks and counts over the small sets: totals, in
flight, dead, expired: ~2 ms on a million-message backlog), the failure log since the last
tick and the fault log's tail; rates are deltas of the totals, sparklines a ring buffer
of them. The exact ``counts()`` scans waiting messages (~1.3 s per million), so it runs
once at start and then no more often than keeps it under ``FULL_COUNT_SHARE`` of a core;
in between, waiting messages are estimated from it and the tallies' deltas (puts minus
acks, leases, deaths and expiries), marked as such. Workers are found with psutil by the
process title executor workers set (``durableq worker <queue> ...``): a full process scan
every ``SCAN_EVERY`` seconds, and a look at the known ones every tick.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import click

from ._cli_common import DURATION, ago, console, emit, handled, reading, when
from ._inspect import Inspector

#: Share of one core the periodic exact count may take.
FULL_COUNT_SHARE: Final = 0.005
#: Seconds between two full scans of the process table for new workers.
SCAN_EVERY: Final = 5.0
#: Ticks kept for the sparklines.
HISTORY: Final = 40
_BARS: Final = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """Unicode bars scaled to the largest value (all lowest when every value is 0)."""
    top = max(values, default=0.0)
    if top <= 0:
        return _BARS[0] * len(values)
    steps = len(_BARS) - 1
    return "".join(_BARS[min(steps, int(v / top * steps + 0.5))] for v in values)


@dataclass
class Worker:
    pid: int
    title: str
    task: str  #: "idle", "init" or "<id> <function>"
    started: float  #: when this task (or state) was first seen
    rss: int
    cpu: float


@dataclass
class View:
    """One refresh: what ``durableq top`` draws, and what ``--json`` prints."""

    time: float
    owner_pid: int | None
    owner_alive: bool
    counts: dict[str, Any]  #: the last exact counts()
    counts_age: float  #: seconds since they were read
    waiting_estimate: int  #: ready + scheduled now, estimated from the tallies
    tallies: dict[str, int]
    rates: dict[str, float]  #: put / ack / fail per second over the last tick
    history: dict[str, list[float]]
    workers: list[Worker]
    faults: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time, "owner_pid": self.owner_pid, "owner_alive": self.owner_alive,
            "counts": self.counts, "counts_age": self.counts_age,
            "waiting_estimate": self.waiting_estimate, "tallies": self.tallies,
            "rates": self.rates, "workers": [w.__dict__ for w in self.workers],
            "faults": self.faults,
        }


@dataclass
class TopModel:
    """The state behind ``durableq top``: call ``refresh()`` once per tick."""

    queue: Inspector
    name: str = ""
    _counts: dict[str, Any] = field(default_factory=dict)
    _counted_at: float = 0.0
    _count_cost: float = 0.0
    _base: dict[str, int] = field(default_factory=dict)  # tallies when counted
    _last: dict[str, int] = field(default_factory=dict)
    _last_at: float = 0.0
    _history: dict[str, collections.deque[float]] = field(default_factory=dict)
    _workers: dict[int, Worker] = field(default_factory=dict)
    _scanned_at: float = float("-inf")

    def __post_init__(self) -> None:
        self.name = os.path.basename(self.queue.path)
        self._history = {k: collections.deque(maxlen=HISTORY) for k in ("put", "ack", "fail")}

    def refresh(self) -> View:
        now, mono = time.time(), time.monotonic()
        tallies = self.queue.tallies()
        if not self._counts or mono - self._counted_at > self._count_cost / FULL_COUNT_SHARE:
            start = time.monotonic()
            self._counts = self.queue.counts().as_dict()
            self._counted_at = time.monotonic()
            self._count_cost = self._counted_at - start
            self._base = tallies
        rates = {"put": 0.0, "ack": 0.0, "fail": 0.0}
        if self._last:
            span = max(mono - self._last_at, 1e-6)
            rates["put"] = (tallies["put_total"] - self._last["put_total"]) / span
            rates["ack"] = (tallies["acked_total"] - self._last["acked_total"]) / span
            rates["fail"] = len(self.queue.failures(since=now - span, limit=None)) / span
        for key, value in rates.items():
            self._history[key].append(value)
        self._last, self._last_at = tallies, mono
        pid, alive = self.queue.owner()
        return View(
            time=now, owner_pid=pid, owner_alive=alive, counts=self._counts,
            counts_age=mono - self._counted_at, waiting_estimate=self._estimate(tallies),
            tallies=tallies, rates=rates,
            history={k: list(v) for k, v in self._history.items()},
            workers=self._find_workers(pid if alive else None),
            faults=_as_dicts(self.queue.faults(limit=6)),
        )

    def _estimate(self, tallies: dict[str, int]) -> int:
        base, c = self._base, self._counts
        moved = sum(
            tallies[k] - base[k] for k in ("acked_total", "in_flight", "dead", "expired")
        )
        waiting = c["ready"] + c["scheduled"] + tallies["put_total"] - base["put_total"] - moved
        return max(0, int(waiting))

    def _find_workers(self, owner: int | None) -> list[Worker]:
        import psutil

        mono, prefix = time.monotonic(), f"durableq worker {self.name} "
        if mono - self._scanned_at >= SCAN_EVERY:
            self._scanned_at = mono
            for proc in psutil.process_iter(["pid", "cmdline"]):
                title = _title(proc.info["cmdline"])
                if title.startswith(prefix) and proc.pid not in self._workers:
                    self._workers[proc.pid] = Worker(proc.pid, title, "", time.time(), 0, 0.0)
        for pid, w in list(self._workers.items()):
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    title = _title(proc.cmdline())
                    if owner is not None and proc.ppid() != owner:
                        raise psutil.NoSuchProcess(pid)  # another queue of the same name
                    w.rss, w.cpu = proc.memory_info().rss, proc.cpu_percent()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                del self._workers[pid]
                continue
            task = title[len(prefix):].removeprefix("task ")
            if task != w.task or title != w.title:
                w.task, w.title, w.started = task, title, time.time()
        return sorted(self._workers.values(), key=lambda w: w.pid)


def _title(cmdline: list[str] | None) -> str:
    """A process title as one line: setproctitle pads a shorter title with spaces."""
    return " ".join(" ".join(cmdline or ()).split())


def _as_dicts(faults: list[Any]) -> list[dict[str, Any]]:
    return [{"kind": f.kind, "time": f.time, "detail": f.detail} for f in faults]


def render(view: View, path: str) -> Any:
    """The rich renderable for one view."""
    from rich.console import Group
    from rich.table import Table

    c, t = view.counts, view.tallies
    owner = f"owner pid {view.owner_pid} " + ("alive" if view.owner_alive else "not running")
    states = Table(title=f"{path}  ({owner})", expand=True)
    for col in ("waiting", "in flight", "dead", "expired", "high / medium / low", "oldest"):
        states.add_column(col)
    bands = c["by_priority"]
    states.add_row(
        f"{view.waiting_estimate:,}" + ("" if view.counts_age < 2 else " ≈"),
        f"{t['in_flight']:,}", f"{t['dead']:,}", f"{t['expired']:,}",
        " / ".join(f"{bands.get(b, 0):,}" for b in ("high", "medium", "low")),
        ago(c["oldest_ready_age"]),
    )
    rates = Table(expand=True, show_header=True)
    for col in ("rate", "per second", "last ticks", "total"):
        rates.add_column(col)
    totals = {"put": t["put_total"], "ack": t["acked_total"], "fail": None}
    for key in ("put", "ack", "fail"):
        total = totals[key]
        rates.add_row(
            key, f"{view.rates[key]:,.1f}", sparkline(view.history[key]),
            "-" if total is None else f"{total:,}",
        )
    workers = Table(title="workers", expand=True)
    for col in ("pid", "task", "runtime", "rss", "cpu"):
        workers.add_column(col)
    for w in view.workers:
        workers.add_row(
            str(w.pid), w.task, ago(view.time - w.started), f"{w.rss / 2**20:,.0f} MiB",
            f"{w.cpu:.0f}%",
        )
    faults = Table(title="faults", expand=True)
    for col in ("when", "kind", "detail"):
        faults.add_column(col, overflow="fold")
    for f in view.faults:
        faults.add_row(when(f["time"]), f["kind"], f["detail"])
    note = f"exact counts {ago(view.counts_age)} ago; press q to quit"
    return Group(states, rates, workers, faults, note)


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """stdin in cbreak mode (keys arrive one by one, unechoed) while it is a terminal."""
    if not sys.stdin.isatty():
        yield None
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield sys.stdin
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(keys: Any, seconds: float) -> bool:
    """Wait up to ``seconds`` for a key; True when it was q. Without a terminal, sleeps."""
    if keys is None:
        time.sleep(seconds)  # the refresh interval itself: nothing else to wait on
        return False
    ready, _, _ = select.select([keys], [], [], seconds)
    return bool(ready) and os.read(keys.fileno(), 32).lower().startswith(b"q")


@click.command()
@click.argument("path", type=click.Path())
@click.option("--interval", type=DURATION, default=1.0, show_default=True, help="Refresh period.")
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after N refreshes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per refresh (JSON lines).")
@handled
def top(path: str, interval: float, count: int | None, as_json: bool) -> None:
    """A live view of the queue at PATH: counts, put/ack/fail rates with sparklines,
    workers (pid, task, runtime, RSS, CPU) and the fault log. Press q (or Ctrl-C) to quit.

    Example: durableq top jobs.q --interval 2s
    """
    with reading(path) as queue:
        model = TopModel(queue)
        if as_json:
            n = 0
            while count is None or n < count:
                if n:
                    time.sleep(interval)  # the requested period between two snapshots
                emit(model.refresh().as_dict())
                n += 1
            return
        from rich.live import Live

        out = console()
        with _keys() as keys, Live(console=out, auto_refresh=False, transient=False) as live:
            n = 0
            try:
                while count is None or n < count:
                    live.update(render(model.refresh(), queue.path), refresh=True)
                    n += 1
                    if (count is None or n < count) and _wait_for_quit(keys, interval):
                        break
            except KeyboardInterrupt:
                pass
