"""durableq: multiprocessing work that survives SIGKILL.

``durableq.Queue`` is a drop-in ``multiprocessing.Queue`` whose every put is committed
before it returns and whose messages stay in flight until acked, so whatever a dead
process held is delivered again.
"""

from __future__ import annotations

from ._clock import Clock, ManualClock, SystemClock
from ._commands import CommandQueue, PendingCommand
from ._endpoint import Endpoint
from ._errors import (
    CommandNotFound,
    CommandStateError,
    ConfigurationError,
    DurableQError,
    EndpointBusy,
    InitializerFailed,
    OwnerGone,
    QueueLocked,
    QueueNotFound,
    StoreCorrupt,
    StoreError,
    StoreTimeout,
    TaskAbandoned,
    TaskExpired,
    TaskRefused,
    TaskTimeout,
    UnsafePath,
    WorkerCrashed,
)
from ._executor import Executor, TaskFuture, TaskOptions
from ._inspect import Inspector, inspect
from ._lazy import Lazy, Sample, Sampler
from ._maintain import Maintainer, maintain
from ._message import Message
from ._policy import Retention, RetryPolicy
from ._pool import Pool
from ._queue import JoinableQueue, Queue
from ._records import Counts, Failure, Fault, Leased, LeaseToken, Priority, Record, State
from ._report import ErrorGroup
from ._serializer import Serializer
from ._service import Submitter, WorkerService
from .store import (
    CommandStore,
    DiskcacheStore,
    MemoryStore,
    PostgresStore,
    RabbitMQStore,
    RedisStore,
    Store,
    open_store,
)
from .store._salvage import Salvaged, salvage

__version__ = "0.1.0.dev0"

__all__ = [
    "Clock",
    "CommandNotFound",
    "CommandQueue",
    "CommandStateError",
    "CommandStore",
    "ConfigurationError",
    "Counts",
    "DiskcacheStore",
    "DurableQError",
    "Endpoint",
    "EndpointBusy",
    "ErrorGroup",
    "Executor",
    "Failure",
    "Fault",
    "InitializerFailed",
    "Inspector",
    "JoinableQueue",
    "Lazy",
    "LeaseToken",
    "Leased",
    "Maintainer",
    "ManualClock",
    "MemoryStore",
    "Message",
    "OwnerGone",
    "PendingCommand",
    "Pool",
    "PostgresStore",
    "Priority",
    "Queue",
    "QueueLocked",
    "QueueNotFound",
    "RabbitMQStore",
    "Record",
    "RedisStore",
    "Retention",
    "RetryPolicy",
    "Salvaged",
    "Sample",
    "Sampler",
    "Serializer",
    "State",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreTimeout",
    "Submitter",
    "SystemClock",
    "TaskAbandoned",
    "TaskExpired",
    "TaskFuture",
    "TaskOptions",
    "TaskRefused",
    "TaskTimeout",
    "UnsafePath",
    "WorkerCrashed",
    "WorkerService",
    "__version__",
    "inspect",
    "maintain",
    "open_store",
    "salvage",
]
