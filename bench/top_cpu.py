"""CPU used by ``durableq top`` on a large backlog, beside a view that recounts every tick.

Reproduce (from the repository root; about 90 s on 2 CPUs, a third of it filling the
backlog)::

    .venv/bin/python bench/top_cpu.py                      # 1M messages, 30 s of each view
    .venv/bin/python bench/top_cpu.py --messages 200000 --seconds 10   # quicker

A queue directory gets ``--messages`` ready messages (``put_many`` in batches of 10k), and
an owner process keeps it alive, putting 10 messages every 100 ms (so rates move). Then,
each for ``--seconds``:

1. ``durableq top PATH --interval 1`` runs in a pseudo-terminal (it draws, reads keys, and
   finds workers with psutil); its CPU time is read with psutil once its first exact count
   is done and again at the end.
2. The peer: the naive way to refresh, ``counts()`` (the exact count behind ``durableq
   stats``) once per second, in a process of its own.

3. The owner is not slowed: in a queue holding ``--messages // 5`` ready messages, the
   owner puts 20,000 messages that a consumer process gets (round trips through the
   owner's dispatcher), alternately without and with ``durableq top --json --interval 1``
   reading the same queue, three times each; medians and their ratio.

Printed and written to ``bench/results/top_cpu.json`` (``--out``): CPU as a percentage of
one core for each, their ratio, the cost of one ``counts()`` and one ``tallies()``, and
the owner's throughput without and with top.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pty
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import REPO, machine, reproduce_command

import durableq

DEFAULT_OUT = REPO / "bench" / "results" / "top_cpu.json"


def fill(path: str, n: int) -> None:
    store = durableq.DiskcacheStore(path)
    body = [durableq._serializer.get_serializer("auto").dumps({"job": i, "payload": "x" * 32})
            for i in range(10_000)]
    for start in range(0, n, 10_000):
        store.put_many(body[: min(10_000, n - start)])
    store.close()


def owner(path: str, ready: Any, stop: Any) -> None:
    q = durableq.Queue(path=path)
    ready.set()
    while not stop.wait(0.1):
        q.put_many(list(range(10)))


def naive(path: str, seconds: float) -> None:
    with durableq.inspect(path) as view:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            view.counts()
            time.sleep(1.0)


def _get(q: Any, n: int) -> None:
    for _ in range(n):
        q.get()


def owner_rate(path: str, backlog: int, with_top: bool) -> float:
    """Messages per second through a live owner (put here, got by a consumer process)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    q = durableq.Queue(path=path)
    for start in range(0, backlog, 10_000):
        q.put_many(list(range(start, min(backlog, start + 10_000))), priority="low")
    top = None
    if with_top:
        top = subprocess.Popen(
            [sys.executable, "-m", "durableq", "top", path, "--json", "--interval", "1"],
            stdout=subprocess.PIPE,
        )
        assert top.stdout is not None
        top.stdout.readline()  # its first refresh (and exact count) is done
    n = 20_000
    consumer = multiprocessing.get_context("fork").Process(target=_get, args=(q, n))
    consumer.start()
    t = time.perf_counter()
    for i in range(n):
        q.put(i, priority="high")  # ahead of the backlog
    consumer.join()
    elapsed = time.perf_counter() - t
    if top is not None:
        top.terminate()
        top.communicate()
    del q
    return n / elapsed


def cpu_of(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def run_top(path: str, seconds: float) -> dict[str, float]:
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "durableq", "top", path, "--interval", "1"],
        stdin=child_fd, stdout=child_fd, stderr=child_fd, env=env,
    )
    os.close(child_fd)
    ps = psutil.Process(proc.pid)
    seen = bytearray()
    start = time.monotonic()
    while b"press q" not in seen:  # the first frame: the exact count is done
        ready, _, _ = select.select([main_fd], [], [], 60)
        if not ready:
            raise RuntimeError("durableq top drew nothing in 60 s")
        seen += os.read(main_fd, 65536)
    first_frame = time.monotonic() - start
    cpu0, t0 = cpu_of(ps), time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:  # keep draining the terminal so top never blocks
        ready, _, _ = select.select([main_fd], [], [], end - time.monotonic())
        if ready:
            os.read(main_fd, 65536)
    cpu1, t1 = cpu_of(ps), time.monotonic()
    os.write(main_fd, b"q")
    proc.wait(30)
    os.close(main_fd)
    return {"cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0), "first_frame_s": first_frame}


def run_naive(path: str, seconds: float) -> dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=naive, args=(path, seconds))
    t0 = time.monotonic()
    p.start()
    ps = psutil.Process(p.pid)
    cpu = 0.0
    while p.is_alive():
        try:
            cpu = cpu_of(ps)
        except psutil.NoSuchProcess:
            break
        p.join(0.2)
    return {"cpu_percent": 100 * cpu / (time.monotonic() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    env = machine()
    with tempfile.TemporaryDirectory(prefix="durableq-top-") as tmp:
        path = os.path.join(tmp, "jobs.q")
        t = time.perf_counter()
        fill(path, args.messages)
        fill_s = time.perf_counter() - t
        ctx = multiprocessing.get_context("fork")
        ready, stop = ctx.Event(), ctx.Event()
        own = ctx.Process(target=owner, args=(path, ready, stop))
        own.start()
        ready.wait(120)
        with durableq.inspect(path) as view:
            t = time.perf_counter()
            view.counts()
            counts_s = time.perf_counter() - t
            t = time.perf_counter()
            view.tallies()
            tallies_s = time.perf_counter() - t
        try:
            top = run_top(path, args.seconds)
            peer = run_naive(path, args.seconds)
        finally:
            stop.set()
            own.join(30)
        rates: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(3):
            for key in ("without", "with"):
                rates[key].append(
                    owner_rate(os.path.join(tmp, "rt.q"), args.messages // 5, key == "with")
                )
    results = {
        "environment": env,
        "reproduce": reproduce_command(__file__, sys.argv[1:]),
        "messages": args.messages,
        "seconds": args.seconds,
        "fill_s": fill_s,
        "counts_s": counts_s,
        "tallies_s": tallies_s,
        "top": top,
        "counts_every_second": peer,
        "ratio": top["cpu_percent"] / peer["cpu_percent"] if peer["cpu_percent"] else None,
        "owner_rate": {k: sorted(v)[1] for k, v in rates.items()},
        "owner_rate_runs": rates,
    }
    print(f"{args.messages:,} ready messages, {args.seconds:g} s of each view")
    print(f"{'view':<34} {'CPU % of a core':>16}")
    print(f"{'durableq top --interval 1':<34} {top['cpu_percent']:>16.2f}")
    print(f"{'counts() every second (peer)':<34} {peer['cpu_percent']:>16.2f}")
    if results["ratio"] is not None:
        print(f"ratio top / peer: {results['ratio']:.3f}")
    print(f"one counts(): {counts_s * 1e3:,.0f} ms; one tallies(): {tallies_s * 1e3:.2f} ms; "
          f"top's first frame after {top['first_frame_s']:.1f} s")
    rate = results["owner_rate"]
    print(f"owner round trips, median of 3: {rate['without']:,.0f}/s without top, "
          f"{rate['with']:,.0f}/s with top ({rate['with'] / rate['without']:.2f}x)")
    print("reproduce:", results["reproduce"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
