"""Scheduled puts beside plain ones on ``durableq.Queue``: put rate, exact delivery order,
owner memory, the idle timer and a reopen on a 1M backlog.

Reproduce (from the repository root; the full run takes a few minutes on 2 CPUs)::

    .venv/bin/python bench/schedule_bench.py            # 1M messages a side, writes the JSON below
    .venv/bin/python bench/schedule_bench.py --quick    # 50k a side; JSON to the temp directory

Counts can be overridden: ``--n`` (messages put with ``put_many``), ``--single-n`` (single
``put`` calls on top), ``--idle-s`` (each idle window), ``--seed``. Results go to
``bench/results/schedule_bench.json`` (``--json`` to change; ``--quick`` writes to the temp
directory unless told, so a smoke run never replaces the full figures).

The same steps run for a *plain* queue and a *scheduled* one, with the same message count,
the same batch sizes and the same put order. Each queue is owned by a process forked from
this one, with ``clock=durableq.ManualClock(T0)``, so nothing waits for real time. The two
owners fill their queues in turns (TURN_GROUPS ``put_many`` calls or TURN_SINGLES single
puts each, the first turn alternating), so load from other work on the machine falls on both
sides alike; the drains take turns the same way (DRAIN_TURN messages); the other steps run
one side after the other. Bodies are ``(band, due, seq)``:
what the message was put with, and its put sequence.

1. Put rate. ``put_many`` takes one priority and one delay per call, so each of the ``--n``
   messages draws a random band and a random whole-second delay (seeded), spread over an
   hour starting LEAD (60 s) ahead, and they are put grouped by that pair: 10,800 groups in
   random order, ~93 messages a call at 1M. The plain side puts the same batch sizes in the
   same order with no options. Then ``--single-n`` single ``put`` calls, each with its own
   random band and float delay (LEAD + [0, 3600) s), against as many plain ``put`` calls.
2. Timer CPU while nothing is due (scheduled side): every message is 1 min to 1 h 1 min
   ahead and a consumer process blocks in ``get()``. After SETTLE_S (its request reaches
   the owner, whose lease finds nothing due; that CPU is reported apart), the owner's CPU
   time, all threads (psutil), over ``--idle-s``. The plain figure: the same wait on the
   empty queue after the drain (step 5), measured on both sides.
3. Timer wake (scheduled side): the owner advances its clock past the hour; time from
   ``advance()`` to the waiting consumer's ``get()`` returning. That consumer exits cleanly
   (its one message acked); on the plain side it gets the first ready message the same way.
4. Reopen: the owner is SIGKILLed with the backlog in its store. A fresh process times
   ``Queue(path, clock=ManualClock(T0 + 1 h 1 min 2 s))`` to a consumer process it forks
   getting its first message. There is no index to rebuild on boot: delivery order is
   SQLite's index ``dq_message_order (state, priority, due, id)``, read in place, so this
   is all that boot costs.
5. Delivery order: that consumer drains the queue with ``get()`` (``ack="auto"``, the
   default), checking each body against the one before (starting from the message step 3
   took): (band, due, seq) must rise, and every seq must arrive once. Its rate is the time
   spent in its drain turns, after its first ``get()``.
6. Owner RSS (psutil): before the queue is made and after the fill; in the reopened owner,
   before ``Queue(path)`` and once the first message was served.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing as mp
import os
import queue
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil
from _env import machine, reproduce_command

import durableq

CTX = mp.get_context("fork")
CPUS = os.cpu_count() or 1
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "schedule_bench.json"
QUICK_OUT = Path(tempfile.gettempdir()) / "schedule_bench-quick.json"

T0 = 1_700_000_000.0  # every owner's ManualClock starts here
HOUR = 3600
#: The earliest delay. Nothing may come due during the idle window, as with a real clock: a
#: frozen ManualClock with a message due in 1 s would wake the owner every real second.
LEAD = 60
REOPEN_AT = T0 + LEAD + HOUR + 2  # the reopened owner's clock: everything is due
BANDS = ("high", "medium", "low")  # band i is durableq.Priority(i)
MEDIUM = int(durableq.Priority.MEDIUM)
READY = "ready"
REST = "rest"  # the fill is over: go on with the other steps
SIDES = ("plain", "scheduled")
PUT_MANY, SINGLE = "put_many", "single"
#: ``put_many`` calls and single puts per turn. The two owners take turns, so the machine's
#: load (other work on it) falls on both sides alike.
TURN_GROUPS = 200
TURN_SINGLES = 1_000
DRAIN_TURN = 50_000  # messages each consumer gets a turn, the two sides alternating
WAIT_S = 120.0  # bound on any cross-process wait; only a hang reaches it
STALL_S = 60.0  # a consumer that waits this long for its next message reports what it got
SETTLE_S = 1.0  # lets a consumer's get() reach the owner before an idle window starts
MB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    n: int
    single_n: int
    idle_s: float
    seed: int
    quick: bool


FULL = Sizes(n=1_000_000, single_n=20_000, idle_s=10.0, seed=1, quick=False)
QUICK = Sizes(n=50_000, single_n=5_000, idle_s=3.0, seed=1, quick=True)


@dataclass(frozen=True)
class Plan:
    """What is put, in order: ``put_many`` groups (band, delay s, count), then single puts
    (band, delay s). The plain side puts the same counts without options."""

    groups: list[tuple[int, int, int]]
    singles: list[tuple[int, float]]

    @property
    def total(self) -> int:
        return sum(g[2] for g in self.groups) + len(self.singles)

    def first_key(self, scheduled: bool) -> tuple[int, float, int]:
        """The body that must be delivered first."""
        if not scheduled:
            return (MEDIUM, T0, 0)
        keys = []
        seq = 0
        for band, delay, count in self.groups:
            keys.append((band, T0 + delay, seq))
            seq += count
        keys.extend((band, T0 + delay, seq + i) for i, (band, delay) in enumerate(self.singles))
        return min(keys)


def make_plan(sizes: Sizes) -> Plan:
    rng = random.Random(sizes.seed)
    counts = [0] * (len(BANDS) * HOUR)
    for _ in range(sizes.n):
        counts[rng.randrange(len(counts))] += 1
    order = [g for g, c in enumerate(counts) if c]
    rng.shuffle(order)
    groups = [(g // HOUR, LEAD + g % HOUR, counts[g]) for g in order]
    singles = [(rng.randrange(len(BANDS)), LEAD + rng.uniform(0.0, HOUR))
               for _ in range(sizes.single_n)]
    return Plan(groups, singles)


# -- child processes ----------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    pass


@dataclass
class Child:
    proc: BaseProcess
    conn: Connection

    def recv(self, timeout: float = WAIT_S) -> Any:
        """The child's next report; raises if it died first or stayed silent ``timeout`` s."""
        ready = wait([self.conn, self.proc.sentinel], timeout)
        if self.conn.poll():
            try:
                return self.conn.recv()
            except EOFError:
                pass
        if not ready:
            raise TimeoutError(f"{self.proc.name}: no report within {timeout:g} s")
        self.proc.join(WAIT_S)
        raise ChildFailed(f"{self.proc.name} exited with code {self.proc.exitcode}")

    def send(self, obj: Any) -> None:
        self.conn.send(obj)

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None, "started"
        return self.proc.pid

    def join(self, timeout: float = WAIT_S) -> None:
        self.proc.join(timeout)
        if self.proc.exitcode != 0:
            raise ChildFailed(f"{self.proc.name} exit code {self.proc.exitcode} after {timeout} s")


