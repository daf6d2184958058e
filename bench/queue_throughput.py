"""Throughput, latency, backlog and recovery of ``durableq.Queue`` beside its peers.

Reproduce (from the repository root; the full run takes about 2 minutes on 2 CPUs)::

    .venv/bin/python bench/queue_throughput.py            # full run, writes the JSON below
    .venv/bin/python bench/queue_throughput.py --quick    # smoke run, < 60 s, 200k backlog

Counts can be overridden: ``--n`` (mp.Queue and durableq), ``--peer-n`` (persistqueue and
diskcache, which are far slower), ``--backlog`` (the large backlog), ``--latency-n``,
``--procs`` (producers = consumers in the many-to-many case), ``--repeat`` (runs of each
throughput and latency case, default 5: all cases run in turn, round after round, and each
reports its median run, with every run's figure beside it; ratios are of medians). Results go to
``bench/results/queue_throughput.json`` (``--out`` to change).

What is measured, all with the "fork" start method, every queue used from child processes.
Every child is forked before the clock starts, and all start together on an Event, so
process start-up is not part of any rate.

1. put -> get -> ack throughput, 1 producer process -> 1 consumer process, messages
   ``{"id": i, "payload": "x" * 32}``: from the producers' first put to the consumers having
   received the last message. Consumers stop at a sentinel that the parent puts after every
   producer has exited; each reports its count and the sum of ids it got, so loss and
   duplicates are caught; a consumer that waits STALL_S for its next message stops and
   reports what it got (the row is then marked INCOMPLETE). durableq acks in ``ack="auto"``
   mode (on the next get, and on close); persistqueue's consumer calls ``get()`` then
   ``ack()``. Beside it, each row gives the producers' own rate (``puts/s``): from the
   first put until every producer returned from closing its handle (durableq: all
   committed; mp.Queue: its feeder thread wrote everything to the pipe), while the
   consumers run.
   persistqueue's blocking ``get()`` waits on a per-process ``threading.Event`` (10 s tick)
   that another process's put never sets, so its consumer polls ``get(block=False)``, like the
   diskcache.Deque consumer polls ``popleft()``: retry at once, sleeping POLL_S (< 1 ms)
   between empty polls.
2. The same with ``--procs`` producers -> ``--procs`` consumers (default 4 -> 4).
3. Latency: one producer puts ``perf_counter_ns()`` stamps every 200 us, the consumer
   subtracts them from its receive time (CLOCK_MONOTONIC, shared across processes). The
   producer busy-waits calling ``os.sched_yield()``, which releases the GIL: a bare spin
   starves mp.Queue's feeder thread and measures the 5 ms GIL switch interval instead.
4. Consumer rate with a 20k backlog and with a large one (1M; 200k with ``--quick``), both
   filled by the owner with ``put_many`` in batches of 10k: one consumer process drains
   20k messages, ``--repeat`` times in turn, the owner topping the backlog up between them;
   the median drain is reported.
5. The owner's RSS growth (psutil) from before creating the queue to after filling it.
6. Reopen: once the backlog's owner has exited, a fresh process times
   ``durableq.Queue(path=same)`` plus its first ``get()``.
"""

from __future__ import annotations

import argparse
import array
import faulthandler
import gc
import json
import multiprocessing as mp
import multiprocessing.queues
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import diskcache
import persistqueue
import psutil
from _env import machine, median_run

import durableq

CTX = mp.get_context("fork")
CPUS = os.cpu_count() or 1
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "queue_throughput.json"

PAYLOAD = "x" * 32
STOP = "__stop__"  # end-of-stream sentinel, one per consumer
READY = "ready"
WAIT_S = 120.0  # bound on any cross-process wait; only a hang reaches it
STALL_S = 30.0  # a consumer that waits this long for its next message reports what it got
POLL_S = 0.0002  # sleep between empty polls of the peers that cannot block across processes
PUT_MANY_BATCH = 100
FILL_BATCH = 10_000
DRAIN_N = 20_000
SMALL_BACKLOG = 20_000
LATENCY_INTERVAL_NS = 200_000
MB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    n: int
    peer_n: int
    backlog: int
    latency_n: int
    procs: int
    quick: bool
    repeat: int = 1


