"""durableq.CommandQueue: per-target commands, latest intent, confirmation, drain, consume,
and what survives SIGKILL. Crash tests really kill processes and count commands by id."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import CommandNotFound, CommandQueue, CommandStateError, MemoryStore

from .conftest import TIMEOUT

CTX = multiprocessing.get_context("fork")  # crash tests: fork keeps them fast


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(params=["diskcache", "memory"])
def cq(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CommandQueue]:
    q = (CommandQueue(path=tmp_path / "c.q") if request.param == "diskcache"
         else CommandQueue(store=MemoryStore()))
    yield q
    q.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- children (module level, forked) -------------------------------------------------------


def upsert_many(path: str, worker: int, start: Any) -> None:
    cq = CommandQueue(path=path)
    start.wait(TIMEOUT)
    for i in range(150):
        cq.enqueue_or_update("dev", f"type-{i % 3}", {"worker": worker, "i": i})
    cq.close()


def drain_until_empty(path: str, start: Any, out: Any) -> None:
    cq = CommandQueue(path=path)
    start.wait(TIMEOUT)
    got: list[int] = []
    while batch := cq.drain("dev", limit=7):
        got.extend(c.id for c in batch)
    out.send(got)
    cq.close()


def drain_then_hang(path: str, taken: Any) -> None:
    cq = CommandQueue(path=path, lease=3600)
    taken.send([c.id for c in cq.drain("dev", ack=True)])
    signal.pause()  # "sending": killed here


def enqueue_forever(path: str, out: Any) -> None:
    cq = CommandQueue(path=path)
    i = 0
    while True:
        out.send(cq.enqueue("dev", i))
        i += 1


def produce_later(path: str, go: Any) -> None:
    cq = CommandQueue(path=path)
    go.wait(TIMEOUT)
    cq.enqueue("dev", "first")
    cq.enqueue_or_update("dev", "temp", 21)
    held = cq.enqueue_with_confirmation("dev", "fw", b"blob")
    cq.enqueue("other", "not for dev")
    cq.confirm(held)
    cq.close()


def reap(p: Any) -> None:
    p.join(TIMEOUT)
    assert p.exitcode is not None, "child hung"


# -- behaviour ------------------------------------------------------------------------------


def test_the_issue_example(cq: CommandQueue) -> None:
    a = cq.enqueue("dev-42", b"reboot", ttl=3600)
    t = cq.enqueue_or_update("dev-42", "set-temp", {"c": 20}, ttl=600)
    assert cq.enqueue_or_update("dev-42", "set-temp", {"c": 21}, ttl=600) == t
    fw = cq.enqueue_with_confirmation("dev-42", "firmware", b"\x00blob", ttl=86400)
    other = cq.enqueue("dev-42", "spare")
    assert [c.id for c in cq.pending("dev-42")] == [a, t, fw, other]
    assert [c.id for c in cq.pending_confirmations("dev-42")] == [fw]
    cq.cancel(other)
    sent = cq.drain("dev-42")
    assert [(c.id, c.payload) for c in sent] == [(a, b"reboot"), (t, {"c": 21})]
    assert isinstance(sent[0].payload, bytes) and sent[1].command_type == "set-temp"
    cq.confirm(fw)
    (firmware,) = cq.drain("dev-42")
    assert firmware.payload == b"\x00blob" and firmware.confirmed
    assert cq.drain("dev-42") == [] and cq.pending("dev-42") == []
    with pytest.raises(CommandStateError):
        cq.cancel(a)


def test_records_carry_their_fields(tmp_path: Path, clock: FakeClock) -> None:
    cq = CommandQueue(path=tmp_path / "c.q", clock=clock)
    id_ = cq.enqueue("dev", [1, (2, 3)], ttl=10, command_type="cfg")
    (cmd,) = cq.pending("dev")
    assert cmd == durableq.PendingCommand(
        id_, "dev", "cfg", [1, (2, 3)], 1_000.0, 1_010.0, False, False, 0
    )
    assert cmd.token == durableq.LeaseToken(id_, 0)
    cq.close()


def test_expired_commands_are_never_returned(cq: CommandQueue, clock: FakeClock) -> None:
    cq._clock = clock
    cq.enqueue("dev", "short", ttl=5)
    cq.enqueue_with_confirmation("dev", "fw", "held", ttl=5)
    keep = cq.enqueue("dev", "long", ttl=50)
    clock.advance(5)
    assert [c.id for c in cq.pending("dev")] == [keep]
    assert cq.pending_confirmations("dev") == []
    assert cq.counts().expired == 2
    assert [c.id for c in cq.drain("dev")] == [keep]
    assert cq.cleanup() == 2 and cq.cleanup() == 0


def test_confirm_and_cancel_errors(cq: CommandQueue) -> None:
    with pytest.raises(CommandNotFound, match="no command 12345"):
        cq.confirm(12345)
    with pytest.raises(CommandNotFound):
        cq.cancel(12345)
    a = cq.enqueue("dev", 1)
    cq.drain("dev")
    with pytest.raises(CommandStateError, match=r"cannot confirm command .*delivered"):
        cq.confirm(a)
    held = cq.enqueue_with_confirmation("dev", "fw", 2)
    cq.confirm(held)
    cq.drain("dev", ack=True)
    with pytest.raises(CommandStateError, match="being delivered"):
        cq.cancel(held)


def test_ack_mode_redelivers_until_acked(tmp_path: Path, clock: FakeClock) -> None:
    cq = CommandQueue(path=tmp_path / "c.q", lease=10, clock=clock)
    a, b = cq.enqueue("dev", "a"), cq.enqueue("dev", "b")
    first = cq.drain("dev", ack=True)
    assert [c.id for c in first] == [a, b] and cq.drain("dev", ack=True) == []
    assert cq.nack(first[1]) == 1
    assert [(c.id, c.attempt) for c in cq.drain("dev", ack=True)] == [(b, 2)]
    clock.advance(11)  # a's lease ran out; b's second one too
    again = cq.drain("dev", ack=True)
    assert [(c.id, c.attempt) for c in again] == [(a, 2), (b, 3)]
    assert cq.ack(first) == 0, "acks of an earlier delivery are stale"
    assert cq.ack(again) == 2
    clock.advance(60)
    assert cq.drain("dev") == []
    cq.close()


def test_bad_input_is_refused_by_name(cq: CommandQueue) -> None:
    with pytest.raises(ValueError, match="target must not be empty"):
        cq.enqueue("", b"x")
    with pytest.raises(TypeError, match="target must be a str"):
        cq.enqueue(42, b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl must be > 0"):
        cq.enqueue("dev", b"x", ttl=-1)
    with pytest.raises(ValueError, match="ttl must be > 0"):
        cq.enqueue_or_update("dev", "t", b"x", ttl=0)
    with pytest.raises(TypeError, match="ttl must be a number"):
        cq.enqueue("dev", b"x", ttl="60")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="command_type must be a str"):
        cq.enqueue_or_update("dev", None, b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="command id must be an int"):
        cq.confirm("7")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be"):
        cq.drain("dev", limit=0)
    with pytest.raises(TypeError, match="expected PendingCommand"):
        cq.ack([7])  # type: ignore[list-item]
    assert cq.counts() == (0, 0, 0, 0, 0), "nothing was stored"


def test_construction_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"path= .* or store="):
        CommandQueue()
    with pytest.raises(ValueError, match="not both"):
        CommandQueue(path=tmp_path / "q", store=MemoryStore())
    with pytest.raises(TypeError, match="CommandStore"):
        CommandQueue(store=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease"):
        CommandQueue(store=MemoryStore(), lease=0)
    with pytest.raises(TypeError, match="lives in one process"):
        pickle.dumps(CommandQueue(store=MemoryStore()))
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(durableq.UnsafePath):
        CommandQueue(path=shared)
    CommandQueue(path=shared, trusted=True).close()


def test_a_path_queue_pickles_by_path(tmp_path: Path) -> None:
    cq = CommandQueue(path=tmp_path / "c.q", lease=7)
    cq.enqueue("dev", "x")
    clone = pickle.loads(pickle.dumps(cq))
    assert [c.payload for c in clone.drain("dev")] == ["x"]
    assert cq.pending("dev") == []
    clone.close()
    cq.close()


def test_errors_pickle_with_their_fields() -> None:
    for exc in (CommandNotFound(7), CommandStateError(7, "cancel", "it expired")):
        clone = pickle.loads(pickle.dumps(exc))
        assert type(clone) is type(exc) and str(clone) == str(exc)
        assert clone.command_id == 7
    assert isinstance(CommandNotFound(1), LookupError)


def test_a_queue_shared_with_a_queue_directory(tmp_path: Path) -> None:
    path = tmp_path / "jobs.q"
    q = durableq.Queue(path=str(path))
    q.put("message")
    cq = CommandQueue(store=durableq.DiskcacheStore(path))
    cq.enqueue("dev", "command")
    assert q.get(timeout=TIMEOUT) == "message"
    assert [c.payload for c in cq.drain("dev")] == ["command"]
    cq.close()
    q.close()


# -- processes ------------------------------------------------------------------------------


def test_concurrent_upserts_never_leave_two_of_a_type(tmp_path: Path) -> None:
    path = str(tmp_path / "c.q")
    CommandQueue(path=path).close()
    start = CTX.Event()
    procs = [CTX.Process(target=upsert_many, args=(path, w, start)) for w in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        reap(p)
        assert p.exitcode == 0
    cq = CommandQueue(path=path)
    pending = cq.pending("dev")
    assert sorted(c.command_type or "" for c in pending) == ["type-0", "type-1", "type-2"]
    assert all(c.payload["i"] >= 147 for c in pending), "each holds one writer's last intent"
    cq.close()


def test_concurrent_drains_never_share_a_command(tmp_path: Path) -> None:
    path = str(tmp_path / "c.q")
    cq = CommandQueue(path=path)
    put = [cq.enqueue("dev", i) for i in range(300)]
    start = CTX.Event()
    pipes = [CTX.Pipe(duplex=False) for _ in range(3)]
    procs = [CTX.Process(target=drain_until_empty, args=(path, start, w)) for _, w in pipes]
    for p in procs:
        p.start()
    start.set()
    got: list[int] = []
    for (r, _), p in zip(pipes, procs, strict=True):
        assert r.poll(TIMEOUT)
        got.extend(r.recv())
        reap(p)
    assert sorted(got) == put, "every command delivered exactly once"
    cq.close()


def test_sigkill_mid_send_with_ack_redelivers(tmp_path: Path) -> None:
    path = str(tmp_path / "c.q")
    cq = CommandQueue(path=path, lease=3600)
    put = [cq.enqueue("dev", i) for i in range(5)]
    r, w = CTX.Pipe(duplex=False)
    child = CTX.Process(target=drain_then_hang, args=(path, w))
    child.start()
    assert r.poll(TIMEOUT)
    assert r.recv() == put
    assert cq.drain("dev", ack=True) == [], "the live holder keeps its commands"
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    reap(child)
    again = cq.drain("dev", ack=True)
    assert [(c.id, c.attempt) for c in again] == [(i, 2) for i in put]
    assert cq.ack(again) == 5
    cq.close()


def test_sigkill_after_enqueue_returned_loses_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "c.q")
    r, w = CTX.Pipe(duplex=False)
    child = CTX.Process(target=enqueue_forever, args=(path, w))
    child.start()
    returned = []
    while len(returned) < 200:
        assert r.poll(TIMEOUT)
        returned.append(r.recv())
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    reap(child)
    while r.poll(0):
        returned.append(r.recv())
    cq = CommandQueue(path=path)
    stored = {c.id for c in cq.drain("dev")}
    assert set(returned) <= stored, "a command whose enqueue returned was lost"
    cq.close()


def test_consume_gets_another_process_s_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the fallback wait longer than TIMEOUT, only the cross-process wakeup can end it.
    monkeypatch.setattr("durableq._commands.FALLBACK_WAIT", 3 * TIMEOUT)
    path = str(tmp_path / "c.q")
    cq = CommandQueue(path=path)
    go = CTX.Event()
    child = CTX.Process(target=produce_later, args=(path, go))
    child.start()
    got = []
    consumer = cq.consume("dev", timeout=TIMEOUT)
    go.set()
    for cmd in consumer:
        got.append(cmd.payload)
        if len(got) == 3:
            cq.ack(cmd)  # sent: finish it before leaving, or it goes back to the queue
            break
    consumer.close()
    reap(child)
    assert got == ["first", 21, b"blob"]
    assert cq.pending("dev") == []
    assert [c.payload for c in cq.pending("other")] == ["not for dev"]
    cq.close()


def test_consume_returns_the_command_held_when_the_loop_is_left(cq: CommandQueue) -> None:
    a, b, c = (cq.enqueue("dev", x) for x in "abc")
    consumer = cq.consume("dev", timeout=0)
    assert next(consumer).id == a
    assert next(consumer).id == b  # a is acked now
    consumer.close()  # b was held: it goes back, with c
    assert [(x.id, x.attempt) for x in cq.pending("dev")] == [(b, 1), (c, 1)]
    assert [x.id for x in cq.consume("dev", timeout=0)] == [b, c]
    assert cq.pending("dev") == []


def test_consume_times_out_when_idle(cq: CommandQueue) -> None:
    assert list(cq.consume("dev", timeout=0.05)) == []


def test_a_dead_watcher_s_fifo_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "c.q"
    cq = CommandQueue(path=path)
    r, w = CTX.Pipe(duplex=False)
    child = CTX.Process(target=watch_and_die, args=(str(path), w))
    child.start()
    assert r.poll(TIMEOUT) and r.recv() == "watching"
    reap(child)
    wake = path / "command-wake"
    assert len(os.listdir(wake)) == 1
    cq.enqueue("dev", 1)
    assert os.listdir(wake) == [], "a FIFO nobody reads is removed by the next poke"
    cq.close()


def watch_and_die(path: str, out: Any) -> None:
    cq = CommandQueue(path=path)
    cq.store.command_watch("dev")
    out.send("watching")
    os._exit(0)
