"""The exception tree. Every exception pickles with its fields: they cross pipes and get stored."""

from __future__ import annotations

import signal
from concurrent.futures import BrokenExecutor


class DurableQError(Exception):
    """Base of every error durableq raises."""


class StoreError(DurableQError):
    """The store could not complete an operation; nothing was half-written.

    The underlying exception is chained as ``__cause__``.
    """


class StoreCorrupt(StoreError):
    """A queue file is damaged on disk (SQLite: "database disk image is malformed").

    Attributes:
        path: the queue directory.
        files: the damaged file(s).
    """

    def __init__(self, path: str, files: list[str], detail: str) -> None:
        self.path = path
        self.files = list(files)
        self.detail = detail
        super().__init__(
            f"{', '.join(self.files)} is damaged ({detail}); stop the queue's owner and run "
            f"durableq.salvage({path!r}) to rebuild it from every readable record (the "
            "damaged file is kept beside it)"
        )

    def __reduce__(self) -> tuple[type[StoreCorrupt], tuple[str, list[str], str]]:
        return (type(self), (self.path, self.files, self.detail))


class StoreTimeout(StoreError, TimeoutError):
    """The store stayed locked longer than the allowed time."""


class ConfigurationError(DurableQError, ValueError):
    """An option or combination of options that cannot work."""


class UnsafePath(DurableQError, PermissionError):
    """Another user could write to the queue directory (or replace it), and so plant a
    record that runs code when it is read. Pass ``trusted=True`` to open it anyway.

    Attributes:
        path: the directory or file at fault.
        why: what is wrong with it.
        fix: a command or step that makes it safe.
        queue: the queue directory, when ``path`` is one of its parents.
    """

    def __init__(self, path: str, why: str, fix: str, queue: str | None = None) -> None:
        self.path = path
        self.why = why
        self.fix = fix
        self.queue = queue
        where = f"queue {queue} is unsafe: its parent {path}" if queue else f"queue path {path}"
        super().__init__(
            f"{where}: {why}; fix: {fix}, or pass trusted=True if every user who can "
            "write there is trusted (see docs/security.md)"
        )

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[type[UnsafePath], tuple[str, str, str, str | None]]:
        return (type(self), (self.path, self.why, self.fix, self.queue))


class TaskRefused(DurableQError):
    """A task names a function or class from a module not in the executor's
    ``allowed_modules``: it was never unpickled, let alone run.

    Attributes:
        module, name: what the task named.
        allowed: the allow-list.
    """

    def __init__(self, module: str, name: str, allowed: tuple[str, ...]) -> None:
        self.module = module
        self.name = name
        self.allowed = tuple(allowed)
        super().__init__(
            f"{module}.{name} is not in allowed_modules {list(self.allowed)}; add its module "
            "to the list if the task is yours"
        )

    def __reduce__(self) -> tuple[type[TaskRefused], tuple[str, str, tuple[str, ...]]]:
        return (type(self), (self.module, self.name, self.allowed))


class QueueLocked(DurableQError):
    """Another live process owns the queue at ``path``.

    Attributes:
        path: the queue directory.
        pid: the owner's process id, when known.
    """

    def __init__(self, path: str, pid: int | None = None) -> None:
        self.path = path
        self.pid = pid
        owner = f"process {pid}" if pid else "another process"
        super().__init__(
            f"queue {path} is owned by {owner}; pass wait_for_owner=True to take over "
            "when it exits, or share the Queue object with that process's children"
        )

    def __reduce__(self) -> tuple[type[QueueLocked], tuple[str, int | None]]:
        return (type(self), (self.path, self.pid))


class EndpointBusy(DurableQError):
    """Another live ``Endpoint`` consumes ``endpoint_id``'s tasks (one at a time)."""

    def __init__(self, endpoint_id: str) -> None:
        self.endpoint_id = endpoint_id
        super().__init__(
            f"endpoint {endpoint_id!r} is served by another process (the broker refused a "
            f"second exclusive consumer of {endpoint_id}.tasks); stop that one first"
        )

    def __reduce__(self) -> tuple[type[EndpointBusy], tuple[str]]:
        return (type(self), (self.endpoint_id,))


