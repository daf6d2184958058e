"""RabbitMQStore against a real RabbitMQ broker: both store contracts, then queues across
processes and a broker killed mid-run."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import CommandStore, RabbitMQStore, Store

from . import server_store_cases
from .conftest import TIMEOUT
from .server_store_cases import ServerCases
from .servers import RabbitMQServer
from .test_command_store_contract import CommandStoreContract
from .test_store_contract import StoreContract

FORK = multiprocessing.get_context("fork")
#: A connection the broker drops (killed) can leave pika's ioloop wake-up socketpair to the
#: garbage collector, which closes it with a ResourceWarning: pika's, not a leak of ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(autouse=True)
def _quiet_pika() -> Iterator[None]:
    """pika logs every refused reconnect at ERROR with the exception, whose frames would
    keep the test's queue alive in the captured records past the leak check."""
    logger = logging.getLogger("pika")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture
def rabbitmq_url(rabbitmq_server: RabbitMQServer) -> str:
    return rabbitmq_server.url


def fresh(url: str, **options: Any) -> RabbitMQStore:
    return server_store_cases.fresh(RabbitMQStore, url, **options)  # type: ignore[no-any-return]


class TestRabbitMQStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, rabbitmq_url: str) -> None:
        self.url = rabbitmq_url

    def make_store(self, tmp_path: Path) -> Store:
        return fresh(self.url)


class TestRabbitMQCommandStore(CommandStoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, rabbitmq_url: str) -> None:
        self.url = rabbitmq_url

    def make_store(self, tmp_path: Path) -> CommandStore:
        return fresh(self.url)


def test_missing_pika_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from durableq import ConfigurationError

    monkeypatch.setitem(sys.modules, "pika", None)
    with pytest.raises(ConfigurationError, match=r'pip install "durableq\[rabbitmq\]"'):
        RabbitMQStore("amqp://127.0.0.1:1/x")




class TestRabbitMQQueues(ServerCases):
    """Queues, peers, a server down or killed mid-run: the cases every server store passes."""

    store_class = RabbitMQStore

    @pytest.fixture
    def server(self, rabbitmq_server: RabbitMQServer) -> RabbitMQServer:
        return rabbitmq_server


def _killed_owner(url: str, name: str, conn: Any) -> None:
    durableq.Queue(store=RabbitMQStore(url, name=name), exclusive=True, ctx=FORK)
    conn.send("owning")
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_exclusive_owners_lock_is_gone_with_its_connection(rabbitmq_url: str) -> None:
    name = fresh(rabbitmq_url).name
    here, there = FORK.Pipe()
    owner = FORK.Process(target=_killed_owner, args=(rabbitmq_url, name, there))
    owner.start()
    assert here.recv() == "owning"
    owner.join(TIMEOUT)
    assert owner.exitcode == -signal.SIGKILL
    q = durableq.Queue(store=RabbitMQStore(rabbitmq_url, name=name), exclusive=True,
                       wait_for_owner=True, ctx=FORK)
    q.close()


def test_a_quiet_put_is_confirmed_without_following_and_read_by_the_next_lease(
    rabbitmq_url: str,
) -> None:
    s = fresh(rabbitmq_url)
    s.put_quiet([b"a", b"b"])
    assert s._log._follower is None  # a process that only produces does not follow the log
    s.put_quiet([b"c"])
    assert [x.payload for x in s.lease("me", 5, now=1e12, ttl=30)] == [b"a", b"b", b"c"]
    s.put_quiet([b"d"], priority=durableq.Priority.HIGH)
    assert s.has_ready(1e12) and s.counts().put_total == 4
    s.close()


def test_appends_of_concurrent_threads_share_one_message_and_confirm(rabbitmq_url: str) -> None:
    import threading
    import time

    s = fresh(rabbitmq_url)
    log, publish = s._log, s._log._publish
    bodies: list[bytes] = []
    release = threading.Event()

    def held_publish(body: bytes, what: str) -> None:
        bodies.append(body)
        if len(bodies) == 1:
            release.wait(TIMEOUT)  # the first group stays in flight while three more queue
        publish(body, what)

    log._publish = held_publish  # type: ignore[method-assign]
    threads = [threading.Thread(target=s.put_quiet, args=([b"%d" % i],)) for i in range(4)]
    threads[0].start()
    deadline = time.monotonic() + TIMEOUT
    while not bodies and time.monotonic() < deadline:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    while len(log._appends) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(TIMEOUT)
    assert len(bodies) == 2  # the first put alone, then the other three together
    assert sorted(x.payload for x in s.lease("me", 9, now=1e12, ttl=30)) == [
        b"0", b"1", b"2", b"3"]
    s.close()