#: Throughput and latency runs are repeated, interleaved, and the median run reported: one
#: run of 20k messages lasts 0.2-1 s, and on a shared 2-core machine its rate moved by
#: up to 40% between runs (mp.Queue 95k-119k, diskcache.Deque 5k-9k msgs/s).
FULL = Sizes(n=20_000, peer_n=3_000, backlog=1_000_000, latency_n=10_000, procs=4, quick=False,
             repeat=5)
QUICK = Sizes(n=3_000, peer_n=500, backlog=200_000, latency_n=2_000, procs=4, quick=True)


def _message(i: int) -> dict[str, Any]:
    return {"id": i, "payload": PAYLOAD}


# -- the implementations, as their producers and consumers use them --------------------------


class Channel:
    """One queue implementation; children call ``attach()`` first and ``detach()`` last."""

    def attach(self) -> None:
        """Open this process's handle, if the implementation needs one per process."""

    def put(self, obj: Any) -> None:
        raise NotImplementedError

    def put_batch(self, objs: list[Any]) -> None:
        for obj in objs:
            self.put(obj)

    def get(self) -> Any:
        raise NotImplementedError

    def detach(self) -> None:
        """Flush and close this process's handle."""


class MpChannel(Channel):
    def __init__(self, q: multiprocessing.queues.Queue[Any]) -> None:
        self.q = q

    def put(self, obj: Any) -> None:
        self.q.put(obj)

    def get(self) -> Any:
        return self.q.get(timeout=STALL_S)

    def detach(self) -> None:
        self.q.close()
        self.q.join_thread()  # the feeder thread has written everything


class DurableChannel(Channel):
    def __init__(self, q: durableq.Queue) -> None:
        self.q: durableq.Queue | None = q

    def _q(self) -> durableq.Queue:
        assert self.q is not None, "queue already released"
        return self.q

    def put(self, obj: Any) -> None:
        self._q().put(obj)

    def put_batch(self, objs: list[Any]) -> None:
        self._q().put_many(objs)

    def get(self) -> Any:
        return self._q().get(timeout=STALL_S)

    def detach(self) -> None:
        self._q().close()  # acks what this process got last (ack="auto")


class PollChannel(Channel):
    """A peer whose consumer cannot block on another process's put: it polls."""

    empty: type[Exception] = Exception

    def take(self) -> Any:
        raise NotImplementedError

    def get(self) -> Any:
        deadline = time.monotonic() + STALL_S
        while True:
            try:
                return self.take()
            except self.empty:
                if time.monotonic() > deadline:
                    raise queue.Empty from None
                time.sleep(POLL_S)


class PersistQueueChannel(PollChannel):
    empty = persistqueue.Empty

    def __init__(self, path: str) -> None:
        self.path = path
        self.q: persistqueue.SQLiteAckQueue | None = None

    def attach(self) -> None:
        self.q = persistqueue.SQLiteAckQueue(self.path, multithreading=True, auto_commit=True)

    def put(self, obj: Any) -> None:
        assert self.q is not None
        self.q.put(obj)

    def take(self) -> Any:
        assert self.q is not None
        item = self.q.get(block=False)
        self.q.ack(item)
        return item

    def detach(self) -> None:
        if self.q is not None:
            self.q.close()
            self.q = None


class DequeChannel(PollChannel):
    empty = IndexError

    def __init__(self, path: str) -> None:
        self.path = path
        self.deque: diskcache.Deque | None = None

    def attach(self) -> None:
        self.deque = diskcache.Deque(directory=self.path)

    def put(self, obj: Any) -> None:
        assert self.deque is not None
        self.deque.append(obj)

    def take(self) -> Any:
        assert self.deque is not None
        return self.deque.popleft()

    def detach(self) -> None:
        if self.deque is not None:
            self.deque.cache.close()
            self.deque = None


def _release_durable(chan: DurableChannel) -> None:
    """Drop the owner's queue and wait for its dispatcher thread to stop."""
    q = chan._q()
    q.close()
    chan.q = None
    del q
    gc.collect()
    for t in threading.enumerate():
        if t.name.startswith("durableq-"):
            t.join(WAIT_S)