def _child_main(conn: Connection, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)  # where a hang was
    try:
        target(conn, *args)
    finally:
        conn.close()


@dataclass
class Children:
    """Starts children; on exit terminates any still running and joins them all."""

    kids: list[Child] = field(default_factory=list)

    def start(self, target: Callable[..., None], *args: Any) -> Child:
        parent_end, child_end = CTX.Pipe()
        name = f"bench-{target.__name__.strip('_')}"
        proc = CTX.Process(target=_child_main, args=(child_end, target, args), name=name)
        proc.start()
        child_end.close()
        self.kids.append(Child(proc, parent_end))
        return self.kids[-1]

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        for kid in self.kids:
            if kid.proc.is_alive():
                kid.proc.terminate()
            kid.proc.join(WAIT_S)
            if kid.proc.is_alive():
                kid.proc.kill()
                kid.proc.join(WAIT_S)
            kid.conn.close()


def _rss() -> float:
    return float(psutil.Process().memory_info().rss) / MB


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _cpu_window(consumer_pid: int, seconds: float) -> dict[str, float]:
    """This (owner) process's CPU, all threads, and the consumer's, over ``seconds``."""
    me, consumer = psutil.Process(), psutil.Process(consumer_pid)
    own, other, start = _cpu_s(me), _cpu_s(consumer), time.monotonic()
    time.sleep(seconds)  # the owner's main thread idles; its dispatcher thread is measured
    wall = time.monotonic() - start
    own, other = _cpu_s(me) - own, _cpu_s(consumer) - other
    return {"wall_s": wall, "owner_cpu_s": own, "owner_cpu_pct": 100 * own / wall,
            "consumer_cpu_s": other}


