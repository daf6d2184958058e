"""durableq: multiprocessing work that survives SIGKILL.

``durableq.Queue`` is a drop-in ``multiprocessing.Queue`` whose every put is committed
before it returns and whose messages stay in flight until acked, so whatever a dead
process held is delivered again.
"""

from __future__ import annotations

from ._commands import CommandQueue, PendingCommand
from ._errors import (
    CommandNotFound,
    CommandStateError,
    ConfigurationError,
    DurableQError,
    InitializerFailed,
    OwnerGone,
    QueueLocked,
    QueueNotFound,
    StoreError,
    StoreTimeout,
    TaskAbandoned,
    TaskTimeout,
    UnsafePath,
    WorkerCrashed,
)
from ._executor import Executor, TaskFuture, TaskOptions
from ._inspect import Inspector, inspect
from ._lazy import Lazy, Sample, Sampler
from ._message import Message
from ._pool import Pool
from ._queue import JoinableQueue, Queue
from ._records import Counts, Fault, Leased, LeaseToken, Priority, State
from ._serializer import Serializer
from .store import CommandStore, DiskcacheStore, MemoryStore, Store

__version__ = "0.1.0.dev0"

__all__ = [
    "CommandNotFound",
    "CommandQueue",
    "CommandStateError",
    "CommandStore",
    "ConfigurationError",
    "Counts",
    "DiskcacheStore",
    "DurableQError",
    "Executor",
    "Fault",
    "InitializerFailed",
    "Inspector",
    "JoinableQueue",
    "Lazy",
    "LeaseToken",
    "Leased",
    "MemoryStore",
    "Message",
    "OwnerGone",
    "PendingCommand",
    "Pool",
    "Priority",
    "Queue",
    "QueueLocked",
    "QueueNotFound",
    "Sample",
    "Sampler",
    "Serializer",
    "State",
    "Store",
    "StoreError",
    "StoreTimeout",
    "TaskAbandoned",
    "TaskFuture",
    "TaskOptions",
    "TaskTimeout",
    "UnsafePath",
    "WorkerCrashed",
    "__version__",
    "inspect",
]