@contextmanager
def mp_queue(tmp: str) -> Iterator[Channel]:
    chan = MpChannel(CTX.Queue())
    try:
        yield chan
    finally:
        chan.detach()


@contextmanager
def durable_queue(tmp: str) -> Iterator[Channel]:
    chan = DurableChannel(durableq.Queue(path=os.path.join(tmp, "q"), ctx=CTX))
    try:
        yield chan
    finally:
        _release_durable(chan)


@contextmanager
def memory_queue(tmp: str) -> Iterator[Channel]:
    chan = DurableChannel(durableq.Queue(store=durableq.MemoryStore(), ctx=CTX))
    try:
        yield chan
    finally:
        _release_durable(chan)


def _create(chan: Channel) -> None:
    """Create the peer's files up front, so its children never race to create them."""
    chan.attach()
    chan.detach()


@contextmanager
def _peer(chan: Channel) -> Iterator[Channel]:
    _create(chan)
    try:
        yield chan
    finally:
        chan.detach()


def persist_queue(tmp: str) -> AbstractContextManager[Channel]:
    return _peer(PersistQueueChannel(os.path.join(tmp, "pq")))


def diskcache_deque(tmp: str) -> AbstractContextManager[Channel]:
    return _peer(DequeChannel(os.path.join(tmp, "deque")))


Factory = Callable[[str], AbstractContextManager[Channel]]  # tmpdir -> open channel


@dataclass(frozen=True)
class Case:
    impl: str
    factory: Factory
    producers: int
    consumers: int
    n: int
    batch: int = 1


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

    def join(self, timeout: float = WAIT_S) -> None:
        self.proc.join(timeout)
        if self.proc.is_alive():
            raise TimeoutError(f"{self.proc.name} still running after {timeout:g} s")
        if self.proc.exitcode != 0:
            raise ChildFailed(f"{self.proc.name} exited with code {self.proc.exitcode}")