def test_a_failed_group_commit_raises_store_error_in_every_thread_of_the_group(
    rabbitmq_url: str,
) -> None:
    import threading
    import time

    from durableq import StoreError

    s = fresh(rabbitmq_url)
    log, publish = s._log, s._log._publish
    calls: list[bytes] = []
    release = threading.Event()

    def failing_publish(body: bytes, what: str) -> None:
        calls.append(body)
        if len(calls) == 1:
            release.wait(TIMEOUT)
            return publish(body, what)
        raise StoreError("broker gone")

    log._publish = failing_publish  # type: ignore[method-assign]
    raised: list[BaseException] = []

    def put(i: int) -> None:
        try:
            s.put_quiet([b"%d" % i])
        except StoreError as exc:
            raised.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(3)]
    threads[0].start()
    deadline = time.monotonic() + TIMEOUT
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    while len(log._appends) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(TIMEOUT)
    assert len(calls) == 2 and len(raised) == 2  # the second group failed as one
    assert all("broker gone" in str(e) for e in raised)
    s.close()


def test_a_snapshot_too_large_to_publish_is_dropped_and_tried_half_as_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from durableq.store import _rabbitmq_snapshot as snap
    from durableq.store._rabbitmq_events import Replica

    monkeypatch.setattr(snap, "SNAPSHOT_MAX_BYTES", 10)
    snapshots = snap.Snapshots(None, "q")  # type: ignore[arg-type]
    assert snapshots.due(snap.SNAPSHOT_EVERY)
    snapshots.take(Replica(), snap.SNAPSHOT_EVERY)
    assert snapshots._thread is None  # nothing published
    assert not snapshots.due(2 * snap.SNAPSHOT_EVERY) and snapshots.due(3 * snap.SNAPSHOT_EVERY)


def test_a_reopen_restores_the_newest_snapshot_and_replays_only_the_tail(
    rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from durableq import Fault, Retention, State
    from durableq.store import _rabbitmq_snapshot

    monkeypatch.setattr(_rabbitmq_snapshot, "SNAPSHOT_EVERY", 6)
    first = fresh(rabbitmq_url)
    first.retention = Retention(count=50)
    first.put_many([b"a", b"b", b"c", b"d"])
    first.put_many([b"later"], due=2e12, expires=3e12)
    first.put_many([b"bumped"], priority=durableq.Priority.LOW, bump=1.0)
    a, _ = first.lease("me", 2, now=1e12, ttl=30)
    first.ack([a.token], results=[b"done"])
    first.record_fault(Fault("kind", 1.0, "detail"))
    first.command_put("dev", b"hold", command_type=None, expires_at=None, hold=True, now=1.0)
    first.command_upsert("dev", "cfg", b"v1", expires_at=None, now=1.0)
    first._snapshots.join(TIMEOUT)
    assert first._snapshots.taken_at >= 6
    first.put_many([b"tail"])  # after the snapshot: replayed from the log
    monkeypatch.setattr(_rabbitmq_snapshot, "SNAPSHOT_EVERY", 10_000)
    again = RabbitMQStore(rabbitmq_url, name=first.name)
    states = list(State)
    assert again.counts().put_total == 7
    assert again._snapshots.taken_at == first._snapshots.taken_at  # restored, not replayed
    for store in (first, again):
        store.tick(2.0)  # the bump is due: "bumped" goes HIGH
    assert again.records(states) == first.records(states)
    assert again.results(99) == first.results(99) == {a.token.id: b"done"}
    assert again.faults() == first.faults() and again.retention == first.retention
    assert again.command_pending("dev", now=2.0) == first.command_pending("dev", now=2.0)
    assert again.command_counts(2.0) == first.command_counts(2.0)
    # b's lease ran out: it comes back, after the bumped one and before c, d and tail.
    payloads = [x.payload for x in again.lease("you", 9, now=1e12 + 60, ttl=30)]
    assert payloads == [b"bumped", b"b", b"c", b"d", b"tail"]
    first.close()
    again.close()


def test_a_new_process_rebuilds_the_state_from_the_log(rabbitmq_url: str) -> None:
    first = fresh(rabbitmq_url)
    first.put_many([b"a", b"b", b"c"])
    (leased,) = first.lease("me", 1, now=1e12, ttl=30)
    first.ack([leased.token], results=[b"done"])
    first.command_put("dev", b"hold", command_type=None, expires_at=None, hold=True, now=1.0)
    first.close()
    again = RabbitMQStore(rabbitmq_url, name=first.name)
    counts = again.counts()
    assert (counts.ready, counts.done, counts.put_total, counts.acked_total) == (2, 1, 3, 1)
    assert again.results(10) == {leased.token.id: b"done"}
    assert [r.payload for r in again.command_pending("dev", now=2.0, held_only=True)] == [b"hold"]
    again.close()