class OwnerGone(DurableQError, ConnectionError):
    """The process owning the queue died or shut it down; nothing put is lost.

    Reopen the queue with ``durableq.Queue(path=...)`` to take ownership and get
    every unacked message again.
    """

    def __init__(self, path: str, pid: int | None = None) -> None:
        self.path = path
        self.pid = pid
        super().__init__(
            f"the owner of queue {path} (pid {pid}) is gone; reopen it with "
            f"durableq.Queue(path={path!r}) to take over: unacked messages are redelivered"
        )

    def __reduce__(self) -> tuple[type[OwnerGone], tuple[str, int | None]]:
        return (type(self), (self.path, self.pid))


class QueueNotFound(DurableQError, FileNotFoundError):
    """``path`` is missing or is not a durableq queue directory."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"{path} is not a durableq queue: {why}")

    def __reduce__(self) -> tuple[type[QueueNotFound], tuple[str, str]]:
        return (type(self), (self.path, self.why))


class WorkerCrashed(DurableQError):
    """A task's worker died on every one of its ``attempts`` (a poison task).

    Attributes:
        task_id: the task.
        attempts: how many times it was tried.
        exitcode: the last worker's exit code (negative: killed by that signal).
    """

    def __init__(self, task_id: int, attempts: int, exitcode: int | None) -> None:
        self.task_id = task_id
        self.attempts = attempts
        self.exitcode = exitcode
        super().__init__(
            f"task {task_id}: its worker died on all {attempts} attempts "
            f"(last: {describe_exit(exitcode)})"
        )

    def __reduce__(self) -> tuple[type[WorkerCrashed], tuple[int, int, int | None]]:
        return (type(self), (self.task_id, self.attempts, self.exitcode))


class TaskTimeout(DurableQError, TimeoutError):
    """A task ran past its ``timeout`` on every attempt; its workers were killed."""

    def __init__(self, task_id: int, timeout: float, attempts: int) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.attempts = attempts
        super().__init__(
            f"task {task_id} ran longer than its timeout of {timeout:g} s "
            f"on all {attempts} attempts"
        )

    def __reduce__(self) -> tuple[type[TaskTimeout], tuple[int, float, int]]:
        return (type(self), (self.task_id, self.timeout, self.attempts))


class TaskExpired(DurableQError):
    """A task was not started before its ``ttl`` / ``expires_at``; it never ran."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id} expired before it could start; it did not run")

    def __reduce__(self) -> tuple[type[TaskExpired], tuple[int]]:
        return (type(self), (self.task_id,))


class TaskAbandoned(DurableQError):
    """The executor stopped before this task ran to the end (``kill_workers()``, a task
    scheduled past shutdown, a worker lost while shutting down with ``cancel_futures``).

    With a ``path`` the task stays stored: the next ``Executor`` opened there runs it.
    """


class InitializerFailed(DurableQError, BrokenExecutor):
    """The executor's ``initializer`` raised in a worker: no task can run.

    Unfinished tasks stay in the store; an executor opened on the same path with a
    working initializer runs them.
    """


class CommandNotFound(DurableQError, LookupError):
    """No command with this id was ever enqueued in this command queue."""

    def __init__(self, command_id: int) -> None:
        self.command_id = command_id
        super().__init__(f"no command {command_id} in this command queue")

    def __reduce__(self) -> tuple[type[CommandNotFound], tuple[int]]:
        return (type(self), (self.command_id,))


class CommandStateError(DurableQError):
    """The command exists (or existed) but its state forbids the operation.

    Attributes:
        command_id: the command.
        why: its state, e.g. ``"delivered, cancelled or cleaned up after expiring"``.
    """

    def __init__(self, command_id: int, operation: str, why: str) -> None:
        self.command_id = command_id
        self.operation = operation
        self.why = why
        super().__init__(f"cannot {operation} command {command_id}: {why}")

    def __reduce__(self) -> tuple[type[CommandStateError], tuple[int, str, str]]:
        return (type(self), (self.command_id, self.operation, self.why))


def describe_exit(exitcode: int | None) -> str:
    """``exit code 3`` or ``signal SIGKILL``: how a process ended, for messages."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"