def _child_main(conn: Connection, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    # A child ended by Children.__exit__ (it hung) first prints where its threads were.
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
    try:
        target(conn, *args)
    finally:
        conn.close()


@dataclass
class Children:
    """Starts children; on exit terminates any still running and joins them all."""

    kids: list[Child] = field(default_factory=list)

    def start(self, target: Callable[..., None], *args: Any) -> Child:
        parent_end, child_end = CTX.Pipe(duplex=False)
        name = f"bench-{target.__name__.strip('_')}-{len(self.kids)}"
        proc = CTX.Process(target=_child_main, args=(child_end, target, args), name=name)
        proc.start()
        child_end.close()
        kid = Child(proc, parent_end)
        self.kids.append(kid)
        return kid

    def __enter__(self) -> Children:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is TimeoutError:  # where this process was; children print theirs
            faulthandler.dump_traceback(all_threads=True)
        for kid in self.kids:
            if kid.proc.is_alive():
                kid.proc.terminate()
            kid.proc.join(WAIT_S)
            if kid.proc.is_alive():
                kid.proc.kill()
                kid.proc.join(WAIT_S)
            kid.conn.close()


def _await_go(conn: Connection, go: Any) -> None:
    conn.send(READY)
    if not go.wait(WAIT_S):
        raise TimeoutError("never told to start")


def _expect_ready(kids: list[Child]) -> None:
    for kid in kids:
        if kid.recv() != READY:
            raise ChildFailed(f"{kid.proc.name} did not report ready")


# -- 1 and 2: throughput ------------------------------------------------------------------------


def _producer(conn: Connection, chan: Channel, ids: range, batch: int, go: Any) -> None:
    chan.attach()
    _await_go(conn, go)
    start = time.perf_counter_ns()
    if batch > 1:
        for lo in range(0, len(ids), batch):
            chan.put_batch([_message(i) for i in ids[lo : lo + batch]])
    else:
        for i in ids:
            chan.put(_message(i))
    chan.detach()
    conn.send((start, time.perf_counter_ns()))


def _consumer(conn: Connection, chan: Channel, go: Any) -> None:
    chan.attach()
    _await_go(conn, go)
    count = id_sum = last = 0
    stalled = False
    try:
        while (obj := chan.get()) != STOP:
            last = time.perf_counter_ns()
            count += 1
            id_sum += obj["id"]
    except queue.Empty:
        stalled = True  # neither a message nor the sentinel came for STALL_S
    chan.detach()
    conn.send((count, id_sum, last, stalled))


def _owner_stats(chan: Channel) -> dict[str, Any] | None:
    if isinstance(chan, DurableChannel):
        return {k: v for k, v in chan._q().stats().items() if isinstance(v, int)}
    return None


def measure_throughput(chan: Channel, case: Case) -> dict[str, Any]:
    go = CTX.Event()
    with Children() as kids:
        consumers = [kids.start(_consumer, chan, go) for _ in range(case.consumers)]
        producers = [
            kids.start(_producer, chan, range(k, case.n, case.producers), case.batch, go)
            for k in range(case.producers)
        ]
        _expect_ready(consumers + producers)
        go.set()
        spans = [p.recv() for p in producers]
        starts = [start for start, _ in spans]
        for p in producers:
            p.join()
        chan.attach()  # only now: no child inherits the parent's handle
        for _ in consumers:
            chan.put(STOP)
        reports = [c.recv() for c in consumers]
        for c in consumers:
            c.join()
    count = sum(r[0] for r in reports)
    id_sum = sum(r[1] for r in reports)
    if not count:
        raise RuntimeError("no consumer received any message")
    seconds = (max(r[2] for r in reports) - min(starts)) / 1e9
    return {
        "msgs_per_s": count / seconds,
        "seconds": seconds,
        # The producers' side alone: committed (durableq), handed to the pipe (mp.Queue's
        # feeder flushed), from the first put to the last producer done.
        "put_msgs_per_s": case.n / ((max(end for _, end in spans) - min(starts)) / 1e9),
        "received": count,
        "complete": count == case.n and id_sum == case.n * (case.n - 1) // 2,
        "stalled_consumers": sum(r[3] for r in reports),
        "per_consumer": [r[0] for r in reports],
        "owner_stats": _owner_stats(chan),
    }


def run_case(case: Case) -> dict[str, Any]:
    row: dict[str, Any] = {
        "impl": case.impl,
        "procs": f"{case.producers}->{case.consumers}",
        "n": case.n,
        "batch": case.batch,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="dq-bench-") as tmp, case.factory(tmp) as chan:
            row.update(measure_throughput(chan, case))
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


# -- 3: latency ---------------------------------------------------------------------------------


def _latency_producer(conn: Connection, chan: Channel, n: int, go: Any) -> None:
    chan.attach()
    _await_go(conn, go)
    start = due = time.perf_counter_ns()
    for i in range(n):
        while time.perf_counter_ns() < due:
            os.sched_yield()  # busy-wait that lets mp.Queue's feeder thread have the GIL
        chan.put({"id": i, "t": time.perf_counter_ns(), "payload": PAYLOAD})
        due += LATENCY_INTERVAL_NS
    elapsed = time.perf_counter_ns() - start
    chan.put(STOP)
    chan.detach()
    conn.send(elapsed)


def _latency_consumer(conn: Connection, chan: Channel, go: Any) -> None:
    chan.attach()
    _await_go(conn, go)
    samples = array.array("q")
    while (obj := chan.get()) != STOP:
        samples.append(time.perf_counter_ns() - obj["t"])
    chan.detach()
    conn.send(samples.tobytes())


def _percentile(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def measure_latency(chan: Channel, n: int) -> dict[str, Any]:
    go = CTX.Event()
    with Children() as kids:
        consumer = kids.start(_latency_consumer, chan, go)
        producer = kids.start(_latency_producer, chan, n, go)
        _expect_ready([consumer, producer])
        go.set()
        elapsed = producer.recv()
        samples = array.array("q", consumer.recv())
        producer.join()
        consumer.join()
    ordered = sorted(samples)
    return {
        "n": n,
        "received": len(ordered),
        "send_rate_per_s": n / (elapsed / 1e9),
        "p50_us": _percentile(ordered, 0.50),
        "p99_us": _percentile(ordered, 0.99),
        "max_us": ordered[-1] / 1000.0,
    }


def run_latency(impl: str, factory: Factory, n: int) -> dict[str, Any]:
    row: dict[str, Any] = {"impl": impl}
    try:
        with tempfile.TemporaryDirectory(prefix="dq-bench-") as tmp, factory(tmp) as chan:
            row.update(measure_latency(chan, n))
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


# -- 4, 5 and 6: backlog, owner memory, reopen ------------------------------------------------


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _drainer(conn: Connection, q: durableq.Queue, n: int) -> None:
    start = time.perf_counter_ns()
    first = q.get(timeout=WAIT_S)
    for _ in range(n - 1):
        q.get(timeout=WAIT_S)
    elapsed = time.perf_counter_ns() - start
    q.close()
    conn.send((elapsed, first["id"]))


def _backlog_owner(conn: Connection, path: str, size: int, drain: int, rounds: int) -> None:
    rss_before = _rss()
    q = durableq.Queue(path=path, ctx=CTX)
    start = time.perf_counter_ns()
    for lo in range(0, size, FILL_BATCH):
        q.put_many([_message(i) for i in range(lo, min(lo + FILL_BATCH, size))])
    fill_s = (time.perf_counter_ns() - start) / 1e9
    rss_filled = _rss()
    rates, first_id, top = [], None, size
    for r in range(rounds):
        if r:  # back to `size` waiting before each drain: the backlog is what is measured
            for lo in range(top, top + drain, FILL_BATCH):
                q.put_many([_message(i) for i in range(lo, min(lo + FILL_BATCH, top + drain))])
            top += drain
        with Children() as kids:
            drainer = kids.start(_drainer, q, drain)
            elapsed, first = drainer.recv()
            drainer.join()
        rates.append(drain / (elapsed / 1e9))
        first_id = first if first_id is None else first_id
    q.close()
    rates.sort()
    conn.send(
        {
            "fill_s": fill_s,
            "fill_msgs_per_s": size / fill_s,
            "drain_n": drain,
            "drain_msgs_per_s": rates[(len(rates) - 1) // 2],
            "runs_drain_msgs_per_s": rates,
            "drain_first_id": first_id,
            "owner_rss_before_mb": rss_before / MB,
            "owner_rss_filled_mb": rss_filled / MB,
            "owner_rss_growth_mb": (rss_filled - rss_before) / MB,
            "owner_rss_after_drain_mb": _rss() / MB,
        }
    )


def _reopener(conn: Connection, path: str) -> None:
    start = time.perf_counter_ns()
    q = durableq.Queue(path=path, ctx=CTX)
    first = q.get(timeout=WAIT_S)
    seconds = (time.perf_counter_ns() - start) / 1e9
    q.close()
    conn.send((seconds, first["id"]))


def _disk_mb(path: str) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / MB


def run_backlog(size: int, drain: int, rounds: int) -> dict[str, Any]:
    row: dict[str, Any] = {"backlog": size}
    fill_timeout = WAIT_S + size / 1000  # allows for a fill as slow as 1k msgs/s
    try:
        with tempfile.TemporaryDirectory(prefix="dq-bench-") as tmp, Children() as kids:
            path = os.path.join(tmp, "backlog.q")
            owner = kids.start(_backlog_owner, path, size, drain, rounds)
            row.update(owner.recv(fill_timeout))
            owner.join()  # the owner is gone: the queue must be reopened from disk
            row["disk_mb"] = _disk_mb(path)
            if size > drain:  # else nothing is left to get
                reopener = kids.start(_reopener, path)
                row["reopen_first_get_s"], row["reopen_first_id"] = reopener.recv(fill_timeout)
                reopener.join()
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


# -- report ---------------------------------------------------------------------------------------


def throughput_cases(sizes: Sizes) -> list[Case]:
    n, peer, k = sizes.n, sizes.peer_n, sizes.procs
    return [
        Case("multiprocessing.Queue", mp_queue, 1, 1, n),
        Case("durableq durable", durable_queue, 1, 1, n),
        Case("durableq MemoryStore", memory_queue, 1, 1, n),
        Case(f"durableq put_many({PUT_MANY_BATCH})", durable_queue, 1, 1, n, PUT_MANY_BATCH),
        Case("persistqueue.SQLiteAckQueue", persist_queue, 1, 1, peer),
        Case("diskcache.Deque", diskcache_deque, 1, 1, peer),
        Case("multiprocessing.Queue", mp_queue, k, k, n),
        Case("durableq durable", durable_queue, k, k, n),
        Case("diskcache.Deque", diskcache_deque, k, k, peer),
    ]


def _row(rows: list[dict[str, Any]], impl: str, procs: str) -> dict[str, Any]:
    for row in rows:
        if row["impl"] == impl and row["procs"] == procs:
            return row
    return {}


def _rate(rows: list[dict[str, Any]], impl: str, procs: str) -> float | None:
    rate = _row(rows, impl, procs).get("msgs_per_s")
    return None if rate is None else float(rate)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        base = _rate(rows, "multiprocessing.Queue", row["procs"])
        rate = row.get("msgs_per_s")
        row["x_mp_queue"] = rate / base if rate is not None and base else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _incomplete(rows: list[dict[str, Any]], *keys: tuple[str, str]) -> str:
    """Why a throughput comparison cannot pass: a run that lost or repeated messages."""
    bad = [f"{impl} {procs}" for impl, procs in keys if not _row(rows, impl, procs).get("complete")]
    return "incomplete delivery: " + ", ".join(bad) if bad else ""


def _target(
    name: str, value: float | None, op: str, bound: float, problem: str = ""
) -> dict[str, Any]:
    if value is None:
        status = "ERROR"
    elif problem:
        status = "FAIL"
    elif op == ">=":
        status = "PASS" if value >= bound else "FAIL"
    else:
        status = "PASS" if value < bound else "FAIL"
    return {"target": name, "value": value, "op": op, "bound": bound, "status": status,
            "problem": problem}


def _throughput_targets(rows: list[dict[str, Any]], procs: str) -> list[dict[str, Any]]:
    mpq, dq, dc = "multiprocessing.Queue", "durableq durable", "diskcache.Deque"
    dq_rate = _rate(rows, dq, procs)
    return [
        _target(f"durable {procs} >= 0.25x mp.Queue", _ratio(dq_rate, _rate(rows, mpq, procs)),
                ">=", 0.25, _incomplete(rows, (dq, procs), (mpq, procs))),
        _target(f"durable {procs} >= 4x diskcache.Deque", _ratio(dq_rate, _rate(rows, dc, procs)),
                ">=", 4.0, _incomplete(rows, (dq, procs), (dc, procs))),
    ]


def _count_label(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def evaluate(results: dict[str, Any], sizes: Sizes) -> list[dict[str, Any]]:
    rows = results["throughput"]
    batched = f"durableq put_many({PUT_MANY_BATCH})"
    small, large = results["backlog"]
    lat = results["latency"].get("durableq durable", {})
    big = _count_label(sizes.backlog) + (" (--quick)" if sizes.quick else "")
    return [
        *_throughput_targets(rows, "1->1"),
        *_throughput_targets(rows, f"{sizes.procs}->{sizes.procs}"),
        _target(f"put_many({PUT_MANY_BATCH}) 1->1 >= 0.8x mp.Queue",
                _ratio(_rate(rows, batched, "1->1"), _rate(rows, "multiprocessing.Queue", "1->1")),
                ">=", 0.8, _incomplete(rows, (batched, "1->1"))),
        _target("durable latency p50 < 1000 us", lat.get("p50_us"), "<", 1000.0),
        _target(f"consumer rate at {big} backlog >= 0.8x rate at 20k",
                _ratio(large.get("drain_msgs_per_s"), small.get("drain_msgs_per_s")), ">=", 0.8),
        _target(f"owner RSS growth at {big} backlog < 64 MB",
                large.get("owner_rss_growth_mb"), "<", 64.0),
        _target(f"reopen {big} -> first message < 1 s",
                large.get("reopen_first_get_s"), "<", 1.0),
    ]


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _note(row: dict[str, Any]) -> str:
    if "error" in row:
        return str(row["error"])
    if row.get("complete"):
        return ""
    note = f"INCOMPLETE: received {row['received']} of {row['n']}"
    if row.get("stalled_consumers"):
        note += f"; {row['stalled_consumers']} consumer(s) got nothing for {STALL_S:g} s"
    stats = row.get("owner_stats") or {}
    if stats.get("in_flight"):
        note += f"; owner: {stats['in_flight']} in flight, {stats['ready']} ready"
    return note


def print_throughput(rows: list[dict[str, Any]]) -> None:
    print(f"\nThroughput, put -> get -> ack (fork, {CPUS} CPUs)")
    print(f"{'impl':<30} {'procs':>6} {'N':>8} {'msgs/s':>10} {'x mp.Queue':>11}"
          f" {'runs (min-max)':>17} {'puts/s':>10} {'x mp.Queue':>11}  note")
    mp_puts = {r["procs"]: r.get("put_msgs_per_s") for r in rows
               if r["impl"] == "multiprocessing.Queue"}
    for r in rows:
        spread = r.get("runs_msgs_per_s") or []
        span = f"{len(spread)} ({spread[0] / 1e3:,.1f}-{spread[-1] / 1e3:,.1f}k)" if spread else ""
        puts = r.get("put_msgs_per_s")
        print(
            f"{r['impl']:<30} {r['procs']:>6} {r['n']:>8} {_fmt(r.get('msgs_per_s'), ',.0f'):>10}"
            f" {_fmt(r.get('x_mp_queue'), '.2f'):>11} {span:>17} {_fmt(puts, ',.0f'):>10}"
            f" {_fmt(_ratio(puts, mp_puts.get(r['procs'])), '.2f'):>11}  {_note(r)}"
        )
    print("puts/s: the producers' side alone, from their first put until each had returned "
          "from close()\n(durableq: committed; mp.Queue: its feeder thread has written "
          "everything to the pipe)")


def print_latency(latency: dict[str, dict[str, Any]]) -> None:
    print(f"\nLatency, one message every {LATENCY_INTERVAL_NS // 1000} us (busy-wait), 1 -> 1")
    for impl, r in latency.items():
        if "error" in r:
            print(f"  {impl:<28} {r['error']}")
            continue
        print(
            f"  {impl:<28} p50 {r['p50_us']:9.1f} us  p99 {r['p99_us']:9.1f} us  "
            f"max {r['max_us']:9.1f} us  (N={r['n']}, sent {r['send_rate_per_s']:,.0f}/s)"
            + _spread(r.get("runs_p50_us"), "p50 of each run", ".0f")
        )


def _spread(values: list[float] | None, what: str, spec: str) -> str:
    if not values or len(values) < 2:
        return ""
    return f"; {what}: " + " ".join(format(v, spec) for v in values)


def _backlog_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"  {r['backlog']:>9,}: {r['error']}"
    reopen = r.get("reopen_first_get_s")
    return (
        f"  {r['backlog']:>9,}: fill {r['fill_s']:6.1f} s ({r['fill_msgs_per_s']:,.0f}/s); "
        f"drain {r['drain_n']:,}: {r['drain_msgs_per_s']:,.0f} msgs/s; "
        f"owner RSS +{r['owner_rss_growth_mb']:.1f} MB; disk {r['disk_mb']:.0f} MB; "
        f"reopen -> first get: {'-' if reopen is None else f'{reopen:.3f} s'}"
        + _spread([x / 1e3 for x in r.get("runs_drain_msgs_per_s", [])], "drains, k msgs/s", ".1f")
    )


def print_backlog(backlog: list[dict[str, Any]]) -> None:
    print(f"\nBacklog (durable; owner fills with put_many({FILL_BATCH:,}), one consumer drains)")
    for r in backlog:
        print(_backlog_line(r))
    small, large = backlog
    ratio = _ratio(large.get("drain_msgs_per_s"), small.get("drain_msgs_per_s"))
    sizes = f"{large['backlog']:,} / {small['backlog']:,}"
    print(f"  consumer rate ratio {sizes}: {_fmt(ratio, '.2f')}")


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\nTargets")
    for t in targets:
        problem = f"  ({t['problem']})" if t["problem"] else ""
        print(f"  {t['status']:<5} {t['target']:<62} {_fmt(t['value'], '.3g'):>8}{problem}")


def print_report(results: dict[str, Any]) -> None:
    print_throughput(results["throughput"])
    print_latency(results["latency"])
    print_backlog(results["backlog"])
    print_targets(results["targets"])
    load = results["environment"]["loadavg_at_end"]
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in load)}")


def environment(sizes: Sizes) -> dict[str, Any]:
    return {
        **machine(),
        "start_method": CTX.get_start_method(),
        "versions": {
            "durableq": durableq.__version__,
            "persist-queue": getattr(persistqueue, "__version__", "unknown"),
            "diskcache": diskcache.__version__,
        },
        "sizes": vars(sizes),
        "poll_sleep_s": POLL_S,
        "note": "large backlog reduced to 200k by --quick" if sizes.quick else "",
    }


def parse_args(argv: list[str] | None = None) -> tuple[Sizes, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke run (< 60 s), 200k backlog")
    p.add_argument("--n", type=int, help="messages for mp.Queue and durableq")
    p.add_argument("--peer-n", type=int, help="messages for persistqueue and diskcache")
    p.add_argument("--backlog", type=int, help="size of the large backlog")
    p.add_argument("--latency-n", type=int, help="messages in the latency run")
    p.add_argument("--procs", type=int, help="producers (= consumers) in the many-to-many case")
    p.add_argument("--repeat", type=int, help="runs of each throughput and latency case (median)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    sizes = Sizes(
        n=a.n or base.n,
        peer_n=a.peer_n or base.peer_n,
        backlog=a.backlog or base.backlog,
        latency_n=a.latency_n or base.latency_n,
        procs=a.procs or base.procs,
        quick=a.quick,
        repeat=a.repeat or base.repeat,
    )
    return sizes, a.out


def main(argv: list[str] | None = None) -> int:
    sizes, out = parse_args(argv)
    print(f"sizes: {vars(sizes)}; {CPUS} CPUs, {2 * sizes.procs} processes in the many case")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, Any] = {"environment": environment(sizes)}
    runs: list[list[dict[str, Any]]] = [[] for _ in throughput_cases(sizes)]
    for rep in range(sizes.repeat):  # interleaved: a slow spell hits every case alike
        for i, case in enumerate(throughput_cases(sizes)):
            print(f"  throughput {case.impl} {case.producers}->{case.consumers} N={case.n}"
                  f" (run {rep + 1}/{sizes.repeat}) ...")
            runs[i].append(run_case(case))
    rows = [median_run(r, "msgs_per_s") for r in runs]
    for row, case_runs in zip(rows, runs, strict=True):  # the put rate's own median
        puts = sorted(float(r["put_msgs_per_s"]) for r in case_runs if "put_msgs_per_s" in r)
        if puts and "error" not in row:
            row["put_msgs_per_s"], row["runs_put_msgs_per_s"] = puts[(len(puts) - 1) // 2], puts
    add_ratios(rows)
    results["throughput"] = rows
    results["latency"] = {}
    lat_runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(sizes.repeat):
        for impl, factory in (("multiprocessing.Queue", mp_queue),
                              ("durableq durable", durable_queue)):
            print(f"  latency {impl} N={sizes.latency_n} (run {rep + 1}/{sizes.repeat}) ...")
            lat_runs.setdefault(impl, []).append(run_latency(impl, factory, sizes.latency_n))
    results["latency"] = {impl: median_run(r, "p50_us") for impl, r in lat_runs.items()}
    results["backlog"] = []
    for size in (SMALL_BACKLOG, sizes.backlog):
        print(f"  backlog {size:,} ...")
        results["backlog"].append(run_backlog(size, min(DRAIN_N, size), sizes.repeat))
    results["targets"] = evaluate(results, sizes)
    results["environment"]["loadavg_at_end"] = os.getloadavg()
    print_report(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
