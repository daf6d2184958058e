"""Command queues: latest-intent upserts and per-target drains beside plain puts.

Reproduce (from the repository root; the full run takes a few minutes on 2 CPUs)::

    .venv/bin/python bench/command_bench.py            # full run, writes the JSON below
    .venv/bin/python bench/command_bench.py --quick    # smoke run, < 30 s

Results go to ``bench/results/command_bench.json`` (``--quick``: ``command_bench.quick.json``,
so a smoke run never replaces a full result; ``--out`` to change). In one run, one process,
every call timed on its own:

1. Plain put: ``durableq.Queue(path).put(payload)``, ``--put-n`` times: the baseline.
2. ``CommandQueue(path).enqueue(target, payload)``, ``--put-n`` times over ``--targets``.
3. ``enqueue_or_update(target, type, payload)``, ``--n`` times (1M), keys drawn at random
   from ``--targets`` x ``--types`` (10,000 x 10): heavy key overlap, ~10 updates a key.
   Then the size of ``commands.db`` (after a WAL checkpoint, and with its WAL as it was) per
   live command and per upsert: it must follow live commands, not upserts.
4. Drain every target once (``drain(target)``): drains/s and commands/s.
5. Drain of 100 commands: ``--big`` targets get 100 commands each; each is drained alone.
6. The same upserts and drains on ``MemoryStore`` (no durability): the in-process ceiling.

The payload is ``{"c": i, "note": "x" * 32}``. Targets: upsert >= 0.5x plain put;
drain of 100 commands < 5 ms (p99).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from _env import machine, reproduce_command

import durableq

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
NOTE = "x" * 32


def timed(calls: Iterable[Any], fn: Callable[[Any], Any]) -> dict[str, float]:
    """Run ``fn`` on each item; ops/s over the whole loop and per-call latency percentiles."""
    lat: list[int] = []
    gc.disable()  # a collection in one call would be charged to it alone
    try:
        t0 = time.perf_counter()
        for item in calls:
            s = time.perf_counter_ns()
            fn(item)
            lat.append(time.perf_counter_ns() - s)
        elapsed = time.perf_counter() - t0
    finally:
        gc.enable()
    lat.sort()
    n = len(lat)
    return {
        "n": n,
        "seconds": elapsed,
        "ops_per_s": n / elapsed if elapsed else 0.0,
        "p50_ms": lat[n // 2] / 1e6 if n else 0.0,
        "p99_ms": lat[min(n - 1, n * 99 // 100)] / 1e6 if n else 0.0,
        "max_ms": lat[-1] / 1e6 if n else 0.0,
    }


def keys(args: argparse.Namespace, seed: int) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)
    return [(f"dev-{rng.randrange(args.targets)}", f"type-{rng.randrange(args.types)}", i)
            for i in range(args.n)]


def disk_size(path: str) -> dict[str, int]:
    db = os.path.join(path, "commands.db")
    with_wal = sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s))
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return {"db_bytes_checkpointed": os.path.getsize(db), "db_and_wal_bytes": with_wal}


def plain_puts(where: str, args: argparse.Namespace) -> dict[str, Any]:
    q = durableq.Queue(path=os.path.join(where, "plain.q"))
    try:
        return timed(range(args.put_n), lambda i: q.put({"c": i, "note": NOTE}))
    finally:
        q.close()


def command_run(cq: durableq.CommandQueue, args: argparse.Namespace, path: str | None,
                ks: list[tuple[str, str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if path is not None:
        out["enqueue"] = timed(
            range(args.put_n),
            lambda i: cq.enqueue(f"plain-{i % args.targets}", {"c": i, "note": NOTE}),
        )
        for i in range(args.targets):  # leave only the upserts behind for the size figures
            cq.drain(f"plain-{i}")
    out["upsert"] = timed(ks, lambda k: cq.enqueue_or_update(k[0], k[1], {"c": k[2],
                                                                            "note": NOTE}))
    live = cq.counts().ready
    out["live_commands"] = live
    if path is not None:
        size = disk_size(path)
        size["bytes_per_live_command"] = size["db_bytes_checkpointed"] / max(1, live)
        size["bytes_per_upsert"] = size["db_bytes_checkpointed"] / max(1, args.n)
        out["size"] = size
    drained = 0

    def drain(target: str) -> None:
        nonlocal drained
        drained += len(cq.drain(target))

    out["drain_every_target"] = timed([f"dev-{t}" for t in range(args.targets)], drain)
    out["drain_every_target"]["commands"] = drained
    out["drain_every_target"]["commands_per_s"] = (
        drained / out["drain_every_target"]["seconds"]
    )
    assert drained == live, f"drained {drained} of {live} live commands"
    for b in range(args.big):
        for i in range(100):
            cq.enqueue(f"big-{b}", {"c": i, "note": NOTE})
    big = timed([f"big-{b}" for b in range(args.big)], lambda t: cq.drain(t))
    out["drain_100"] = big
    if path is not None:
        size = disk_size(path)
        out["size_after_drain_bytes"] = size["db_bytes_checkpointed"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    ks = keys(args, seed=1)
    with tempfile.TemporaryDirectory(prefix="durableq-cmdbench-") as where:
        results: dict[str, Any] = {"plain_put": plain_puts(where, args)}
        path = os.path.join(where, "commands.q")
        cq = durableq.CommandQueue(path=path)
        try:
            results["diskcache"] = command_run(cq, args, path, ks)
        finally:
            cq.close()
    mem = durableq.CommandQueue(store=durableq.MemoryStore())
    results["memory"] = command_run(mem, args, None, ks)
    return results


def report(r: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    put = r["plain_put"]["ops_per_s"]
    d, m = r["diskcache"], r["memory"]
    print(f"\n{args.n:,} upserts over {args.targets:,} targets x {args.types} types; "
          f"plain puts and enqueues: {args.put_n:,}")
    print(f"{'writes':<44} {'ops/s':>10} {'x put':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in [
        ("Queue.put (diskcache)", r["plain_put"]),
        ("CommandQueue.enqueue (diskcache)", d["enqueue"]),
        ("CommandQueue.enqueue_or_update (diskcache)", d["upsert"]),
        ("CommandQueue.enqueue_or_update (memory)", m["upsert"]),
    ]:
        print(f"{name:<44} {row['ops_per_s']:>10,.0f} {row['ops_per_s'] / put:>7.2f} "
              f"{row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f}")
    print(f"\n{'drains':<44} {'drains/s':>10} {'cmds/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row, per in [
        ("drain(target) of every target (diskcache)", d["drain_every_target"], None),
        ("drain(target) of every target (memory)", m["drain_every_target"], None),
        ("drain(target) of 100 (diskcache)", d["drain_100"], 100),
        ("drain(target) of 100 (memory)", m["drain_100"], 100),
    ]:
        cmds = row["commands_per_s"] if per is None else row["ops_per_s"] * per
        print(f"{name:<44} {row['ops_per_s']:>10,.0f} {cmds:>10,.0f} "
              f"{row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f}")
    s = d["size"]
    print(f"\nlive commands after the upserts: {d['live_commands']:,}; commands.db "
          f"{s['db_bytes_checkpointed']:,} bytes checkpointed ({s['db_and_wal_bytes']:,} with "
          f"its WAL) = {s['bytes_per_live_command']:.0f} bytes per live command, "
          f"{s['bytes_per_upsert']:.1f} per upsert; after draining: "
          f"{d['size_after_drain_bytes']:,} bytes (freed pages are reused)")
    ratio = d["upsert"]["ops_per_s"] / put
    p99 = d["drain_100"]["p99_ms"]
    targets = [
        {"target": "upsert >= 0.5x plain put", "value": ratio, "met": ratio >= 0.5},
        {"target": "drain of 100 commands < 5 ms (p99)", "value": p99, "met": p99 < 5.0},
        {"target": "store size follows live commands (< 1 KiB per live command)",
         "value": s["bytes_per_live_command"], "met": s["bytes_per_live_command"] < 1024},
    ]
    for t in targets:
        print(f"{'PASS' if t['met'] else 'FAIL'}  {t['target']}: {t['value']:.4g}")
    return targets


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="enqueue_or_update calls")
    ap.add_argument("--targets", type=int, default=None)
    ap.add_argument("--types", type=int, default=10)
    ap.add_argument("--put-n", type=int, default=None, help="plain puts and enqueues")
    ap.add_argument("--big", type=int, default=200, help="targets drained with 100 each")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.n = args.n or (50_000 if args.quick else 1_000_000)
    args.targets = args.targets or (1_000 if args.quick else 10_000)
    args.put_n = args.put_n or (10_000 if args.quick else 100_000)
    out = args.out or RESULTS / ("command_bench.quick.json" if args.quick else
                                 "command_bench.json")
    print("reproduce:", reproduce_command(__file__, argv))
    env = machine()
    results = run(args)
    targets = report(results, args)
    env["loadavg_at_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": {**env, "reproduce": reproduce_command(__file__, argv),
                        "args": {k: str(v) for k, v in vars(args).items()}},
        "results": results,
        "targets": targets,
    }, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out, REPO)}")
    return 0 if all(t["met"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
