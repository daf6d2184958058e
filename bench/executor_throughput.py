"""Throughput, latency, idle CPU and restart of ``durableq.Executor`` beside its peers.

Reproduce (from the repository root; the full run takes about 3 minutes on 2 CPUs)::

    .venv/bin/python bench/executor_throughput.py            # full run, writes the JSON below
    .venv/bin/python bench/executor_throughput.py --quick    # smoke run, about 10 s

Counts can be overridden: ``--n`` (tasks per no-op run), ``--n-1ms`` (tasks per 1 ms run),
``--chunksize`` (for every ``map``), ``--latency-n``, ``--idle-s``, ``--restart-n`` (the
unfinished backlog of the restart case), ``--repeat`` (runs of every pool, default 3: the
pools run in turn, round after round, and each figure is its median run's, every run's
no-op rate printed beside it; ratios are of medians). Results go to
``bench/results/executor_throughput.json`` (``--out`` to change).

Every pool has ``os.cpu_count()`` workers and its library's default start method. Each is
started and warmed up (every worker has run a task) before any clock starts; then, in one
process and one run:

1. Idle CPU: the warmed-up pool sits idle for ``--idle-s`` seconds; the CPU time of this
   process (all its threads) plus every child, read from ``/proc/*/task/*/schedstat`` (ns),
   as % of one core.
2. Throughput, tasks/s from the first submit to the last result, each result checked:
   "submit" shape (``submit`` N, then ``result()`` of each in order; ``apply_async`` for
   ``multiprocessing.Pool``, ``schedule`` for pebble), ``imap_unordered(chunksize=1)`` for
   ``multiprocessing.Pool``, and ``map(chunksize=C)`` everywhere. Tasks are a no-op
   (returns its argument) and a 1 ms busy-wait (CPU, not sleep: the pool's own CPU competes
   with the work, as it does for CPU-bound users). Ratios are against
   ``ProcessPoolExecutor`` in the same shape (``imap_unordered(1)`` against its submit).
   The throughput targets use the no-op runs: with 1 ms tasks every pool sits near the
   same ceiling (workers x 1000/s), and their ratios mostly show the run's noise.
3. Latency: ``--latency-n`` no-op tasks submitted one at a time, each waited for: submit ->
   result returned, p50 / p99 / max.
4. Restart (durableq only): a child process submits ``--restart-n`` tasks to
   ``Executor(path=p, max_workers=1)`` whose first task holds its only worker, and is
   SIGKILLed once every submit has returned. A fresh process then times ``Executor(path=p)``
   (which runs the unfinished tasks) to the first re-run task starting: the task appends its
   pid and ``time.monotonic_ns()`` to a marker file, which the process polls every 1 ms.
   Then it times ``recovered()``, which builds a future for each of the tasks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import glob
import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import psutil
from _bench_tasks import hold, noop, spin, wait_dead
from _env import machine, median_run, reproduce_command

import durableq

CTX = mp.get_context("fork")  # for this script's own children (the restart case)
CPUS = os.cpu_count() or 1
WORKERS = CPUS
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "executor_throughput.json"

WAIT_S = 120.0  # bound on any wait for a result; only a hang reaches it
SETTLE_S = 0.1  # after warm-up, before the idle window: lets done-callbacks finish
PPE = "ProcessPoolExecutor"
DQ_DIR = "durableq path=dir"
DQ_NONE = "durableq path=None"
SUBMIT = "submit"
IMAP1 = "imap_unordered(1)"
TASKS: dict[str, Callable[[int], int]] = {"no-op": noop, "1 ms": spin}
#: No-op map runs take this many times --n tasks: chunked, a task costs ~1 us, and 4x (20k
#: tasks, ~20 ms) left the ratio to start-up noise (0.68x to 1.41x between runs).
MAP_FACTOR = 40


@dataclass(frozen=True)
class Sizes:
    n: int
    n_1ms: int
    chunksize: int
    latency_n: int
    idle_s: float
    restart_n: int
    quick: bool
    repeat: int = 1

    def count(self, task: str, shape: str) -> int:
        # map with chunks is cheap per task: give it more, so its time is not all start-up
        n = self.n if task == "no-op" else self.n_1ms
        return n * MAP_FACTOR if shape.startswith("map") and task == "no-op" else n


#: Every pool is measured --repeat times, the pools in turn round after round, and each
#: figure is the median run's: ProcessPoolExecutor alone ran 5k to 16k no-op submits/s in
#: single runs on a shared 2-core machine, so a one-run ratio said little.
FULL = Sizes(n=5_000, n_1ms=2_000, chunksize=100, latency_n=300, idle_s=2.0,
             restart_n=100_000, quick=False, repeat=3)
QUICK = Sizes(n=1_000, n_1ms=400, chunksize=50, latency_n=100, idle_s=0.25,
              restart_n=2_000, quick=True)


# -- the pools, driven the way their users drive them -----------------------------------------


class Runner:
    """One started pool. ``shapes`` names what it offers besides ``map``."""

    submit_shape = SUBMIT
    extra_shapes: tuple[str, ...] = ()

    def submit_many(self, fn: Callable[[int], int], items: range) -> tuple[float, list[Any]]:
        """Submit every item, then wait for each result: (seconds submitting, results)."""
        raise NotImplementedError

    def map(self, fn: Callable[[int], int], items: range, chunksize: int) -> list[Any]:
        raise NotImplementedError

    def imap_unordered(self, fn: Callable[[int], int], items: range) -> list[Any]:
        raise NotImplementedError

    def one(self, fn: Callable[[int], int], arg: int) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ExecutorRunner(Runner):
    def __init__(self, ex: concurrent.futures.Executor) -> None:
        self.ex = ex

    def submit_many(self, fn: Callable[[int], int], items: range) -> tuple[float, list[Any]]:
        start = time.perf_counter()
        futures = [self.ex.submit(fn, i) for i in items]
        submitted = time.perf_counter() - start
        return submitted, [f.result(WAIT_S) for f in futures]

    def map(self, fn: Callable[[int], int], items: range, chunksize: int) -> list[Any]:
        return list(self.ex.map(fn, items, timeout=WAIT_S, chunksize=chunksize))

    def one(self, fn: Callable[[int], int], arg: int) -> Any:
        return self.ex.submit(fn, arg).result(WAIT_S)

    def close(self) -> None:
        self.ex.shutdown(wait=True)


class PoolRunner(Runner):
    submit_shape = "apply_async"
    extra_shapes = (IMAP1,)

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def submit_many(self, fn: Callable[[int], int], items: range) -> tuple[float, list[Any]]:
        start = time.perf_counter()
        pending = [self.pool.apply_async(fn, (i,)) for i in items]
        submitted = time.perf_counter() - start
        return submitted, [p.get(WAIT_S) for p in pending]

    def map(self, fn: Callable[[int], int], items: range, chunksize: int) -> list[Any]:
        return list(self.pool.map_async(fn, items, chunksize=chunksize).get(WAIT_S))

    def imap_unordered(self, fn: Callable[[int], int], items: range) -> list[Any]:
        return sorted(self.pool.imap_unordered(fn, items, chunksize=1))

    def one(self, fn: Callable[[int], int], arg: int) -> Any:
        return self.pool.apply_async(fn, (arg,)).get(WAIT_S)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class PebbleRunner(Runner):
    submit_shape = "schedule"

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def submit_many(self, fn: Callable[[int], int], items: range) -> tuple[float, list[Any]]:
        start = time.perf_counter()
        futures = [self.pool.schedule(fn, args=(i,)) for i in items]
        submitted = time.perf_counter() - start
        return submitted, [f.result(WAIT_S) for f in futures]

    def map(self, fn: Callable[[int], int], items: range, chunksize: int) -> list[Any]:
        return list(self.pool.map(fn, items, chunksize=chunksize).result())

    def one(self, fn: Callable[[int], int], arg: int) -> Any:
        return self.pool.schedule(fn, args=(arg,)).result(WAIT_S)

    def close(self) -> None:
        self.pool.close()
        self.pool.join(WAIT_S)


def durable_dir(tmp: str) -> Runner:
    return ExecutorRunner(durableq.Executor(max_workers=WORKERS, path=os.path.join(tmp, "ex")))


def durable_none(tmp: str) -> Runner:
    return ExecutorRunner(durableq.Executor(max_workers=WORKERS))


def process_pool_executor(tmp: str) -> Runner:
    return ExecutorRunner(concurrent.futures.ProcessPoolExecutor(max_workers=WORKERS))


def mp_pool(tmp: str) -> Runner:
    return PoolRunner(mp.Pool(WORKERS))


def loky_executor(tmp: str) -> Runner:
    import loky

    return ExecutorRunner(loky.ProcessPoolExecutor(max_workers=WORKERS))


def pebble_pool(tmp: str) -> Runner:
    import pebble

    return PebbleRunner(pebble.ProcessPool(max_workers=WORKERS))


# Durable first: the idle figure that has a target is taken before any other pool ran here.
IMPLS: list[tuple[str, Callable[[str], Runner]]] = [
    (DQ_DIR, durable_dir),
    (DQ_NONE, durable_none),
    (PPE, process_pool_executor),
    ("multiprocessing.Pool", mp_pool),
    ("loky.ProcessPoolExecutor", loky_executor),
    ("pebble.ProcessPool", pebble_pool),
]


# -- 1: idle CPU ----------------------------------------------------------------------------------


def _cpu_ns(proc: psutil.Process) -> int:
    """CPU time of every live thread of ``proc``, in ns (psutil's ticks are 10 ms coarse)."""
    total = 0
    for stat in glob.glob(f"/proc/{proc.pid}/task/*/schedstat"):
        try:
            with open(stat) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread exited between glob and open
    if total:
        return total
    t = proc.cpu_times()
    return int((t.user + t.system) * 1e9)


def _cpu_snapshot(procs: list[psutil.Process]) -> dict[int, int]:
    snap = {}
    for proc in procs:
        try:
            snap[proc.pid] = _cpu_ns(proc)
        except psutil.Error:
            pass  # exited meanwhile
    return snap


def measure_idle(seconds: float) -> dict[str, Any]:
    time.sleep(SETTLE_S)
    me = psutil.Process()
    kids = me.children(recursive=True)
    # Read this process last before and first after the window: the CPU spent taking the
    # snapshots stays out of the figure.
    before = _cpu_snapshot([*kids, me])
    start = time.perf_counter()
    time.sleep(seconds)
    after = _cpu_snapshot([me, *kids])
    elapsed = time.perf_counter() - start
    used = sum(ns - before[pid] for pid, ns in after.items() if pid in before)
    return {
        "idle_s": elapsed,
        "cpu_pct_of_one_core": 100.0 * used / 1e9 / elapsed,
        "processes": len(after),
        "new_processes": len(me.children(recursive=True)) - len(kids),
    }


# -- 2 and 3: throughput and latency ------------------------------------------------------------


def measure_shape(runner: Runner, shape: str, task: str, n: int, chunksize: int) -> dict[str, Any]:
    fn, items = TASKS[task], range(n)
    cell: dict[str, Any] = {"n": n}
    try:
        start = time.perf_counter()
        if shape == SUBMIT:
            cell["submit_s"], results = runner.submit_many(fn, items)
        elif shape == IMAP1:
            results = runner.imap_unordered(fn, items)
        else:
            results = runner.map(fn, items, chunksize)
        seconds = time.perf_counter() - start
    except Exception as exc:
        cell["error"] = f"{type(exc).__name__}: {exc}"
        return cell
    cell.update(seconds=seconds, tasks_per_s=n / seconds, complete=results == list(items))
    return cell


def _percentile(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def measure_latency(runner: Runner, n: int) -> dict[str, Any]:
    samples = []
    for i in range(n):
        start = time.perf_counter_ns()
        if runner.one(noop, i) != i:
            raise RuntimeError(f"task {i} returned a wrong result")
        samples.append(time.perf_counter_ns() - start)
    ordered = sorted(samples)
    return {
        "n": n,
        "p50_us": _percentile(ordered, 0.50),
        "p99_us": _percentile(ordered, 0.99),
        "max_us": ordered[-1] / 1000.0,
    }


def _warm_up(runner: Runner) -> None:
    """Every worker started and has run a task: start-up is not part of any figure."""
    # Tasks long enough that one worker cannot take them all before the others start.
    _, results = runner.submit_many(spin, range(4 * WORKERS))
    if results != list(range(4 * WORKERS)):
        raise RuntimeError("warm-up returned wrong results")


def _shape_name(runner: Runner, shape: str, chunksize: int) -> str:
    if shape == SUBMIT:
        return runner.submit_shape
    return shape if shape == IMAP1 else f"map({chunksize})"


def run_impl(impl: str, factory: Callable[[str], Runner], sizes: Sizes) -> dict[str, Any]:
    row: dict[str, Any] = {"impl": impl, "shapes": []}
    with tempfile.TemporaryDirectory(prefix="dq-bench-") as tmp:
        try:
            runner = factory(tmp)
        except ImportError as exc:
            row["error"] = f"not installed ({exc.name})"
            return row
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            return row
        try:
            _warm_up(runner)
            row["idle"] = measure_idle(sizes.idle_s)
            for shape in (SUBMIT, *runner.extra_shapes, "map"):
                cells = {t: measure_shape(runner, shape, t, sizes.count(t, shape), sizes.chunksize)
                         for t in TASKS}
                row["shapes"].append(
                    {"shape": shape, "name": _shape_name(runner, shape, sizes.chunksize), **cells}
                )
            row["latency"] = measure_latency(runner, sizes.latency_n)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            runner.close()
            del runner
            gc.collect()
    return row


# -- 4: restart with a large unfinished backlog -------------------------------------------------


def _submitter(conn: Connection, path: str, n: int, marker: str, release: str) -> None:
    ex = durableq.Executor(max_workers=1, path=path)
    start = time.perf_counter()
    for i in range(n):
        ex.submit(hold, i, marker, release)  # the first holds the only worker; the rest wait
    conn.send(time.perf_counter() - start)
    time.sleep(WAIT_S)  # SIGKILLed here
    os._exit(3)


def _first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            line = f.readline()
    except FileNotFoundError:
        return None
    return line if line.endswith("\n") else None


def _restarter(conn: Connection, path: str, marker: str) -> None:
    start = time.monotonic_ns()
    ex = durableq.Executor(max_workers=WORKERS, path=path)  # runs the unfinished tasks
    constructed = time.monotonic_ns()
    deadline = time.monotonic() + WAIT_S
    while (line := _first_line(marker)) is None and time.monotonic() < deadline:
        time.sleep(0.001)
    ran = None if line is None else int(line.split()[1])  # when the task wrote it
    listing = time.monotonic_ns()
    recovered = ex.recovered()
    listed = time.monotonic_ns()
    conn.send({
        "construct_s": (constructed - start) / 1e9,
        "first_task_s": None if ran is None else (ran - start) / 1e9,
        "recovered_s": (listed - listing) / 1e9,
        "recovered": len(recovered),
        "recovered_done": sum(f.done() for f in recovered.values()),
    })
    conn.recv()  # the driver has released the held tasks
    t = time.perf_counter()
    ex.shutdown(wait=True, cancel_futures=True)
    conn.send(time.perf_counter() - t)


def _recv(conn: Connection, proc: Any, timeout: float) -> Any:
    if not wait([conn, proc.sentinel], timeout) or not conn.poll():
        proc.join(1.0)
        raise RuntimeError(f"{proc.name}: no report within {timeout:g} s "
                           f"(exit code {proc.exitcode})")
    return conn.recv()


def _start(target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    parent_end, child_end = CTX.Pipe()
    proc = CTX.Process(target=target, args=(child_end, *args), name=target.__name__.strip("_"))
    proc.start()
    child_end.close()
    return proc, parent_end


def _reap(proc: Any) -> None:
    if proc.is_alive():
        proc.kill()
    proc.join(WAIT_S)




def _kill_and_wait(proc: Any) -> None:
    """SIGKILL ``proc``, then wait until its children (the workers) have died with it."""
    kids = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(WAIT_S)
    alive = wait_dead(kids, 10.0)
    if alive:
        raise RuntimeError(f"workers outlived their killed parent: {[p.pid for p in alive]}")


def run_restart(n: int) -> dict[str, Any]:
    row: dict[str, Any] = {"n": n}
    submit_timeout = WAIT_S + n / 500  # allows for a submit as slow as 500/s
    with tempfile.TemporaryDirectory(prefix="dq-bench-") as tmp:
        path, marker, release = (os.path.join(tmp, x) for x in ("ex", "marker", "release"))
        proc, conn = _start(_submitter, path, n, marker, release)
        try:
            row["submit_s"] = _recv(conn, proc, submit_timeout)
            row["submits_per_s"] = n / row["submit_s"]
            _kill_and_wait(proc)
        except Exception as exc:
            row["error"] = f"submitting: {type(exc).__name__}: {exc}"
            return row
        finally:
            _reap(proc)
            conn.close()
        if os.path.exists(marker):
            os.unlink(marker)  # from the killed run's first task; we wait for a re-run's
        proc, conn = _start(_restarter, path, marker)
        try:
            row.update(_recv(conn, proc, WAIT_S + n / 1000))
            Path(release).touch()
            conn.send("released")
            row["shutdown_s"] = _recv(conn, proc, WAIT_S)
            proc.join(WAIT_S)
        except Exception as exc:
            row["error"] = f"restarting: {type(exc).__name__}: {exc}"
        finally:
            Path(release).touch()
            _reap(proc)
            conn.close()
    return row


# -- report ---------------------------------------------------------------------------------------


def _cell(rows: list[dict[str, Any]], impl: str, shape: str, task: str) -> dict[str, Any]:
    for row in rows:
        if row["impl"] == impl:
            for s in row["shapes"]:
                if s["shape"] == shape:
                    return dict(s[task])
    return {}


def _rate(rows: list[dict[str, Any]], impl: str, shape: str, task: str) -> float | None:
    cell = _cell(rows, impl, shape, task)
    return cell.get("tasks_per_s") if cell.get("complete") else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a pool's repeated runs: each throughput cell, the latency and the idle
    CPU from its own median run. A run that failed is reported as it is."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    row: dict[str, Any] = {"impl": runs[0]["impl"], "shapes": []}
    for i, shape in enumerate(runs[0]["shapes"]):
        merged = {k: v for k, v in shape.items() if k not in TASKS}
        for task in TASKS:
            merged[task] = median_run([r["shapes"][i][task] for r in runs], "tasks_per_s")
        row["shapes"].append(merged)
    row["latency"] = median_run([r["latency"] for r in runs], "p50_us")
    row["idle"] = median_run([r["idle"] for r in runs], "cpu_pct_of_one_core")
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        for s in row["shapes"]:
            base_shape = SUBMIT if s["shape"] == IMAP1 else s["shape"]
            for task in TASKS:
                s[task]["x_ppe"] = _ratio(_rate([row], row["impl"], s["shape"], task),
                                          _rate(rows, PPE, base_shape, task))


def _target(name: str, value: float | None, op: str, bound: float,
            aim: float | None = None) -> dict[str, Any]:
    if value is None:
        status = "ERROR"
    elif op == ">=":
        status = "PASS" if value >= bound else "FAIL"
    else:
        status = "PASS" if value < bound else "FAIL"
    return {"target": name, "value": value, "op": op, "bound": bound, "aim": aim,
            "status": status}


def evaluate(results: dict[str, Any], sizes: Sizes) -> list[dict[str, Any]]:
    rows, c = results["impls"], sizes.chunksize
    dq = next((r for r in rows if r["impl"] == DQ_DIR), {})
    restart = results["restart"]
    # Throughput targets on no-op tasks, where the pool's own cost is all there is to measure:
    # 1 ms tasks keep both workers busy, so every pool sits near the same ceiling.
    targets = [
        _target("durable submit, no-op >= 1x PPE submit",
                _ratio(_rate(rows, DQ_DIR, SUBMIT, "no-op"), _rate(rows, PPE, SUBMIT, "no-op")),
                ">=", 1.0, aim=3.0),
        _target(f"durable map({c}), no-op >= 1x PPE map({c})",
                _ratio(_rate(rows, DQ_DIR, "map", "no-op"), _rate(rows, PPE, "map", "no-op")),
                ">=", 1.0),
        _target("durable idle CPU < 1% of one core",
                dq.get("idle", {}).get("cpu_pct_of_one_core"), "<", 1.0),
    ]
    label = f"{restart['n'] / 1000:g}k" + (" (--quick)" if sizes.quick else "")
    targets.append(_target(f"restart with {label} unfinished -> first task < 1 s",
                           restart.get("first_task_s"), "<", 1.0))
    return targets


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _note(cell: dict[str, Any]) -> str:
    if "error" in cell:
        return str(cell["error"])
    return "" if cell.get("complete") else "WRONG RESULTS"


def print_throughput(rows: list[dict[str, Any]], sizes: Sizes) -> None:
    print(f"\nThroughput, tasks/s ({WORKERS} workers, {CPUS} CPUs; 1 ms = busy-wait;"
          f" N no-op {sizes.n:,} (map {sizes.count('no-op', 'map'):,}), 1 ms {sizes.n_1ms:,})")
    print(f"{'impl':<26} {'shape':<18} {'no-op/s':>9} {'x PPE':>6} {'1 ms/s':>8} {'x PPE':>6}"
          f" {'no-op runs (k/s)':>18}  note")
    for row in rows:
        if "error" in row and not row["shapes"]:
            print(f"{row['impl']:<26} {'':<18} {row['error']}")
            continue
        for s in row["shapes"]:
            a, b = s["no-op"], s["1 ms"]
            note = "; ".join(x for x in (_note(a), _note(b)) if x)
            print(f"{row['impl']:<26} {s['name']:<18} {_fmt(a.get('tasks_per_s'), ',.0f'):>9}"
                  f" {_fmt(a.get('x_ppe'), '.2f'):>6} {_fmt(b.get('tasks_per_s'), ',.0f'):>8}"
                  f" {_fmt(b.get('x_ppe'), '.2f'):>6}"
                  f" {' '.join(f'{v / 1e3:.1f}' for v in a.get('runs_tasks_per_s', [])):>18}"
                  f"  {note}")
        if "error" in row:
            print(f"{row['impl']:<26} {'':<18} {row['error']}")


def print_latency_idle(rows: list[dict[str, Any]], sizes: Sizes) -> None:
    print(f"\nLatency, no-op submitted one at a time, submit -> result (N={sizes.latency_n});"
          f" idle CPU over {sizes.idle_s:g} s, this process + children, % of one core")
    print(f"{'impl':<26} {'p50 us':>8} {'p99 us':>8} {'max us':>8} {'idle CPU %':>11}")
    for row in rows:
        lat, idle = row.get("latency", {}), row.get("idle", {})
        if not lat and not idle:
            continue
        print(f"{row['impl']:<26} {_fmt(lat.get('p50_us'), '.0f'):>8}"
              f" {_fmt(lat.get('p99_us'), '.0f'):>8} {_fmt(lat.get('max_us'), '.0f'):>8}"
              f" {_fmt(idle.get('cpu_pct_of_one_core'), '.2f'):>11}")


def print_restart(r: dict[str, Any]) -> None:
    print(f"\nRestart with {r['n']:,} unfinished tasks (durableq path=dir)")
    if "submit_s" in r:
        print(f"  submit {r['n']:,} one by one: {r['submit_s']:.1f} s"
              f" ({r['submits_per_s']:,.0f}/s), then the parent is SIGKILLed")
    if "construct_s" in r:
        print(f"  Executor(path) returned after {r['construct_s']:.3f} s; first task running"
              f" after {_fmt(r['first_task_s'], '.3f')} s; then recovered() took"
              f" {r['recovered_s']:.3f} s ({r['recovered']:,} futures, {r['recovered_done']:,}"
              " done)")
    if "shutdown_s" in r:
        print(f"  shutdown(cancel_futures=True) with the backlog: {r['shutdown_s']:.3f} s")
    if "error" in r:
        print(f"  {r['error']}")


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\nTargets")
    for t in targets:
        aim = ""
        if t["aim"] is not None and t["value"] is not None:
            aim = f"  (aim {t['aim']:g}x: {'met' if t['value'] >= t['aim'] else 'not met'})"
        print(f"  {t['status']:<5} {t['target']:<54} {_fmt(t['value'], '.3g'):>8}{aim}")


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "not installed"
    except AttributeError:
        return "unknown"


def environment(sizes: Sizes, argv: list[str]) -> dict[str, Any]:
    return {
        **machine(),
        "workers": WORKERS,
        "default_start_method": mp.get_start_method(),
        "versions": {m: _version(m) for m in ("durableq", "loky", "pebble", "psutil")},
        "sizes": vars(sizes),
        "command": reproduce_command(__file__, argv),
    }


def parse_args(argv: list[str]) -> tuple[Sizes, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke run, about 10 s")
    p.add_argument("--n", type=int, help="tasks per no-op run (map runs get MAP_FACTOR x as many)")
    p.add_argument("--n-1ms", type=int, help="tasks per 1 ms run")
    p.add_argument("--chunksize", type=int, help="chunksize of every map")
    p.add_argument("--latency-n", type=int, help="tasks in the one-at-a-time latency run")
    p.add_argument("--idle-s", type=float, help="seconds each pool sits idle for the CPU figure")
    p.add_argument("--restart-n", type=int, help="unfinished tasks in the restart case")
    p.add_argument("--repeat", type=int, help="runs of every pool (median reported)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    sizes = Sizes(
        n=a.n or base.n,
        n_1ms=a.n_1ms or base.n_1ms,
        chunksize=a.chunksize or base.chunksize,
        latency_n=a.latency_n or base.latency_n,
        idle_s=a.idle_s or base.idle_s,
        restart_n=a.restart_n or base.restart_n,
        quick=a.quick,
        repeat=a.repeat or base.repeat,
    )
    return sizes, a.out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sizes, out = parse_args(argv)
    print(f"sizes: {vars(sizes)}; {WORKERS} workers on {CPUS} CPUs")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, Any] = {"environment": environment(sizes, argv), "impls": []}
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl, _ in IMPLS}
    for rep in range(sizes.repeat):  # interleaved: a slow spell hits every pool alike
        for impl, factory in IMPLS:
            print(f"  {impl} (run {rep + 1}/{sizes.repeat}) ...", flush=True)
            runs[impl].append(run_impl(impl, factory, sizes))
    results["impls"] = [median_runs(r) for r in runs.values()]
    add_ratios(results["impls"])
    print(f"  restart with {sizes.restart_n:,} unfinished ...", flush=True)
    results["restart"] = run_restart(sizes.restart_n)
    results["targets"] = evaluate(results, sizes)
    results["environment"]["loadavg_at_end"] = os.getloadavg()
    results["environment"]["wall_s"] = time.perf_counter() - started
    print_throughput(results["impls"], sizes)
    print_latency_idle(results["impls"], sizes)
    print_restart(results["restart"])
    print_targets(results["targets"])
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())};"
          f" wall {results['environment']['wall_s']:.0f} s")
    print(f"reproduce: {results['environment']['command']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
