"""Crash-recovery demo: SIGKILL consumers, then the queue's owner, and lose nothing.

Phase 1, the crash. This script starts an *owner* process that creates
``durableq.Queue(path=...)`` and passes it to 2 producers and 3 consumers (its children),
as you would pass a ``multiprocessing.Queue``. Producers log each id once ``put()`` has
returned; consumers log each id as soon as ``get()`` returns it, then work a little. The
script SIGKILLs one or two consumers (the owner replaces them), then the owner itself,
while producers still put and consumers still consume.

Phase 2, the recovery. A new process reopens the same path and drains it: every message
put and not acked comes back, whoever held it when the SIGKILLs landed.

The tally reads the logs: every id whose ``put()`` returned must have been delivered (LOST
must be 0). Some ids arrive twice: with ``ack="auto"`` an item is acked when its consumer
asks for the next one, so what a killed process was holding is delivered again. That is
at-least-once delivery.

    python examples/crash_recovery_demo.py [--messages N] [--seed S] [--dir D]

Exit status: 0 if nothing was lost, 1 if something was, 2 if the demo itself failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil

import durableq

PRODUCERS, CONSUMERS = 2, 3
CTX = mp.get_context("spawn")  # spawn: the owner runs a thread, so it should not fork()
T0 = time.monotonic()


class Board:
    """Shared memory without locks (a SIGKILLed process could leave a lock held). Each slot
    has one writer: the owner writes the pids, producer k writes puts[k]."""

    def __init__(self) -> None:
        self.pids = CTX.RawArray("q", PRODUCERS + CONSUMERS)  # producers, then consumers
        self.puts = CTX.RawArray("q", PRODUCERS)


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:5.2f}s] {text}", flush=True)


def open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def log_id(fd: int, msg_id: int) -> None:
    os.write(fd, b"%d\n" % msg_id)  # unbuffered: in the kernel already, safe from SIGKILL


def spawn(target: Callable[..., Any], *args: Any) -> BaseProcess:
    proc = CTX.Process(target=target, args=args)
    proc.start()
    return proc


# -- the owner and its children ---------------------------------------------------------------


def produce(q: durableq.Queue, ids: range, rate: float, log: Path, k: int, board: Board) -> None:
    owner, fd, start = os.getppid(), open_log(log), time.monotonic()
    for n, msg_id in enumerate(ids):
        if os.getppid() != owner:
            return  # the owner was killed (put() would still commit: the store is shared)
        time.sleep(max(0.0, start + n / rate - time.monotonic()))  # pacing only
        try:
            q.put({"id": msg_id})  # returns once the message is committed
        except durableq.OwnerGone:
            return
        log_id(fd, msg_id)  # only now does the id count as put
        board.puts[k] += 1


def consume(q: durableq.Queue, logdir: Path, work: float, until_empty: bool = False) -> int:
    parent, fd, got = os.getppid(), open_log(logdir / f"consumer-{os.getpid()}.log"), 0
    while True:
        try:
            item = q.get(timeout=2.0)  # ack="auto": this also acks the previous item
        except queue.Empty:
            if until_empty or os.getppid() != parent:
                return got
            continue
        except durableq.OwnerGone:
            return got
        log_id(fd, item["id"])
        got += 1
        end = time.perf_counter() + work
        while time.perf_counter() < end:
            pass  # the "work"


def run_owner(qdir: str, logdir: Path, n: int, rate: float, work: float, board: Board) -> None:
    q = durableq.Queue(path=qdir, ctx=CTX)  # this process owns the queue from now on
    for k in range(PRODUCERS):
        ids, log = range(k, n, PRODUCERS), logdir / f"producer-{k}.log"
        board.pids[k] = spawn(produce, q, ids, rate / PRODUCERS, log, k, board).pid
    consumers: dict[Any, tuple[int, BaseProcess]] = {}  # sentinel -> (slot, process)
    for slot in range(PRODUCERS, PRODUCERS + CONSUMERS):
        proc = spawn(consume, q, logdir, work)
        board.pids[slot], consumers[proc.sentinel] = proc.pid, (slot, proc)
    while True:  # replace each consumer that dies, until the top level SIGKILLs us too
        for sentinel in wait(list(consumers)):
            slot, dead = consumers.pop(sentinel)
            dead.join()
            proc = spawn(consume, q, logdir, work)
            board.pids[slot], consumers[proc.sentinel] = proc.pid, (slot, proc)


def run_recovery(qdir: str, logdir: Path, work: float) -> None:
    """Phase 2: take the queue over (its owner is dead) and drain it, consuming in-process."""
    q = durableq.Queue(path=qdir, ctx=CTX, wait_for_owner=True)
    drained = consume(q, logdir, work, until_empty=True)
    (logdir / "stats.json").write_text(json.dumps({**q.stats(), "drained": drained}))


# -- the top level: it never owns the queue, so it outlives the owner -----------------------


def wait_until(ready: Callable[[], bool], what: str, owner: BaseProcess) -> None:
    deadline = time.monotonic() + 20
    while not ready():
        if not owner.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} (owner alive: {owner.is_alive()})")
        time.sleep(0.002)


def wait_for_puts(board: Board, count: int, owner: BaseProcess) -> None:
    wait_until(lambda: sum(board.puts) >= count, f"{count} puts", owner)


def kill_consumer(board: Board, slot: int, logdir: Path, owner: BaseProcess) -> None:
    pid, log = board.pids[slot], logdir / f"consumer-{board.pids[slot]}.log"
    wait_until(lambda: log.exists() and log.stat().st_size > 0, f"{pid} to get", owner)
    os.kill(pid, signal.SIGKILL)
    say(f"SIGKILL consumer pid {pid} mid-run ({sum(board.puts)} put so far)")
    wait_until(lambda: board.pids[slot] != pid, "the owner to replace it", owner)
    say(f"   the owner replaced it with consumer pid {board.pids[slot]}")


def crash_phase(args: argparse.Namespace, qdir: str, logdir: Path) -> dict[str, int]:
    rng, n, board = random.Random(args.seed), args.messages, Board()
    owner = spawn(run_owner, qdir, logdir, n, args.rate, args.work_us / 1e6, board)
    say(f"owner pid {owner.pid} creates the queue, starts 2 producers and 3 consumers")
    kills = {"consumer": 0, "owner": 0, "leftover": 0}
    try:
        victims = rng.sample(range(PRODUCERS, PRODUCERS + CONSUMERS), rng.choice((1, 2)))
        marks = sorted(int(rng.uniform(0.1, 0.45) * n) for _ in victims)
        for slot, mark in zip(victims, marks, strict=True):
            wait_for_puts(board, mark, owner)
            kill_consumer(board, slot, logdir, owner)
            kills["consumer"] += 1
        wait_for_puts(board, int(rng.uniform(0.55, 0.85) * n), owner)
        children = [psutil.Process(pid) for pid in board.pids]  # (zombies count too)
        os.kill(owner.pid or 0, signal.SIGKILL)
        kills["owner"] += 1
        say(f"SIGKILL owner pid {owner.pid} mid-run ({sum(board.puts)}/{n} put so far)")
        owner.join()
    except BaseException:  # the demo failed: leave no process behind
        owner.kill()
        stop_all([psutil.Process(p) for p in board.pids if p and psutil.pid_exists(p)])
        raise
    kills["leftover"] = stop_all(children)
    return kills


def is_gone(proc: psutil.Process) -> bool:
    try:  # a zombie has exited: it holds no socket and writes no log
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for ``procs`` to exit; return those still running."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in procs if not is_gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def stop_all(procs: list[psutil.Process]) -> int:
    """Give the owner's orphans 5 s to exit on their own, then SIGKILL them. Returns kills."""
    left = wait_gone(procs, 5.0)
    for p in left:
        try:
            p.kill()  # psutil checks that the pid was not reused meanwhile
        except psutil.NoSuchProcess:
            pass
    if wait_gone(left, 5.0):
        raise RuntimeError("processes survived SIGKILL")
    say(f"{len(procs) - len(left)} orphaned producers/consumers exited, {len(left)} SIGKILLed")
    return len(left)