def _disk_mb(path: str) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / MB


def _counts(stats: dict[str, Any]) -> dict[str, Any]:
    keys = ("ready", "scheduled", "in_flight", "by_priority", "next_due", "put_total",
            "acked_total")
    return {k: stats.get(k) for k in keys}


# -- the first owner: fill, idle timer, wake; then SIGKILLed ------------------------------------


def put_turn(
    q: durableq.Queue, plan: Plan, turn: tuple[str, int, int], seq: int, scheduled: bool
) -> int:
    """Put one turn of the plan: ``put_many`` groups or single puts [lo, hi); the next seq."""
    kind, lo, hi = turn
    if kind == PUT_MANY:
        for band, delay, count in plan.groups[lo:hi]:
            if scheduled:
                due = T0 + delay
                q.put_many([(band, due, s) for s in range(seq, seq + count)],
                           priority=BANDS[band], delay=delay)
            else:
                q.put_many([(MEDIUM, T0, s) for s in range(seq, seq + count)])
            seq += count
        return seq
    for band, later in plan.singles[lo:hi]:
        if scheduled:
            q.put((band, T0 + later, seq), priority=BANDS[band], delay=later)
        else:
            q.put((MEDIUM, T0, seq))
        seq += 1
    return seq


def turns(plan: Plan) -> list[tuple[str, int, int]]:
    """The fill cut into turns: every ``put_many`` group in order, then every single put."""
    many = [(PUT_MANY, lo, min(lo + TURN_GROUPS, len(plan.groups)))
            for lo in range(0, len(plan.groups), TURN_GROUPS)]
    single = [(SINGLE, lo, min(lo + TURN_SINGLES, len(plan.singles)))
              for lo in range(0, len(plan.singles), TURN_SINGLES)]
    return many + single


def _first_taker(conn: Connection, q: durableq.Queue) -> None:
    conn.send(READY)
    body = q.get(timeout=WAIT_S)
    got = time.perf_counter_ns()
    q.close()  # a clean exit: acks it (ack="auto"); anything prefetched goes back unchanged
    conn.send((got, tuple(body)))


