"""RQ's side of bench/server_bench.py: its jobs must live in an importable module (RQ
refuses functions of ``__main__``). They run in the benchmark's one worker process."""

from __future__ import annotations

import os
import time
from typing import Any

seen: list[int] = []  # latency of each job, ns
out: Any = None  # where the last job sends the results


def job(i: int, stamp: int) -> None:
    seen.append(time.perf_counter_ns() - stamp)


def last() -> None:
    """The job after the last message: report, then end the worker (it has no other way
    to stop after a given job than a signal)."""
    out.send((time.perf_counter_ns(), seen))
    os._exit(0)
