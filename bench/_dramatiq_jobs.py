"""Dramatiq's side of bench/rabbitmq_bench.py: the actor's function lives in an importable
module, as Dramatiq's workers expect. It runs in the benchmark's one worker process."""

from __future__ import annotations

import os
import time
from typing import Any

seen: list[int] = []  # latency of each message, ns
out: Any = None  # where the last message sends the results
expected = 0


def job(i: int, stamp: int) -> None:
    seen.append(time.perf_counter_ns() - stamp)
    if len(seen) == expected:  # the last one: report, then end the worker process
        out.send((time.perf_counter_ns(), seen))
        os._exit(0)
