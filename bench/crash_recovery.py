"""What SIGKILLing workers and the parent costs ``durableq.Executor`` and ``ProcessPoolExecutor``.

Reproduce (from the repository root; the full run takes about 30 s on 2 CPUs)::

    .venv/bin/python bench/crash_recovery.py            # full run, writes the JSON below
    .venv/bin/python bench/crash_recovery.py --quick    # smoke run, about 10 s

Flags: ``--n`` (tasks), ``--worker-kill-rate`` (worker SIGKILLs per second, Poisson),
``--parent-kills`` (parent SIGKILLs per run), ``--seed``, ``--work-ms`` (each task's sleep),
``--max-attempts`` (durableq's runs per task at most), ``--timeout`` (per run), ``--keep DIR``
(keep each run's logs and store there, to look into a failure). Results go to
``bench/results/crash_recovery.json`` (``--out`` to change). Exit status 1 if durableq lost
or corrupted a task, failed one early, or a durableq run did not finish.

The workload: task ``i`` appends ``i gen pid monotonic_ns`` to an O_APPEND execution log,
sleeps ``--work-ms`` and returns ``(i, blake2b(i))``, which is checked. The *parent* is a
separate interpreter (this script with ``--role parent``) started by this *driver*; it
submits every task not yet in its submission log (one line after each ``submit`` returns),
and appends each outcome to a results log as it completes. A restarted durableq parent opens
the same ``path``, takes ``ex.recovered()`` and submits only what no earlier parent logged:
the tasks themselves are in the executor's store.

The driver SIGKILLs a random worker (a child of the parent, found with psutil) at Poisson
times, and the parent at ``--parent-kills`` random moments drawn uniformly over the fault-free
run's duration (a kill waits until the current parent has run a task, so each restart is
timed). Parent kills can land while it is still submitting. durableq is restarted after each
parent kill; ``ProcessPoolExecutor`` has nothing to recover, so a parent kill ends its run,
and its orphaned workers are killed. Worker and parent kill times come from ``--seed``, the
same for both executors.

Reported per run: tasks submitted, completed (right value), failed (an exception and never a
result: ``BrokenProcessPool``, or ``WorkerCrashed`` once a task has used its attempts), lost
(no outcome at all), tasks that ran more than once (from the execution log), kills, restart
-> first task running, and tasks/s (first ``Executor()`` to last outcome, restarts included)
against the fault-free run. durableq passes when nothing is lost or wrong and no task failed
before running ``--max-attempts`` times.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from _bench_tasks import checked, dead, digest, wait_dead
from _env import machine, reproduce_command

import durableq

CPUS = os.cpu_count() or 1
REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
DEFAULT_OUT = REPO / "bench" / "results" / "crash_recovery.json"

DQ, PPE = "durableq", "ProcessPoolExecutor"
POLL_S = 0.002  # the driver's loop: kill times are kept to within this
ORPHAN_GRACE_S = 3.0  # how long a killed parent's workers get to die on their own
NOT_WORKERS = ("resource_tracker", "forkserver", "semaphore_tracker")


@dataclass(frozen=True)
class Config:
    n: int
    worker_kill_rate: float
    parent_kills: int
    seed: int
    work_ms: float
    workers: int
    max_attempts: int
    timeout: float
    quick: bool
    keep: str | None


@dataclass(frozen=True)
class Faults:
    label: str
    worker_kill_rate: float
    parent_kills: int


class Logs:
    """The files one run shares between the driver, its parents and their workers."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.store = os.path.join(root, "store")
        self.executions = os.path.join(root, "executions.log")
        self.submitted = os.path.join(root, "submitted.log")
        self.results = os.path.join(root, "results.log")
        self.events = os.path.join(root, "events.log")
        self.kills = os.path.join(root, "kills.log")  # the driver's: worker|parent pid ns

    def stderr(self, gen: int) -> str:
        return os.path.join(self.root, f"parent-{gen}.err")


