"""examples/multi_host: a producer and two workers in separate processes that share nothing
but the broker's URL; every job is done, counted by id. Then the tasks variant: a
``durableq worker --store`` service runs what ``submit.py`` submits through an Executor."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from .conftest import TIMEOUT
from .servers import RabbitMQServer, RedisServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "multi_host"


def test_producer_and_workers_share_only_the_url(rabbitmq_server: RabbitMQServer) -> None:
    n, name = 60, "multi-host-test"
    args = [rabbitmq_server.url, "--queue", name]
    produced = subprocess.run([sys.executable, str(EXAMPLE / "producer.py"), *args,
                               "--jobs", str(n)], capture_output=True, text=True,
                              timeout=TIMEOUT)
    assert produced.returncode == 0, produced.stderr
    workers = [subprocess.Popen([sys.executable, str(EXAMPLE / "worker.py"), *args,
                                 "--idle", "2"], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=TIMEOUT)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    done = [line.split() for out in outputs for line in out.splitlines()
            if line.startswith("done ")]
    assert sorted({int(d[1]) for d in done}) == list(range(n))
    assert all(int(d[2]) == int(d[1]) ** 2 for d in done)


def test_a_worker_service_runs_what_submit_py_submits(redis_server: RedisServer) -> None:
    n, name = 30, "multi-host-tasks-test"
    service = subprocess.Popen(
        [sys.executable, "-m", "durableq", "worker", "--store", redis_server.url, "--name",
         name, "-n", "2", "--import-path", str(EXAMPLE)], stderr=subprocess.DEVNULL)
    try:
        submitted = subprocess.run(
            [sys.executable, str(EXAMPLE / "submit.py"), redis_server.url, "--queue", name,
             "--tasks", str(n)], capture_output=True, text=True, timeout=TIMEOUT)
        assert submitted.returncode == 0, submitted.stderr
        results = [line.split() for line in submitted.stdout.splitlines()
                   if line.startswith("result ")]
        assert sorted(int(r[1]) for r in results) == list(range(n))
        assert all(int(r[2]) == int(r[1]) ** 2 for r in results)
        service.send_signal(signal.SIGTERM)
        assert service.wait(TIMEOUT) == 0
    finally:
        service.kill()
        service.wait()
