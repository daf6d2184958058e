"""The task functions: every worker host imports them by name (``--import-path``)."""

from __future__ import annotations

import os


def square(x: int) -> tuple[int, int]:
    """``x * x`` and the pid of the worker process that computed it."""
    return x * x, os.getpid()