def read_ids(paths: Iterable[Path]) -> Counter[int]:
    ids: Counter[int] = Counter()
    for path in paths:
        for line in path.read_bytes().split(b"\n")[:-1]:  # skip a line cut by SIGKILL
            ids[int(line)] += 1
    return ids


def tally(logdir: Path, kills: dict[str, int]) -> bool:
    put = set(read_ids(logdir.glob("producer-*.log")))
    got = read_ids(logdir.glob("consumer-*.log"))
    stats = json.loads((logdir / "stats.json").read_text())
    lost, twice = put - set(got), sum(c > 1 for c in got.values())
    left = stats["ready"] + stats["in_flight"]
    rows = [
        ("put (put() returned)", len(put)),
        ("delivered at least once", len(put & set(got))),
        ("  of which by the recovery process", stats["drained"]),
        ("LOST (put, never delivered)", len(lost)),
        ("delivered more than once", twice),
        ("committed, but put() never returned", len(set(got) - put)),
        ("acked (store's acked_total)", stats["acked_total"]),
        ("left in the queue after the drain", left),
        ("SIGKILLs: consumers / owner", f"{kills['consumer']} / {kills['owner']}"),
        ("SIGKILLs: leftovers after the owner", kills["leftover"]),
    ]
    print()
    for label, value in rows:
        print(f"  {label:<38}{value:>8}")
    print()
    if lost or left:
        print(f"VERDICT: FAILED: {len(lost)} lost (e.g. {sorted(lost)[:10]}), {left} left")
        return False
    print(f"VERDICT: OK: all {len(put)} messages whose put() returned were delivered, despite")
    print(f"         {sum(kills.values())} SIGKILLs; {twice} twice, as at-least-once allows")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=random.randrange(10**6))
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    parser.add_argument("--rate", type=float, default=2000.0, help="puts/s, all producers")
    parser.add_argument("--work-us", type=float, default=500.0, help="work per message, µs")
    args = parser.parse_args()
    # The SIGKILLed owner cannot free its multiprocessing semaphores. The resource tracker
    # frees them at exit and warns that they leaked; here that is expected.
    os.environ["PYTHONWARNINGS"] = "ignore:resource_tracker:UserWarning"
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="durableq-demo-"))
    logdir, qdir, ok = workdir / "logs", str(workdir / "queue"), False
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"durableq crash-recovery demo: {args.messages} messages, seed {args.seed}, {workdir}")
    try:
        kills = crash_phase(args, qdir, logdir)
        say("phase 2: a new process reopens the queue and drains it")
        recovery = spawn(run_recovery, qdir, logdir, args.work_us / 1e6)
        recovery.join(timeout=60)
        if recovery.exitcode != 0:
            recovery.kill()
            raise RuntimeError(f"the recovery process failed (exit code {recovery.exitcode})")
        say("the queue is drained")
        ok = tally(logdir, kills)
        return 0 if ok else 1
    except RuntimeError as exc:
        print(f"DEMO FAILED: {exc}")
        return 2
    finally:
        if not ok:
            print(f"(kept {workdir} for inspection)")
        elif not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
