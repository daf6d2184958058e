"""examples/multi_host: a producer and two workers in separate processes that share nothing
but the broker's URL; every job is done, counted by id."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import TIMEOUT
from .servers import RabbitMQServer

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
