"""Fuzz: hypothesis drives puts, gets, acks and nacks across real SIGKILLs of consumers and
of the owner, and checks the model: nothing confirmed acked comes back, nothing unacked is
lost.

Each example runs "epochs". An epoch is a host process that owns the queue (it constructs
``Queue(path)``) and runs its steps: puts, and consumer processes forked from it that get a
few messages and ack, nack or hold each, then exit cleanly (held ones nacked) or are
SIGKILLed. An epoch ends with the host SIGKILLed, possibly while a consumer holds messages;
the next host reopens the path. A last host drains everything. Every process appends what
it did to one journal (single ``write`` calls on an ``O_APPEND`` descriptor): ``put i``
once ``put`` returned, ``got i`` on delivery, ``acked i`` once ``stats()`` (which applies
the caller's acks before answering) confirmed it.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import tempfile
from pathlib import Path
from typing import Any

import psutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import durableq

from .conftest import TIMEOUT

CTX = multiprocessing.get_context("fork")  # fast: an example forks a dozen processes

Action = str  # "ack", "nack" or "hold"
put_step = st.tuples(st.just("put"), st.integers(1, 5))
consume_step = st.tuples(
    st.just("consume"),
    st.integers(1, 4),
    st.lists(st.sampled_from(["ack", "nack", "hold"]), min_size=1, max_size=4),
    st.sampled_from(["exit", "kill", "kill-before-confirm"]),
)
epoch = st.tuples(
    st.lists(st.one_of(put_step, consume_step), min_size=1, max_size=4),
    st.booleans(),  # kill the owner while a consumer holds messages
)


def log(journal: str, line: str) -> None:
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def consumer(
    q: durableq.Queue, n: int, plan: list[Action], end: str, journal: str, holding: Any
) -> None:
    log(journal, f"pid {os.getpid()}")
    acked, held = [], []
    for k in range(n):
        try:
            msg = q.get_message(timeout=0.2)
        except queue.Empty:
            break
        log(journal, f"got {msg.body}")
        action = plan[k % len(plan)]
        if action == "ack":
            log(journal, f"acking {msg.body}")  # applied or not, if we die before confirming
            msg.ack()
            acked.append(msg.body)
        elif action == "nack":
            msg.nack()
        else:
            held.append(msg)
    if holding is not None:  # the owner is about to be killed under us
        holding.set()
        try:
            while True:
                q.stats()  # until the owner's death closes our connection
        except durableq.OwnerGone:
            return
    if end == "kill-before-confirm":
        os.kill(os.getpid(), signal.SIGKILL)
    q.stats()  # our acks are applied once this returns
    for i in acked:
        log(journal, f"acked {i}")
    if end == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    for msg in held:
        msg.nack()
    q.close()


def host(path: str, steps: list[Any], kill_holding: bool, next_id: int, journal: str) -> None:
    q = durableq.Queue(path=path, ack="manual", wait_for_owner=True)
    for step in steps:
        if step[0] == "put":
            for _ in range(step[1]):
                q.put(next_id)
                log(journal, f"put {next_id}")
                next_id += 1
        else:
            _, n, plan, end = step
            p = CTX.Process(target=consumer, args=(q, n, plan, end, journal, None))
            p.start()
            p.join(TIMEOUT)
    if kill_holding:
        holding = CTX.Event()
        p = CTX.Process(target=consumer, args=(q, 3, ["hold"], "exit", journal, holding))
        p.start()
        holding.wait(TIMEOUT)
    os.kill(os.getpid(), signal.SIGKILL)


def drain(path: str, journal: str) -> None:
    q = durableq.Queue(path=path, ack="manual", wait_for_owner=True)
    acked = []
    while True:
        try:
            msg = q.get_message(timeout=0.3)
        except queue.Empty:
            stats = q.stats()
            if not stats["ready"] and not stats["in_flight"]:
                break
            continue
        log(journal, f"got {msg.body}")
        msg.ack()
        acked.append(msg.body)
    q.stats()
    for i in acked:
        log(journal, f"acked {i}")


def run(path: str, journal: str, target: Any, *args: Any) -> None:
    p = CTX.Process(target=target, args=(path, *args, journal))
    p.start()
    p.join(TIMEOUT)
    assert p.exitcode is not None, "a host hung"


def check(journal: str) -> None:
    put: set[int] = set()
    acked: set[int] = set()
    acking: set[int] = set()  # acks sent but never confirmed may or may not have applied
    pids = []
    with open(journal) as f:
        for line in f:
            kind, value = line.split()
            if kind == "pid":
                pids.append(int(value))
                continue
            i = int(value)
            if kind == "put":
                put.add(i)
            elif kind == "got":
                assert i not in acked, f"message {i} came back after its ack was confirmed"
            elif kind == "acking":
                acking.add(i)
            else:
                acked.add(i)
    lost = put - acked - acking
    assert not lost and acked <= put, f"lost: {sorted(lost)}; never put: {sorted(acked - put)}"
    # Consumers orphaned by a killed owner exit on their own once they see it gone.
    procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
    _, alive = psutil.wait_procs(procs, timeout=TIMEOUT)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure is reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(epochs=st.lists(epoch, min_size=1, max_size=2))
def test_nothing_acked_comes_back_and_nothing_unacked_is_lost(
    tmp_path: Path, epochs: list[tuple[list[Any], bool]]
) -> None:
    where = Path(tempfile.mkdtemp(dir=tmp_path))  # one directory per example
    path, journal = str(where / "q"), str(where / "journal")
    next_id = 0
    for steps, kill_holding in epochs:
        run(path, journal, host, steps, kill_holding, next_id)
        next_id += sum(step[1] for step in steps if step[0] == "put")
    run(path, journal, drain)
    check(journal)
