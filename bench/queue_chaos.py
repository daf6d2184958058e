"""Chaos for ``durableq.Queue``: its owner and consumers SIGKILLed again and again while
producers put and another program repairs dead letters; then every message counted by id.

Reproduce (from the repository root; about 15 s on 2 CPUs)::

    .venv/bin/python bench/queue_chaos.py
    .venv/bin/python bench/queue_chaos.py --seed 7 --owner-kills 8 --start-method spawn

What runs, each process appending what it did to its own log (one ``write`` per line on an
``O_APPEND`` descriptor, so a SIGKILL never loses a line already written):

- **Owners.** The driver starts an owner process, which opens the queue (waiting for the
  dead one's lock), and SIGKILLs it 0.5-1.5 s later, ``--owner-kills`` times; then a last
  owner serves until every message is accounted for.
- **Producers,** two, started by the first owner and living on through every owner kill:
  a put appends to the producer's own put log, which needs no owner. Each message is an
  id, put alone or in a ``put_many`` of 10 or 100, some with a priority, a delay or
  ``front=True``, and logged once ``put`` returned; ``--rate`` spreads them over the run.
- **Consumers,** two per owner, ``ack="manual"``: each logs an id, then acks it; a message
  whose id is a multiple of 7 is nacked dead on its first attempt instead. Every owner
  SIGKILLs a random consumer of its own at random moments and starts another.
- **A maintainer,** a separate program looping over ``durableq.maintain(path)``: it revives
  dead messages (``retry_dead``) and purges old dead letters, beside the running owner.

The verdict: every id whose put returned was delivered (logged by a consumer) at least
once, no id was delivered that was never put, and once the last owner is SIGKILLed every
consumer leaves (its ``get`` raises ``OwnerGone``). Deliveries past the first are counted:
at-least-once allows them after a crash. Exit status 1 on a lost or unknown id, a
consumer left waiting, or when the last owner does not get everything within
``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import psutil

import durableq

PRODUCERS = 2
CONSUMERS = 2


def _log(directory: str, name: str) -> int:
    return os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def _produce(q: durableq.Queue, k: int, n: int, rate: float, logs: str) -> None:
    fd = _log(logs, f"put-{k}")
    rnd = random.Random(k)
    start = time.monotonic()
    i = 0
    while i < n:
        options: dict[str, Any] = {}
        roll = rnd.random()
        if roll < 0.2:
            options["priority"] = rnd.choice(["high", "medium", "low"])
        elif roll < 0.3:
            options["delay"] = rnd.uniform(0.01, 0.3)
        elif roll < 0.35:
            options["front"] = True
        ids = [k * 1_000_000 + j for j in range(i, min(i + rnd.choice([1, 1, 1, 10, 100]), n))]
        if len(ids) == 1:
            q.put(ids[0], **options)
        else:
            q.put_many(ids, **options)
        os.write(fd, "".join(f"{x}\n" for x in ids).encode())
        i += len(ids)
        time.sleep(max(0.0, start + i / rate - time.monotonic()))  # spread over the run


def _consume(q: durableq.Queue, logs: str) -> None:
    fd = _log(logs, f"got-{os.getpid()}")
    while True:
        try:
            msg = q.get_message(timeout=1.0)
        except queue.Empty:
            continue
        except durableq.OwnerGone:
            return
        if msg.body % 7 == 0 and msg.attempts == 1:
            msg.nack(requeue=False)  # dead: for the maintainer to revive
            continue
        os.write(fd, f"{msg.body}\n".encode())
        msg.ack()


def _maintain(path: str, stop: Any) -> None:
    while not stop.is_set():
        with durableq.maintain(path) as m:
            m.retry_dead()
            m.purge_dead(older_than=3600)
        time.sleep(0.01)


def _own(
    path: str, logs: str, n: int, rate: float, first: bool, seed: int, start_method: str
) -> None:
    ctx = mp.get_context(start_method)
    q = durableq.Queue(path=path, ack="manual", wait_for_owner=True, ctx=ctx)
    if first:
        for k in range(PRODUCERS):
            ctx.Process(target=_produce, args=(q, k, n, rate, logs)).start()
    consumers = [ctx.Process(target=_consume, args=(q, logs)) for _ in range(CONSUMERS)]
    for c in consumers:
        c.start()
    rnd = random.Random(seed)
    while True:
        time.sleep(rnd.uniform(0.05, 0.3))
        if rnd.random() < 0.5:
            i = rnd.randrange(CONSUMERS)
            os.kill(consumers[i].pid or 0, signal.SIGKILL)
            consumers[i].join()
            consumers[i] = ctx.Process(target=_consume, args=(q, logs))
            consumers[i].start()


def _alive(pids: list[int], within: float) -> list[int]:
    """Those of ``pids`` still running (not exited, not a zombie) after ``within`` s."""
    end = time.monotonic() + within
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.1)


def _read(logs: str) -> tuple[set[int], Counter[int]]:
    put: set[int] = set()
    got: Counter[int] = Counter()
    for name in os.listdir(logs):
        with open(os.path.join(logs, name)) as f:
            ids = [int(line) for line in f if line.strip()]
        if name.startswith("put-"):
            put.update(ids)
        else:
            got.update(ids)
    return put, got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1, help="seeds every kill time")
    p.add_argument("--owner-kills", type=int, default=5, help="owner SIGKILLs")
    p.add_argument("--n", type=int, default=4000, help="messages per producer")
    p.add_argument("--rate", type=float, default=800.0,
                   help="messages per second per producer (puts span the owner kills)")
    p.add_argument("--start-method", default="fork", choices=["fork", "spawn", "forkserver"])
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds the last owner may take to deliver everything")
    a = p.parse_args(argv)
    ctx = mp.get_context(a.start_method)
    base = tempfile.mkdtemp(prefix="dq-chaos-")
    path, logs = os.path.join(base, "q"), os.path.join(base, "logs")
    os.makedirs(logs)
    durableq.Queue(path=path).close()  # the maintainer opens an existing queue
    stop = ctx.Event()
    maintainer = ctx.Process(target=_maintain, args=(path, stop))
    maintainer.start()
    rnd = random.Random(a.seed)
    started = time.monotonic()
    for k in range(a.owner_kills + 1):
        owner = ctx.Process(
            target=_own,
            args=(path, logs, a.n, a.rate, k == 0, a.seed * 1000 + k, a.start_method),
        )
        owner.start()
        if k == a.owner_kills:
            break
        time.sleep(rnd.uniform(0.5, 1.5))
        os.kill(owner.pid or 0, signal.SIGKILL)
        owner.join()
    end = time.monotonic() + a.timeout
    while time.monotonic() < end:
        put, got = _read(logs)
        if len(put) == PRODUCERS * a.n and put <= set(got):
            break
        time.sleep(0.5)
    stop.set()
    maintainer.join(30)
    os.kill(owner.pid or 0, signal.SIGKILL)
    owner.join()
    # Every consumer's get() must see its owner die (OwnerGone) and the process exit.
    stuck = _alive([int(n[4:]) for n in os.listdir(logs) if n.startswith("got-")], 10.0)
    for pid in stuck:
        os.kill(pid, signal.SIGKILL)
    put, got = _read(logs)
    lost, unknown = put - set(got), set(got) - put
    twice = sum(1 for count in got.values() if count > 1)
    consumers = sum(1 for name in os.listdir(logs) if name.startswith("got-"))
    print(f"start method {a.start_method}, seed {a.seed}: {a.owner_kills} owner SIGKILLs, "
          f"{consumers} consumer processes (the others SIGKILLed), "
          f"{time.monotonic() - started:.1f} s")
    print(f"  put (put() returned)       {len(put):>7,} of {PRODUCERS * a.n:,}")
    print(f"  delivered                  {len(set(got)):>7,}")
    print(f"  lost                       {len(lost):>7,}  {sorted(lost)[:10]}")
    print(f"  delivered, never put       {len(unknown):>7,}")
    print(f"  delivered more than once   {twice:>7,}  (at-least-once after a crash)")
    print(f"  consumers left waiting     {len(stuck):>7,}  (their owner dead: should be 0)")
    print(f"reproduce: .venv/bin/python bench/queue_chaos.py --seed {a.seed} "
          f"--owner-kills {a.owner_kills} --n {a.n} --rate {a.rate:g} "
          f"--start-method {a.start_method}")
    ok = not lost and not unknown and not stuck and len(put) == PRODUCERS * a.n
    if ok:
        shutil.rmtree(base)
        print("VERDICT: OK")
        return 0
    print(f"VERDICT: FAILED (logs and queue kept in {base})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
