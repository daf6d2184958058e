"""The exception tree. Every exception pickles with its fields: they cross pipes and get stored."""

from __future__ import annotations


class DurableQError(Exception):
    """Base of every error durableq raises."""


class StoreError(DurableQError):
    """The store could not complete an operation; nothing was half-written.

    The underlying exception is chained as ``__cause__``.
    """


class StoreTimeout(StoreError, TimeoutError):
    """The store stayed locked longer than the allowed time."""


class ConfigurationError(DurableQError, ValueError):
    """An option or combination of options that cannot work."""


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