def _lines(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.split() for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


class Appender:
    """An O_APPEND file written one whole line per write(2): a SIGKILL never tears a line."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def line(self, *fields: object) -> None:
        os.write(self.fd, (" ".join(map(str, fields)) + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


# -- the parent: a separate interpreter the driver starts, kills and restarts -------------------


def parent_main(a: argparse.Namespace) -> int:
    logs = Logs(a.dir)
    events, submitted, results = (Appender(p) for p in (logs.events, logs.submitted, logs.results))
    events.line(a.gen, "start", time.monotonic_ns())
    ex: concurrent.futures.Executor
    recovered: dict[int, concurrent.futures.Future[Any]] = {}
    if a.impl == DQ:
        dq = durableq.Executor(max_workers=a.workers, path=logs.store, max_attempts=a.max_attempts)
        events.line(a.gen, "constructed", time.monotonic_ns())
        recovered, ex = dq.recovered(), dq
    else:
        ex = concurrent.futures.ProcessPoolExecutor(max_workers=a.workers)
        events.line(a.gen, "constructed", time.monotonic_ns())
    logged = _lines(logs.submitted)  # i gen task_id
    by_task_id = {int(f[2]): int(f[0]) for f in logged}
    # -1: a task whose submit returned, but its parent was killed before logging it
    ids = {fut: by_task_id.get(task_id, -1) for task_id, fut in recovered.items()}
    events.line(a.gen, "recovered", time.monotonic_ns(), len(ids))
    already = {int(f[0]) for f in logged}
    for i in range(a.n):
        if i in already:
            continue
        try:
            fut = ex.submit(checked, i, a.gen, logs.executions, a.work_ms / 1000)
        except concurrent.futures.BrokenExecutor as exc:  # a broken pool refuses new work
            results.line(i, a.gen, "err", f"{type(exc).__name__}-at-submit")
            continue
        submitted.line(i, a.gen, getattr(fut, "task_id", -1))
        ids[fut] = i
    events.line(a.gen, "submitted", time.monotonic_ns())
    for fut in concurrent.futures.as_completed(ids):
        exc = fut.exception()
        if exc is None:
            i, value = fut.result()
            results.line(i, a.gen, "ok", value)
        else:
            results.line(ids[fut], a.gen, "err", type(exc).__name__)
    events.line(a.gen, "done", time.monotonic_ns())
    ex.shutdown(wait=True)
    return 0


# -- the driver -----------------------------------------------------------------------------------


class ExecutionTail:
    """Follows the execution log: when did the current parent first run a task?"""

    def __init__(self, path: str) -> None:
        self.path, self.offset, self.last_ns = path, 0, 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.last_ns
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            self.last_ns = max(self.last_ns, int(line.split()[3]))
        return self.last_ns


def _launch(impl: str, logs: Logs, gen: int, cfg: Config) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(SCRIPT), "--role", "parent", "--impl", impl, "--dir", logs.root,
            "--gen", str(gen), "--n", str(cfg.n), "--work-ms", str(cfg.work_ms),
            "--workers", str(cfg.workers), "--max-attempts", str(cfg.max_attempts)]
    with open(logs.stderr(gen), "wb") as err:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err)


def _workers(pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for kid in kids:
        try:
            if not dead(kid) and not any(x in " ".join(kid.cmdline()) for x in NOT_WORKERS):
                out.append(kid)
        except psutil.Error:
            pass  # exited meanwhile
    return out


def _kill_a_worker(parent: int, rng: random.Random, log: Appender) -> bool:
    """SIGKILL one of ``parent``'s workers, picked by ``rng``; False if it had none."""
    victims = _workers(parent)
    if not victims:
        return False
    victim = rng.choice(victims)
    try:
        victim.kill()
    except psutil.Error:
        return False  # it exited meanwhile
    log.line("worker", victim.pid, time.monotonic_ns())
    return True




def _kill_parent(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGKILL the parent. Returns how many of its processes outlived it by ORPHAN_GRACE_S
    (then killed), and how long the others took to die."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    alive = wait_dead(kids, ORPHAN_GRACE_S)
    took = time.monotonic() - killed
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass  # exited meanwhile
    wait_dead(alive, ORPHAN_GRACE_S)
    return len(alive), took


def _tail(path: str, lines: int = 12) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def drive(impl: str, faults: Faults, cfg: Config, logs: Logs, kill_span_s: float) -> dict[str, Any]:
    """Run the workload to the end under ``faults``; returns what the driver saw and did."""
    rng_parent, rng_gap, rng_pick = (random.Random(f"{cfg.seed}-{k}") for k in "pwc")
    start = time.monotonic()
    parent_kills = sorted(start + rng_parent.uniform(0.1, 0.9) * kill_span_s
                          for _ in range(faults.parent_kills))
    rate = faults.worker_kill_rate
    next_worker_kill = start + rng_gap.expovariate(rate) if rate > 0 else float("inf")
    tail = ExecutionTail(logs.executions)
    kills = Appender(logs.kills)
    gen, launches = 0, [time.monotonic_ns()]
    proc = _launch(impl, logs, gen, cfg)
    seen: dict[str, Any] = {"worker_kills": 0, "worker_kills_missed": 0, "parent_kills": 0,
                            "orphans": 0, "gens": 1, "ended": "finished",
                            "children_dead_after_parent_kill_s": []}
    try:
        while True:
            rc = proc.poll()
            if rc is not None:
                if rc != 0:
                    seen["ended"] = f"parent {gen} exited with {rc}: {_tail(logs.stderr(gen))}"
                break
            now = time.monotonic()
            if now > start + cfg.timeout:
                seen["orphans"] += _kill_parent(proc)[0]
                seen["ended"] = f"timed out after {cfg.timeout:g} s: {_tail(logs.stderr(gen))}"
                break
            ran_since_launch = tail.poll() >= launches[-1]
            if now >= next_worker_kill:
                hit = _kill_a_worker(proc.pid, rng_pick, kills)
                seen["worker_kills" if hit else "worker_kills_missed"] += 1
                while next_worker_kill <= now:  # kills due while no parent ran are skipped
                    next_worker_kill += rng_gap.expovariate(rate)
            if parent_kills and now >= parent_kills[0] and ran_since_launch:
                parent_kills.pop(0)
                kills.line("parent", proc.pid, time.monotonic_ns())
                orphans, took = _kill_parent(proc)
                seen["orphans"] += orphans
                seen["children_dead_after_parent_kill_s"].append(took)
                seen["parent_kills"] += 1
                if impl != DQ:
                    seen["ended"] = "parent killed; nothing to recover"
                    break
                gen += 1
                seen["gens"] += 1
                launches.append(time.monotonic_ns())
                proc = _launch(impl, logs, gen, cfg)
            time.sleep(POLL_S)
    finally:
        kills.close()
        if proc.poll() is None:  # the driver itself failed: leave no parent behind
            _kill_parent(proc)
    seen["seconds"] = time.monotonic() - start
    seen["launches_ns"] = launches
    return seen


def tally(logs: Logs, n: int, max_attempts: int, launches: list[int]) -> dict[str, Any]:
    """Read the logs: who was submitted, completed, lost, ran twice; restart times."""
    submitted = collections.defaultdict(set)  # i -> submitting gens
    for i, gen, _ in _lines(logs.submitted):
        submitted[int(i)].add(int(gen))
    completed, wrong, failed, errors = set(), set(), set(), collections.Counter()
    for i, _, status, value in _lines(logs.results):
        if status == "ok":
            (completed if value == digest(int(i)) else wrong).add(int(i))
        else:
            failed.add(int(i))
            errors[value] += 1
    runs = collections.Counter()
    first_run = [None] * len(launches)
    for fields in _lines(logs.executions):
        runs[int(fields[0])] += 1
        t = int(fields[3])
        gen = max(g for g, launched in enumerate(launches) if launched <= t)
        if first_run[gen] is None or t < first_run[gen]:
            first_run[gen] = t
    events: dict[tuple[int, str], list[int]] = {}
    for fields in _lines(logs.events):
        events.setdefault((int(fields[0]), fields[1]), [int(x) for x in fields[2:]])

    def at(gen: int, what: str) -> int | None:
        return events[gen, what][0] if (gen, what) in events else None

    def since(t0: int | None, t1: int | None) -> float | None:
        return None if t0 is None or t1 is None else (t1 - t0) / 1e9

    restarts = [
        {"gen": g,
         "launch_to_first_task_s": since(launches[g], first_run[g]),
         "parent_start_to_first_task_s": since(at(g, "start"), first_run[g]),
         "recovered": events.get((g, "recovered"), [0, None])[1]}
        for g in range(1, len(launches))
    ]
    failed -= completed  # failed in one parent, completed in another: it completed
    lost = [i for i in range(n) if i not in completed and i not in failed]
    begin = at(0, "constructed")
    ends = [t[0] for (_, what), t in events.items() if what == "done"]
    return {
        "submitted": len(submitted),
        "submitted_by_more_than_one_parent": sum(len(g) > 1 for g in submitted.values()),
        "completed": len(completed),
        "failed": len(failed),
        "failed_runs_sample": {i: runs[i] for i in sorted(failed)[:20]},  # how often each ran
        # a task may fail once it has run max_attempts times, not before (durableq only)
        "failed_before_max_attempts": sum(runs[i] < max_attempts for i in failed),
        "lost": len(lost),
        "lost_ids_sample": lost[:10],
        "failed_outcomes": dict(errors),
        "wrong_results": len(wrong),
        "ran_more_than_once": sum(c > 1 for c in runs.values()),
        "extra_executions": sum(c - 1 for c in runs.values() if c > 1),
        "executions": sum(runs.values()),
        "restarts": restarts,
        "busy_s": since(begin, max(ends)) if ends and begin else None,
    }


def run(impl: str, faults: Faults, cfg: Config, kill_span_s: float) -> dict[str, Any]:
    row: dict[str, Any] = {"impl": impl, "faults": faults.label, "n": cfg.n,
                           "worker_kill_rate": faults.worker_kill_rate,
                           "parent_kills_planned": faults.parent_kills}
    with tempfile.TemporaryDirectory(prefix="dq-crash-") as tmp:
        root = tmp
        if cfg.keep:
            root = os.path.join(cfg.keep, f"{impl}-{faults.label}".replace(" ", "-"))
            os.makedirs(root)
            row["logs"] = root
        logs = Logs(root)
        try:
            seen = drive(impl, faults, cfg, logs, kill_span_s)
        except Exception as exc:
            row["ended"] = f"driver error: {type(exc).__name__}: {exc}"
            return row
        row.update(seen)
        row.update(tally(logs, cfg.n, cfg.max_attempts, seen.pop("launches_ns")))
    # From the first parent's Executor() to the last parent's last outcome: restarts count.
    busy = row.get("busy_s") or row["seconds"]
    row["tasks_per_s"] = row["completed"] / busy if busy else None
    return row


# -- report ---------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _clean(row: dict[str, Any]) -> bool:
    """The run finished, and every task completed."""
    return row.get("ended") == "finished" and row.get("completed") == row["n"]


def durable_ok(row: dict[str, Any]) -> bool:
    """Nothing lost or corrupted: every task completed, or failed after its last attempt."""
    return (row.get("ended") == "finished" and row.get("lost") == 0
            and not row.get("wrong_results") and not row.get("failed_before_max_attempts"))


def _kill_span(rows: list[dict[str, Any]], cfg: Config) -> float:
    """How long a fault-free run takes; parent kills are drawn within it."""
    for row in rows:
        if _clean(row):
            return float(row["seconds"])
    return cfg.n * cfg.work_ms / 1000 / cfg.workers  # the ideal: no run finished cleanly


def add_ratios(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        base = next((r for r in rows if r["impl"] == row["impl"] and r["faults"] == "none"), {})
        rate = row.get("tasks_per_s")
        base_rate = base.get("tasks_per_s") if _clean(base) else None
        row["x_fault_free"] = rate / base_rate if rate is not None and base_rate else None


def print_report(rows: list[dict[str, Any]], cfg: Config) -> None:
    print(f"\nCrash recovery: N={cfg.n:,} tasks ({cfg.work_ms:g} ms sleep each, result checked),"
          f" {cfg.workers} workers, seed {cfg.seed}; faults: worker SIGKILLs at"
          f" {cfg.worker_kill_rate:g}/s, {cfg.parent_kills} parent SIGKILLs")
    print(f"{'impl':<20} {'faults':<15} {'submitted':>9} {'completed':>9} {'failed':>6}"
          f" {'lost':>6} {'ran >1':>6} {'kills w/p':>9} {'tasks/s':>8} {'x no-fault':>10}  note")
    for r in rows:
        if "completed" not in r:
            print(f"{r['impl']:<20} {r['faults']:<15} {r.get('ended', '')}")
            continue
        notes = []
        if r["failed_outcomes"]:
            failed = r["failed_outcomes"].items()
            notes.append("failed: " + ", ".join(f"{v} {k}" for k, v in failed))
        if r["impl"] == DQ and r["failed_before_max_attempts"]:
            notes.append(f"{r['failed_before_max_attempts']} FAILED BEFORE RUNNING"
                         f" {cfg.max_attempts} TIMES")
        if r["wrong_results"]:
            notes.append(f"{r['wrong_results']} WRONG RESULTS")
        if r["orphans"]:
            notes.append(f"{r['orphans']} workers outlived the parent by"
                         f" {ORPHAN_GRACE_S:g} s (then killed)")
        if r["ended"] != "finished":
            notes.append(r["ended"].splitlines()[-1].strip())
        kills = f"{r['worker_kills']}/{r['parent_kills']}"
        rate, ratio = (r["tasks_per_s"], r["x_fault_free"]) if _clean(r) else (None, None)
        print(f"{r['impl']:<20} {r['faults']:<15} {r['submitted']:>9,} {r['completed']:>9,}"
              f" {r['failed']:>6,} {r['lost']:>6,} {r['ran_more_than_once']:>6,} {kills:>9}"
              f" {_fmt(rate, ',.0f'):>8} {_fmt(ratio, '.2f'):>10}"
              f"  {'; '.join(notes)}")
    for r in rows:
        if r.get("restarts"):
            times = ", ".join(_fmt(x["launch_to_first_task_s"], ".2f") for x in r["restarts"])
            inner = ", ".join(_fmt(x["parent_start_to_first_task_s"], ".2f")
                              for x in r["restarts"])
            deaths = ", ".join(f"{x * 1000:.1f}" for x in r["children_dead_after_parent_kill_s"])
            print(f"\n{r['impl']} {r['faults']}: restart -> first task running: {times} s"
                  f" (from the new parent's first line: {inner} s); workers dead {deaths} ms"
                  " after each parent kill")
            if r["submitted_by_more_than_one_parent"]:
                print(f"  {r['submitted_by_more_than_one_parent']} task(s) submitted again by a"
                      " restarted parent: killed after submit returned, before logging it")


def environment(cfg: Config, argv: list[str]) -> dict[str, Any]:
    return {
        **machine(),
        "versions": {"durableq": durableq.__version__, "psutil": psutil.__version__},
        "config": vars(cfg),
        "command": reproduce_command(__file__, argv),
    }


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, Config]:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke run, about 10 s")
    p.add_argument("--n", type=int, help="tasks per run (default 5000, 1000 with --quick)")
    p.add_argument("--worker-kill-rate", type=float, default=2.0, help="worker SIGKILLs per s")
    p.add_argument("--parent-kills", type=int,
                   help="parent SIGKILLs per run (default 3, --quick 1)")
    p.add_argument("--seed", type=int, default=1, help="seeds every kill time and victim")
    p.add_argument("--work-ms", type=float, default=2.0, help="each task sleeps this long")
    p.add_argument("--workers", type=int, default=CPUS, help="workers per executor")
    p.add_argument("--max-attempts", type=int, default=3, help="durableq runs per task at most")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one run may take")
    p.add_argument("--keep", help="keep each run's logs and store in a new folder under this")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    hidden = argparse.SUPPRESS
    p.add_argument("--role", choices=["driver", "parent"], default="driver", help=hidden)
    p.add_argument("--impl", choices=[DQ, PPE], default=DQ, help=hidden)
    p.add_argument("--dir", help=hidden)
    p.add_argument("--gen", type=int, default=0, help=hidden)
    a = p.parse_args(argv)
    cfg = Config(
        n=a.n or (1_000 if a.quick else 5_000),
        worker_kill_rate=a.worker_kill_rate,
        parent_kills=a.parent_kills if a.parent_kills is not None else (1 if a.quick else 3),
        seed=a.seed,
        work_ms=a.work_ms,
        workers=a.workers,
        max_attempts=a.max_attempts,
        timeout=a.timeout,
        quick=a.quick,
        keep=a.keep,
    )
    return a, cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a, cfg = parse_args(argv)
    if a.role == "parent":
        return parent_main(a)
    print(f"config: {vars(cfg)}; {CPUS} CPUs")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, Any] = {"environment": environment(cfg, argv), "runs": []}
    none = Faults("none", 0.0, 0)
    chaos = Faults("workers+parent", cfg.worker_kill_rate, cfg.parent_kills)
    parent_only = Faults("parent only", 0.0, max(1, cfg.parent_kills))
    rows = results["runs"]
    kill_span_s = 0.0
    # Fault-free runs first: parent kills fall within durableq's fault-free duration (or
    # ProcessPoolExecutor's, should durableq's run not finish).
    for impl, faults in ((DQ, none), (PPE, none), (DQ, chaos), (PPE, chaos), (PPE, parent_only)):
        if faults is not none and not kill_span_s:
            kill_span_s = _kill_span(rows, cfg)
        print(f"  {impl}, faults: {faults.label} ...", flush=True)
        rows.append(run(impl, faults, cfg, kill_span_s))
    rows.sort(key=lambda r: r["impl"] != DQ)  # durableq's rows first, in run order otherwise
    add_ratios(rows)
    dq_rows = [r for r in rows if r["impl"] == DQ]
    ok = all(durable_ok(r) for r in dq_rows)
    results["environment"]["loadavg_at_end"] = os.getloadavg()
    results["durableq_lost_nothing"] = ok
    print_report(rows, cfg)
    print(f"\n{'PASS' if ok else 'FAIL'}  durableq lost nothing: every task completed with the"
          f" right result, or failed only after running {cfg.max_attempts} times")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"reproduce: {results['environment']['command']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
