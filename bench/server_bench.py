"""Server stores beside their peers: ``durableq.Queue`` on ``RedisStore`` vs RQ on the same
Redis, and ``durableq.Queue`` on ``PostgresStore`` vs procrastinate on the same PostgreSQL.

Reproduce (from the repository root; about a minute on 2 CPUs)::

    .venv/bin/python bench/server_bench.py            # starts its own servers
    .venv/bin/python bench/server_bench.py --quick    # smoke run
    .venv/bin/python bench/server_bench.py --redis-url redis://... --postgres-url postgresql://...

Without URLs it starts redis-server (AOF on, ``appendfsync everysec``) and PostgreSQL
(``fsync=off``: a killed server loses nothing, a machine crash could) from the Debian
packages, as ``make test`` does (``tests/servers.py``), on loopback. Results go to
``bench/results/server_bench.json`` (``--out`` to change).

What is measured, "fork" start method, every child forked before the clock starts:

1. put -> get -> ack throughput, 1 producer process -> 1 consumer process, ``--n``
   messages ``(i, stamp)``: from the start signal to the consumer having received the last
   one. durableq acks in ``ack="auto"`` mode (on the next get). RQ: the producer enqueues a
   no-op job per message; one ``SimpleWorker`` (jobs run in the worker process, no fork per
   job) runs them; a job finished is RQ's ack. Both keep their default history (durableq:
   10,000 done messages; RQ: results for 500 s).
   procrastinate is the peer on PostgreSQL: the best-known Python job queue built on it
   alone (psycopg 3, the driver ``PostgresStore`` uses), with plain synchronous tasks and
   ``defer``; pgqueuer, the nearest other, is asyncio-first (its tasks are coroutines). Its
   schema goes into a fresh database on the same server, dropped afterwards. The producer
   defers a no-op job per message; one worker (``concurrency=1``, LISTEN/NOTIFY on, as by
   default) runs them. Its worker marks a job ``doing`` when it takes it and ``succeeded``
   when the task returns: that is its ack, and a worker that stops heartbeating has its
   ``doing`` jobs retried, like durableq's redelivery of an unacked lease. It keeps
   finished jobs (``delete_jobs="never"``, its default).
2. Latency: one message every ``LATENCY_INTERVAL_S``, from the producer's
   ``perf_counter_ns()`` to the consumer's (CLOCK_MONOTONIC is shared across processes);
   p50 and p99.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _rq_jobs
from _env import machine, reproduce_command

import durableq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CTX = mp.get_context("fork")
DEFAULT_OUT = REPO / "bench" / "results" / "server_bench.json"
WAIT_S = 300.0  # bound on any cross-process wait; only a hang reaches it
LATENCY_INTERVAL_S = 0.02  # 50 messages/s: below every store's capacity, so no backlog
#: Each durableq store and its peer on the same server, under the key of their ratio.
PAIRS = {"ratio_redis_vs_rq": ("durableq RedisStore", "RQ (same Redis)"),
         "ratio_postgres_vs_procrastinate": ("durableq PostgresStore",
                                             "procrastinate (same PG)")}

# -- RQ's side: the job and the worker ------------------------------------------------------

def _rq_worker(url: str, name: str, start: Any, out: Any) -> None:
    import redis
    import rq

    _rq_jobs.out = out
    conn = redis.Redis.from_url(url)
    worker = rq.SimpleWorker([rq.Queue(name, connection=conn)], connection=conn)
    start.wait(WAIT_S)
    worker.work(logging_level="WARNING")


def _rq_producer(url: str, name: str, n: int, pace: float, start: Any) -> None:
    import redis
    import rq

    q = rq.Queue(name, connection=redis.Redis.from_url(url))
    start.wait(WAIT_S)
    for i in range(n):
        q.enqueue(_rq_jobs.job, i, time.perf_counter_ns())
        if pace:
            time.sleep(pace)
    q.enqueue(_rq_jobs.last)


# -- procrastinate's side: the same shape on PostgreSQL ----------------------------------------


def _pc_worker(url: str, start: Any, out: Any) -> None:
    import asyncio

    import _procrastinate_jobs

    _procrastinate_jobs.out = out
    app = _procrastinate_jobs.make_app(url)

    async def work() -> None:
        async with app.open_async():
            start.wait(WAIT_S)  # the pool is open: connecting is not timed, as for the others
            await app.run_worker_async(queues=["bench"], concurrency=1)

    asyncio.run(work())


def _pc_producer(url: str, n: int, pace: float, start: Any) -> None:
    import _procrastinate_jobs

    app = _procrastinate_jobs.make_app(url)
    with app.open():
        job, last = app.tasks["job"].configure(queue="bench"), app.tasks["last"]
        start.wait(WAIT_S)
        for i in range(n):
            job.defer(i=i, stamp=time.perf_counter_ns())
            if pace:
                time.sleep(pace)
        last.configure(queue="bench").defer()


# -- durableq's side --------------------------------------------------------------------------


def _dq_consumer(q: durableq.Queue, n: int, start: Any, out: Any) -> None:
    seen = []
    start.wait(WAIT_S)
    for _ in range(n):
        _, stamp = q.get(timeout=WAIT_S)
        seen.append(time.perf_counter_ns() - stamp)
    end = time.perf_counter_ns()
    q.close()
    out.send((end, seen))


def _dq_producer(q: durableq.Queue, n: int, pace: float, start: Any) -> None:
    start.wait(WAIT_S)
    for i in range(n):
        q.put((i, time.perf_counter_ns()))
        if pace:
            time.sleep(pace)
    q.close()


def run(consumer: Callable[..., None], producer: Callable[..., None], cargs: tuple[Any, ...],
        pargs: tuple[Any, ...], n: int, pace: float) -> dict[str, Any]:
    """Run one producer and one consumer process; rate from the start signal."""
    start = CTX.Event()
    here, there = CTX.Pipe(duplex=False)
    procs = [CTX.Process(target=consumer, args=(*cargs, start, there)),
             CTX.Process(target=producer, args=(*pargs, n, pace, start))]
    for p in procs:
        p.start()
    time.sleep(0.5)  # both blocked on the Event
    t0 = time.perf_counter_ns()
    start.set()
    deadline = time.monotonic() + WAIT_S
    while not here.poll(0.5):
        failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs:
                p.kill()
                p.join()
            return {"error": f"exit codes {failed}" if failed else "no result in time"}
    end, seen = here.recv()
    for p in procs:
        p.join(WAIT_S)
    lat = sorted(seen)
    return {
        "n": len(seen),
        "msgs_per_s": None if pace else len(seen) / ((end - t0) / 1e9),
        "p50_ms": lat[len(lat) // 2] / 1e6 if lat else None,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e6 if lat else None,
    }


def durable(store: durableq.Store, n: int, pace: float) -> dict[str, Any]:
    q = durableq.Queue(store=store, ctx=CTX)
    try:
        return run(_dq_consumer, _dq_producer, (q, n), (q,), n, pace)
    finally:
        q.close()
        store.drop()  # type: ignore[attr-defined]


def rq_run(url: str, n: int, pace: float) -> dict[str, Any]:
    import redis

    name = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    try:
        return run(_rq_worker, _rq_producer, (url, name), (url, name), n, pace)
    finally:
        conn = redis.Redis.from_url(url)
        for key in conn.scan_iter(match="rq:*"):
            conn.delete(key)


def procrastinate_run(url: str, n: int, pace: float) -> dict[str, Any]:
    import _procrastinate_jobs

    name = f"bench_procrastinate_{os.getpid()}_{time.monotonic_ns()}"
    db_url = _procrastinate_jobs.create_database(url, name)
    try:
        return run(_pc_worker, _pc_producer, (db_url,), (db_url,), n, pace)
    finally:
        _procrastinate_jobs.drop_database(url, name)


# -- servers, report ----------------------------------------------------------------------------


@contextmanager
def servers(redis_url: str | None, postgres_url: str | None) -> Iterator[tuple[str, str]]:
    from tests.servers import PostgresServer, RedisServer

    started = []
    try:
        if redis_url is None:
            r = RedisServer(Path(tempfile.mkdtemp(prefix="durableq-bench-redis-")))
            r.start()
            started.append(r)
            redis_url = r.url
        if postgres_url is None:
            pg_root = Path(tempfile.mkdtemp(prefix="durableq-bench-pg-"))
            pg = PostgresServer(pg_root)
            pg.start()
            started.append(pg)
            postgres_url = pg.url
        yield redis_url, postgres_url
    finally:
        for s in started:
            s.stop()


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--n", type=int, help="messages in the throughput run")
    p.add_argument("--latency-n", type=int, help="messages in the latency run")
    p.add_argument("--redis-url")
    p.add_argument("--postgres-url")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    n = a.n or (2_000 if a.quick else 10_000)
    latency_n = a.latency_n or (150 if a.quick else 1_000)
    import redis
    import rq

    results: dict[str, Any] = {"environment": {
        **machine(), "start_method": "fork", "n": n, "latency_n": latency_n,
        "latency_interval_s": LATENCY_INTERVAL_S,
        "versions": {"durableq": durableq.__version__, "rq": rq.__version__,
                     "redis-py": redis.__version__,
                     "procrastinate": importlib.metadata.version("procrastinate"),
                     "psycopg": importlib.metadata.version("psycopg")},
        "reproduce": reproduce_command(__file__, sys.argv[1:] if argv is None else argv),
    }}
    with servers(a.redis_url, a.postgres_url) as (redis_url, postgres_url):
        def rs() -> durableq.Store:
            return durableq.RedisStore(redis_url, name=f"bench-{time.monotonic_ns()}")

        def ps() -> durableq.Store:
            return durableq.PostgresStore(postgres_url, name=f"bench-{time.monotonic_ns()}")

        cases: list[tuple[str, Callable[[int, float], dict[str, Any]]]] = [
            ("durableq RedisStore", lambda k, pace: durable(rs(), k, pace)),
            ("RQ (same Redis)", lambda k, pace: rq_run(redis_url, k, pace)),
            ("durableq PostgresStore", lambda k, pace: durable(ps(), k, pace)),
            ("procrastinate (same PG)", lambda k, pace: procrastinate_run(postgres_url, k, pace)),
        ]
        for impl, fn in cases:
            print(f"  {impl}: throughput N={n}, latency N={latency_n} ...", flush=True)
            results[impl] = {"throughput": fn(n, 0.0), "latency": fn(latency_n,
                                                                     LATENCY_INTERVAL_S)}
    for key, (dq, peer) in PAIRS.items():
        rates = (results[dq]["throughput"].get("msgs_per_s"),
                 results[peer]["throughput"].get("msgs_per_s"))
        results[key] = rates[0] / rates[1] if all(rates) else None  # type: ignore[operator]
    results["environment"]["loadavg_at_end"] = os.getloadavg()
    print(f"\nput -> get -> ack, 1 producer -> 1 consumer process (fork, {os.cpu_count()} CPUs)")
    print(f"{'impl':<26} {'msgs/s':>10} {'x peer':>7}   {'p50 ms':>8} {'p99 ms':>8}"
          f"  (latency: one message every {LATENCY_INTERVAL_S * 1000:g} ms)")
    ratios = {dq: results[key] for key, (dq, _) in PAIRS.items()}
    for impl, _ in cases:
        t, lat = results[impl]["throughput"], results[impl]["latency"]
        ratio = ratios.get(impl)
        print(f"{impl:<26} {_fmt(t.get('msgs_per_s'), ',.0f'):>10} {_fmt(ratio, '.2f'):>7}   "
              f"{_fmt(lat.get('p50_ms'), '.2f'):>8} {_fmt(lat.get('p99_ms'), '.2f'):>8}"
              f"  {t.get('error', '') or lat.get('error', '')}")
    print(f"\nreproduce: {results['environment']['reproduce']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
