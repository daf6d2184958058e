"""durableq.Endpoint against a real RabbitMQ broker: tasks in, results out, one endpoint per
id, a broker killed and restarted mid-run (every result published, counted by id), and a
broker that comes back without the results queue it had just declared."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import durableq

from .conftest import TIMEOUT
from .servers import RabbitMQServer

FORK = multiprocessing.get_context("fork")
#: A connection the broker drops (killed) can leave pika's ioloop wake-up socketpair to the
#: garbage collector, which closes it with a ResourceWarning: pika's, not a leak of ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
_ids = itertools.count()


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.05)  # the work itself: keeps tasks running across the broker restart
    return x * x


def boom(x: int) -> int:
    raise ValueError(f"no {x}")


@pytest.fixture(autouse=True)
def _quiet_pika() -> Iterator[None]:
    logger = logging.getLogger("pika")  # see tests/test_rabbitmq_store.py
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def _publish(url: str, endpoint_id: str, tasks: list[dict[str, Any]]) -> None:
    import pika

    con = pika.BlockingConnection(pika.URLParameters(url))
    channel = con.channel()
    channel.confirm_delivery()
    channel.queue_declare(f"{endpoint_id}.tasks", durable=True)
    for task in tasks:
        channel.basic_publish("", f"{endpoint_id}.tasks", json.dumps(task).encode(),
                              pika.BasicProperties(delivery_mode=2), mandatory=True)
    con.close()


def _collect(url: str, endpoint_id: str, wanted: set[str], deadline: float,
             results: dict[str, Any]) -> None:
    """Read results until every id in ``wanted`` has one (reconnecting across restarts)."""
    import pika

    while not wanted <= results.keys() and time.monotonic() < deadline:
        try:
            con = pika.BlockingConnection(pika.URLParameters(url))
            channel = con.channel()
            channel.queue_declare(f"{endpoint_id}.results", durable=True)
            for method, _, body in channel.consume(f"{endpoint_id}.results",
                                                   inactivity_timeout=0.5):
                if method is not None:
                    message = json.loads(body)
                    results[message["task_id"]] = message
                    channel.basic_ack(method.delivery_tag)
                if wanted <= results.keys() or time.monotonic() > deadline:
                    break
            con.close()
        except pika.exceptions.AMQPError:
            time.sleep(0.2)  # the broker is restarting: connect again


def _wait_for_messages(url: str, queue: str, count: int) -> None:
    """Return once ``queue`` holds ``count`` messages (a bounded wait on the broker's count)."""
    import pika

    con = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = con.channel()
        deadline = time.monotonic() + TIMEOUT
        while channel.queue_declare(queue, durable=True, passive=True).method.message_count < count:
            assert time.monotonic() < deadline, f"{queue} never held {count} messages"
            con.sleep(0.02)
    finally:
        con.close()


def test_tasks_run_on_the_executor_and_results_are_published(
    rabbitmq_server: RabbitMQServer, tmp_path: Path
) -> None:
    endpoint_id = f"ep-{next(_ids)}"
    ex = durableq.Executor(2, mp_context=FORK, path=tmp_path / "ex")
    endpoint = durableq.Endpoint(endpoint_id, broker=rabbitmq_server.url, executor=ex,
                                 tasks={"square": square, "boom": boom})
    try:
        with pytest.raises(durableq.EndpointBusy):
            durableq.Endpoint(endpoint_id, broker=rabbitmq_server.url, executor=ex,
                              tasks={"square": square})
        tasks = [{"task_id": f"t{i}", "task": "square", "args": [i]} for i in range(5)]
        tasks += [{"task_id": "bad", "task": "boom", "args": [7]},
                  {"task_id": "unknown", "task": "nope"}]
        _publish(rabbitmq_server.url, endpoint_id, tasks)
        results: dict[str, Any] = {}
        _collect(rabbitmq_server.url, endpoint_id, {t["task_id"] for t in tasks},
                 time.monotonic() + TIMEOUT, results)
        assert {f"t{i}": results[f"t{i}"]["result"] for i in range(5)} == {
            f"t{i}": i * i for i in range(5)}
        assert results["bad"]["error"] == {"type": "ValueError", "message": "no 7"}
        assert results["unknown"]["ok"] is False
        assert "nope" in results["unknown"]["error"]["message"]
    finally:
        endpoint.close(TIMEOUT)
        ex.shutdown()


def test_every_result_is_published_across_a_broker_restart(
    rabbitmq_server: RabbitMQServer, tmp_path: Path
) -> None:
    n = 40
    endpoint_id = f"ep-{next(_ids)}"
    ex = durableq.Executor(2, mp_context=FORK, path=tmp_path / "ex")
    endpoint = durableq.Endpoint(endpoint_id, broker=rabbitmq_server.url, executor=ex,
                                 tasks={"square": slow_square}, prefetch=6)
    try:
        tasks = [{"task_id": f"t{i}", "task": "square", "args": [i]} for i in range(n)]
        _publish(rabbitmq_server.url, endpoint_id, tasks)
        results: dict[str, Any] = {}
        wanted = {t["task_id"] for t in tasks}
        _collect(rabbitmq_server.url, endpoint_id, {"t0", "t1", "t2"},
                 time.monotonic() + TIMEOUT, results)
        # Killed once every task is committed locally: a broker killed this soon may forget
        # the young tasks queue with what it still held, a loss on the producer's side.
        deadline = time.monotonic() + TIMEOUT
        while ex.stats()["put_total"] < n:
            assert time.monotonic() < deadline, "the endpoint never took every task"
            time.sleep(0.01)
        rabbitmq_server.kill()
        assert endpoint.fault.wait(TIMEOUT), "the endpoint must notice the lost broker"
        rabbitmq_server.start()
        assert endpoint.connected.wait(TIMEOUT)
        _collect(rabbitmq_server.url, endpoint_id, wanted, time.monotonic() + TIMEOUT, results)
        assert set(results) == wanted, f"lost: {sorted(wanted - set(results))}"
        assert all(results[f"t{i}"]["result"] == i * i for i in range(n))
        assert not endpoint.fault.is_set()
    finally:
        endpoint.close(TIMEOUT)
        ex.shutdown()


def test_results_confirmed_into_a_queue_the_broker_forgot_are_published_again(
    rabbitmq_server: RabbitMQServer, tmp_path: Path
) -> None:
    """A broker killed moments after declaring ``<id>.results`` can restart without that queue
    and the confirmed results in it (RabbitMQ 3.10: about 1 kill in 8 within 0.4 s): results
    confirmed on a connection younger than ``settle`` are published again after a reconnect.
    The forgetting is forced: delete the results queue, then the tasks queue, which cancels
    the endpoint's consumer so that it reconnects."""
    import pika

    url, endpoint_id = rabbitmq_server.url, f"ep-{next(_ids)}"
    ex = durableq.Executor(1, mp_context=FORK, path=tmp_path / "ex")
    with pytest.raises(ValueError, match="settle"):
        durableq.Endpoint(endpoint_id, broker=url, executor=ex, tasks={}, settle=-1)
    endpoint = durableq.Endpoint(endpoint_id, broker=url, executor=ex,
                                 tasks={"square": square}, settle=TIMEOUT)
    try:
        tasks = [{"task_id": f"t{i}", "task": "square", "args": [i]} for i in range(3)]
        _publish(url, endpoint_id, tasks)
        _wait_for_messages(url, f"{endpoint_id}.results", len(tasks))  # all three confirmed
        con = pika.BlockingConnection(pika.URLParameters(url))
        channel = con.channel()
        channel.queue_delete(f"{endpoint_id}.results")  # what the restarted broker forgot
        channel.queue_delete(f"{endpoint_id}.tasks")  # the endpoint reconnects
        con.close()
        results: dict[str, Any] = {}
        _collect(url, endpoint_id, {"t0", "t1", "t2"}, time.monotonic() + TIMEOUT, results)
        assert {k: v["result"] for k, v in results.items()} == {"t0": 0, "t1": 1, "t2": 4}
    finally:
        endpoint.close(TIMEOUT)
        ex.shutdown()
