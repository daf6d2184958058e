"""``durableq.Queue`` on ``RabbitMQStore`` beside Dramatiq on the same RabbitMQ broker.

Reproduce (from the repository root; about a minute on 2 CPUs)::

    .venv/bin/python bench/rabbitmq_bench.py            # starts its own broker
    .venv/bin/python bench/rabbitmq_bench.py --quick    # smoke run
    .venv/bin/python bench/rabbitmq_bench.py --url amqp://guest:guest@127.0.0.1:5672/%2F

Without ``--url`` it starts rabbitmq-server from the Debian package, as ``make test`` does
(``tests/servers.py``), on loopback. Results go to ``bench/results/rabbitmq_bench.json``.

The same two measurements as ``bench/server_bench.py`` (whose runner it uses), "fork"
start method, every child forked before the clock starts:

1. put -> get -> ack throughput, 1 producer process -> 1 consumer process, ``--n``
   messages ``(i, stamp)``. durableq: ``ack="auto"``; every put, lease and ack is a
   confirmed event in the store's stream. Dramatiq: ``RabbitmqBroker(confirm_delivery=
   True)`` (persistent messages, publisher confirms, as durableq's puts), one ``Worker``
   with one thread; a message whose actor returned is Dramatiq's ack.
2. Latency: one message every ``LATENCY_INTERVAL_S``; p50 and p99.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _dramatiq_jobs
from _env import machine, reproduce_command
from server_bench import LATENCY_INTERVAL_S, WAIT_S, _fmt, durable, run

import durableq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_OUT = REPO / "bench" / "results" / "rabbitmq_bench.json"


def _actor(url: str, name: str) -> Any:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url, confirm_delivery=True)
    return dramatiq.actor(_dramatiq_jobs.job, broker=broker, queue_name=name,
                          actor_name="job", max_retries=0)


def _dramatiq_worker(url: str, name: str, n: int, start: Any, out: Any) -> None:
    import dramatiq

    actor = _actor(url, name)
    _dramatiq_jobs.out, _dramatiq_jobs.expected = out, n
    start.wait(WAIT_S)
    worker = dramatiq.Worker(actor.broker, worker_threads=1)
    worker.start()
    threading.Event().wait(WAIT_S)  # the last job ends the process


def _dramatiq_producer(url: str, name: str, n: int, pace: float, start: Any) -> None:
    actor = _actor(url, name)
    start.wait(WAIT_S)
    for i in range(n):
        actor.send(i, time.perf_counter_ns())
        if pace:
            time.sleep(pace)
    actor.broker.close()


def dramatiq_run(url: str, n: int, pace: float) -> dict[str, Any]:
    import pika

    name = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    try:
        return run(_dramatiq_worker, _dramatiq_producer, (url, name, n), (url, name), n, pace)
    finally:
        con = pika.BlockingConnection(pika.URLParameters(url))
        channel = con.channel()
        for queue in (name, f"{name}.DQ", f"{name}.XQ"):
            channel.queue_delete(queue)
        con.close()


@contextmanager
def broker(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.servers import RabbitMQServer

    server = RabbitMQServer(Path(tempfile.mkdtemp(prefix="durableq-bench-rabbitmq-")))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--n", type=int, help="messages in the throughput run")
    p.add_argument("--latency-n", type=int, help="messages in the latency run")
    p.add_argument("--url", help="an AMQP URL (default: start a broker)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    n = a.n or (1_000 if a.quick else 5_000)
    latency_n = a.latency_n or (150 if a.quick else 500)
    import dramatiq
    import pika

    results: dict[str, Any] = {"environment": {
        **machine(), "start_method": "fork", "n": n, "latency_n": latency_n,
        "latency_interval_s": LATENCY_INTERVAL_S,
        "versions": {"durableq": durableq.__version__, "dramatiq": dramatiq.__version__,
                     "pika": pika.__version__},
        "reproduce": reproduce_command(__file__, sys.argv[1:] if argv is None else argv),
    }}
    dq_name, peer_name = "durableq RabbitMQStore", "Dramatiq (same broker)"
    with broker(a.url) as url:
        def store() -> durableq.Store:
            return durableq.RabbitMQStore(url, name=f"bench-{time.monotonic_ns()}")

        for impl, fn in ((dq_name, lambda k, pace: durable(store(), k, pace)),
                         (peer_name, lambda k, pace: dramatiq_run(url, k, pace))):
            print(f"  {impl}: throughput N={n}, latency N={latency_n} ...", flush=True)
            results[impl] = {"throughput": fn(n, 0.0),
                             "latency": fn(latency_n, LATENCY_INTERVAL_S)}
    rates = (results[dq_name]["throughput"].get("msgs_per_s"),
             results[peer_name]["throughput"].get("msgs_per_s"))
    results["ratio_vs_dramatiq"] = rates[0] / rates[1] if rates[0] and rates[1] else None
    results["environment"]["loadavg_at_end"] = os.getloadavg()
    print(f"\nput -> get -> ack, 1 producer -> 1 consumer process (fork, {os.cpu_count()} CPUs)")
    print(f"{'impl':<26} {'msgs/s':>10} {'x peer':>7}   {'p50 ms':>8} {'p99 ms':>8}"
          f"  (latency: one message every {LATENCY_INTERVAL_S * 1000:g} ms)")
    for impl in (dq_name, peer_name):
        t, lat = results[impl]["throughput"], results[impl]["latency"]
        ratio = results["ratio_vs_dramatiq"] if impl == dq_name else None
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