def _settled(q: durableq.Queue) -> dict[str, Any]:
    """Stats once the first taker's ack has been applied (its BYE may still be in transit)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        stats = q.stats()
        if stats["in_flight"] == 0 and stats["acked_total"] == 1:
            return stats
        if time.monotonic() > deadline:
            raise TimeoutError(f"first message never acked: {_counts(stats)}")
        time.sleep(0.01)


def _first_owner(conn: Connection, scheduled: bool, path: str, plan: Plan, idle_s: float) -> None:
    out: dict[str, Any] = {"owner_rss_before_mb": _rss()}
    clock = durableq.ManualClock(T0)
    q = durableq.Queue(path=path, ctx=CTX, clock=clock)
    conn.send(READY)
    seq, spent = 0, {PUT_MANY: 0.0, SINGLE: 0.0}
    while (turn := conn.recv()) != REST:  # the driver alternates the two owners' turns
        start = time.perf_counter()
        seq = put_turn(q, plan, turn, seq, scheduled)
        spent[turn[0]] += time.perf_counter() - start
        conn.send(None)
    n_many = sum(g[2] for g in plan.groups)
    out.update({
        "put_many_calls": len(plan.groups),
        "put_many_s": spent[PUT_MANY],
        "put_many_msgs_per_s": n_many / spent[PUT_MANY] if n_many else None,
        "single_put_s": spent[SINGLE],
        "single_put_msgs_per_s": len(plan.singles) / spent[SINGLE] if plan.singles else None,
    })
    out["owner_rss_filled_mb"] = _rss()
    out["owner_rss_growth_mb"] = out["owner_rss_filled_mb"] - out["owner_rss_before_mb"]
    out["stats_filled"] = _counts(q.stats())
    with Children() as kids:
        taker = kids.start(_first_taker, q)
        if taker.recv() != READY:
            raise ChildFailed("first taker did not report ready")
        if scheduled:
            out["settle"] = _cpu_window(taker.pid, SETTLE_S)  # its first, empty, lease
            out["idle_scheduled"] = _cpu_window(taker.pid, idle_s)
            if taker.conn.poll():
                raise ChildFailed("a message was delivered before anything was due")
            woke = time.perf_counter_ns()
            clock.advance(LEAD + HOUR + 1)
        got, body = taker.recv()
        taker.join()
    if scheduled:
        out["wake_ms"] = (got - woke) / 1e6
    out["first_body"] = body
    out["stats_after_first"] = _counts(_settled(q))
    conn.send(out)
    time.sleep(WAIT_S)  # SIGKILLed here, with the backlog in the store


# -- the reopened owner: first get, drain in order, idle on the empty queue --------------------


class OrderCheck:
    """Checks a stream of ``(band, due, seq)`` bodies: each above the one before, each seq
    once; ``prev`` is the body delivered just before the stream starts."""

    def __init__(self, total: int, prev: tuple[Any, ...]) -> None:
        self.prev = prev
        self.seen = bytearray(total)
        self.seen[prev[2]] = 1
        self.received = self.out_of_order = self.duplicates = 0
        self.examples: list[tuple[Any, Any]] = []

    def see(self, body: Any) -> None:
        key = tuple(body)
        self.received += 1
        if key < self.prev:
            self.out_of_order += 1
            if len(self.examples) < 5:
                self.examples.append((self.prev, key))
        self.duplicates += self.seen[key[2]]
        self.seen[key[2]] = 1
        self.prev = key

    def report(self) -> dict[str, Any]:
        return {"drain_received": self.received, "out_of_order": self.out_of_order,
                "out_of_order_examples": self.examples, "duplicates": self.duplicates,
                "missing": self.seen.count(0)}


def _drainer(
    conn: Connection, q: durableq.Queue, total: int, prev: tuple[Any, ...], idle_wait: float
) -> None:
    first = q.get(timeout=WAIT_S)
    conn.send(time.perf_counter_ns())
    check = OrderCheck(total, prev)
    check.see(first)
    spent = 0
    while (count := conn.recv()) != REST:  # a drain turn: get ``count`` messages
        start = time.perf_counter_ns()
        try:
            for _ in range(count):
                check.see(q.get(timeout=STALL_S))
        except queue.Empty:
            pass  # reported as missing
        spent += time.perf_counter_ns() - start
        conn.send(None)
    report = check.report()
    report["drain_s"] = spent / 1e9
    report["drain_msgs_per_s"] = (check.received - 1) / (spent / 1e9) if spent else None
    conn.send(report)
    extra = 0
    try:  # acks the last message, then waits on the empty queue while the owner is measured
        q.get(timeout=idle_wait)
        extra = 1
    except queue.Empty:
        pass
    q.close()
    conn.send(extra)


def _second_owner(
    conn: Connection, path: str, total: int, prev: tuple[Any, ...], idle_s: float
) -> None:
    out: dict[str, Any] = {"reopen_rss_before_mb": _rss()}
    start = time.perf_counter_ns()
    q = durableq.Queue(path=path, ctx=CTX, clock=durableq.ManualClock(REOPEN_AT))
    out["reopen_open_s"] = (time.perf_counter_ns() - start) / 1e9
    with Children() as kids:
        drainer = kids.start(_drainer, q, total, prev, SETTLE_S + idle_s + 5.0)
        out["reopen_first_get_s"] = (drainer.recv() - start) / 1e9
        out["reopen_rss_served_mb"] = _rss()
        out["reopen_rss_growth_mb"] = out["reopen_rss_served_mb"] - out["reopen_rss_before_mb"]
        conn.send(out)
        while (turn := conn.recv()) != REST:  # the driver's drain turns, passed on
            drainer.send(turn)
            conn.send(drainer.recv(WAIT_S + turn / 1000))
        drainer.send(REST)
        out = drainer.recv()
        out["owner_rss_drained_mb"] = _rss()
        time.sleep(SETTLE_S)
        out["idle_empty"] = _cpu_window(drainer.pid, idle_s)
        out["delivered_after_drain"] = drainer.recv()
        drainer.join()
    out["stats_drained"] = _counts(q.stats())
    conn.send(out)


def fill_in_turns(owners: list[Child], plan: Plan) -> None:
    """Both owners put the same turns, alternating which goes first."""
    for i, turn in enumerate(turns(plan)):
        for kid in owners if i % 2 == 0 else owners[::-1]:
            kid.send(turn)
            kid.recv()


def drain_in_turns(owners: list[Child], count: int) -> None:
    """Both consumers get the same number of messages a turn, alternating which goes first."""
    for i, lo in enumerate(range(0, count, DRAIN_TURN)):
        turn = min(DRAIN_TURN, count - lo)
        for kid in owners if i % 2 == 0 else owners[::-1]:
            kid.send(turn)
            kid.recv(WAIT_S + turn / 1000)


def run(plan: Plan, sizes: Sizes) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {side: {"side": side} for side in SIDES}
    try:
        with tempfile.TemporaryDirectory(prefix="dq-schedbench-") as tmp, Children() as kids:
            paths = {side: os.path.join(tmp, side) for side in SIDES}
            owners = [kids.start(_first_owner, side == "scheduled", paths[side], plan,
                                 sizes.idle_s) for side in SIDES]
            for kid in owners:
                if kid.recv() != READY:
                    raise ChildFailed(f"{kid.proc.name} did not report ready")
            print("  filling both queues in turns ...", flush=True)
            fill_in_turns(owners, plan)
            for side, owner in zip(SIDES, owners, strict=True):
                print(f"  {side}: first get{', idle timer' * (side == 'scheduled')} ...",
                      flush=True)
                owner.send(REST)
                rows[side].update(owner.recv())
                rows[side]["first_is_expected"] = (
                    tuple(rows[side]["first_body"]) == plan.first_key(side == "scheduled")
                )
                os.kill(owner.pid, signal.SIGKILL)  # with the backlog in its store
                owner.proc.join(WAIT_S)
                rows[side]["disk_mb"] = _disk_mb(paths[side])
            reopened = []
            for side in SIDES:
                print(f"  {side}: reopen -> first get ...", flush=True)
                rows[side]["loadavg_at_reopen"] = os.getloadavg()
                kid = kids.start(_second_owner, paths[side], plan.total,
                                 plan.first_key(side == "scheduled"), sizes.idle_s)
                rows[side].update(kid.recv())
                reopened.append(kid)
            print("  draining both queues in turns ...", flush=True)
            drain_in_turns(reopened, plan.total - 2)  # the first taker and drainer got one
            for side, kid in zip(SIDES, reopened, strict=True):
                print(f"  {side}: idle on the empty queue ...", flush=True)
                kid.send(REST)
                rows[side].update(kid.recv())
                kid.join()
    except Exception as exc:
        for row in rows.values():
            row.setdefault("error", f"{type(exc).__name__}: {exc}")
    return rows


# -- report ---------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _target(name: str, value: float | None, op: str, bound: float) -> dict[str, Any]:
    if value is None:
        status = "ERROR"
    elif op == ">=":
        status = "PASS" if value >= bound else "FAIL"
    elif op == "==":
        status = "PASS" if value == bound else "FAIL"
    else:
        status = "PASS" if value < bound else "FAIL"
    return {"target": name, "value": value, "op": op, "bound": bound, "status": status}


def _order_errors(row: dict[str, Any]) -> int | None:
    """Messages out of order, repeated, missing or wrongly first; None if not measured."""
    if "out_of_order" not in row:
        return None
    wrong_first = 0 if row.get("first_is_expected") else 1
    return int(row["out_of_order"] + row["duplicates"] + row["missing"] + wrong_first)


def evaluate(plain: dict[str, Any], sched: dict[str, Any], sizes: Sizes) -> list[dict[str, Any]]:
    n = _count(sizes.n + sizes.single_n) + (" (--quick)" if sizes.quick else "")
    idle = sched.get("idle_scheduled", {})
    return [
        _target("scheduled put_many >= 0.8x plain", _ratio(
            sched.get("put_many_msgs_per_s"), plain.get("put_many_msgs_per_s")), ">=", 0.8),
        _target("scheduled single put >= 0.8x plain", _ratio(
            sched.get("single_put_msgs_per_s"), plain.get("single_put_msgs_per_s")), ">=", 0.8),
        _target("scheduled delivery order errors == 0", _order_errors(sched), "==", 0),
        _target("plain delivery order errors == 0", _order_errors(plain), "==", 0),
        _target(f"owner RSS growth, {n} scheduled puts < 100 MB",
                sched.get("owner_rss_growth_mb"), "<", 100.0),
        _target(f"owner RSS growth, reopen on {n} < 100 MB",
                sched.get("reopen_rss_growth_mb"), "<", 100.0),
        _target("owner CPU while nothing is due < 0.5% of a core",
                idle.get("owner_cpu_pct"), "<", 0.5),
        _target(f"reopen on {n} scheduled -> first get < 1 s",
                sched.get("reopen_first_get_s"), "<", 1.0),
    ]


def _count(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _line(name: str, plain: Any, sched: Any, spec: str, ratio: bool = False) -> str:
    r = _fmt(_ratio(sched, plain), ".2f") + "x" if ratio and _ratio(sched, plain) else ""
    return f"  {name:<44} {_fmt(plain, spec):>14} {_fmt(sched, spec):>14} {r:>7}"


def print_report(results: dict[str, Any], plan: Plan) -> None:
    p, s = results["plain"], results["scheduled"]
    pi, si = p.get("idle_empty", {}), s.get("idle_empty", {})
    calls = len(plan.groups)
    print(f"\nMethod: {results['environment']['method']}")
    print(f"\n  {'':<44} {'plain':>14} {'scheduled':>14} {'ratio':>7}")
    print(_line(f"put_many msgs/s ({calls:,} calls, ~{plan.total // max(calls, 1)}/call)",
                p.get("put_many_msgs_per_s"), s.get("put_many_msgs_per_s"), ",.0f", True))
    print(_line(f"single put msgs/s ({len(plan.singles):,})", p.get("single_put_msgs_per_s"),
                s.get("single_put_msgs_per_s"), ",.0f", True))
    print(_line("drain get msgs/s (1 consumer process)", p.get("drain_msgs_per_s"),
                s.get("drain_msgs_per_s"), ",.0f", True))
    print(_line("delivered / out of order", f"{p.get('drain_received', 0) + 1:,} / "
                f"{p.get('out_of_order')}", f"{s.get('drain_received', 0) + 1:,} / "
                f"{s.get('out_of_order')}", ""))
    print(_line("duplicates / missing / first as expected",
                f"{p.get('duplicates')}/{p.get('missing')}/{p.get('first_is_expected')}",
                f"{s.get('duplicates')}/{s.get('missing')}/{s.get('first_is_expected')}", ""))
    print(_line("owner RSS growth after fill, MB", p.get("owner_rss_growth_mb"),
                s.get("owner_rss_growth_mb"), ".1f"))
    print(_line("reopened owner RSS growth (open+serve), MB", p.get("reopen_rss_growth_mb"),
                s.get("reopen_rss_growth_mb"), ".1f"))
    print(_line("reopen: Queue(path) returns, s", p.get("reopen_open_s"),
                s.get("reopen_open_s"), ".3f"))
    print(_line("reopen -> first get, s (no rebuild pass)", p.get("reopen_first_get_s"),
                s.get("reopen_first_get_s"), ".3f"))
    print(_line("disk after fill, MB", p.get("disk_mb"), s.get("disk_mb"), ".0f"))
    print(_line("owner CPU %, nothing due, consumer waiting", None,
                s.get("idle_scheduled", {}).get("owner_cpu_pct"), ".3f"))
    print(_line(f"  owner CPU s, first {SETTLE_S:g} s of that wait", None,
                s.get("settle", {}).get("owner_cpu_s"), ".3f"))
    print(_line("owner CPU %, empty queue, consumer waiting", pi.get("owner_cpu_pct"),
                si.get("owner_cpu_pct"), ".3f"))
    print(_line("clock advance -> waiting get() returns, ms", None, s.get("wake_ms"), ".1f"))
    for row in (p, s):
        if "error" in row:
            print(f"  {row['side']}: {row['error']}")
        if row.get("out_of_order_examples"):
            print(f"  {row['side']} first inversions: {row['out_of_order_examples']}")
    print("\nTargets")
    for t in results["targets"]:
        print(f"  {t['status']:<5} {t['target']:<54} {_fmt(t['value'], '.3g'):>8}")


METHOD = (
    "put_many takes one (priority, delay) per call, so the scheduled messages are put grouped "
    "by a random (band, whole-second delay 60..3659 s) drawn per message, groups in random "
    "order; the plain side puts the same batch sizes in the same order without options. "
    "Single puts: each scheduled one has its own band and float delay, against plain puts. "
    f"The two owners fill in alternating turns ({TURN_GROUPS} put_many calls or "
    f"{TURN_SINGLES} single puts), and drain in alternating turns of {DRAIN_TURN:,} gets. "
    "Both queues are owned by a child process and drained by a grandchild calling get() "
    "(ack='auto'). Reopen has no rebuild pass to measure: the order index is SQLite's "
    "dq_message_order (state, priority, due, id), read in place; the figure is Queue(path) "
    "-> a consumer process's first get() returning, after the owner was SIGKILLed."
)


def parse_args(argv: list[str]) -> tuple[Sizes, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 50k messages a side")
    p.add_argument("--n", type=int, help="messages put with put_many, per side")
    p.add_argument("--single-n", type=int, help="single put calls on top, per side")
    p.add_argument("--idle-s", type=float, help="seconds of each idle CPU window")
    p.add_argument("--seed", type=int, help="seed of the random bands and delays")
    p.add_argument("--json", type=Path, help=f"where to write the JSON (default {DEFAULT_OUT}; "
                   f"with --quick {QUICK_OUT})")
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    sizes = Sizes(
        n=a.n or base.n,
        single_n=base.single_n if a.single_n is None else a.single_n,
        idle_s=a.idle_s or base.idle_s,
        seed=base.seed if a.seed is None else a.seed,
        quick=a.quick,
    )
    return sizes, a.json or (QUICK_OUT if a.quick else DEFAULT_OUT)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sizes, out = parse_args(argv)
    print(f"sizes: {vars(sizes)}; {CPUS} CPUs")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    started = time.perf_counter()
    env = {**machine(), "sizes": vars(sizes), "method": METHOD,
           "command": reproduce_command(__file__, argv)}
    plan = make_plan(sizes)
    results: dict[str, Any] = {"environment": env}
    results.update(run(plan, sizes))
    results["targets"] = evaluate(results["plain"], results["scheduled"], sizes)
    env["loadavg_at_end"] = os.getloadavg()
    env["wall_s"] = time.perf_counter() - started
    print_report(results, plan)
    print(f"\nload average at start: {' '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}; "
          f"after: {' '.join(f'{x:.2f}' for x in env['loadavg_at_end'])}; "
          f"wall {env['wall_s']:.0f} s")
    print(f"reproduce: {env['command']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    # Speed targets are reported; a wrong delivery order is a bug, so it fails the run.
    order = [t for t in results["targets"] if "order" in t["target"]]
    return 0 if all(t["status"] == "PASS" for t in order) else 1


if __name__ == "__main__":
    sys.exit(main())
