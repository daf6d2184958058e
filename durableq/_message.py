"""``Message``: one delivery handed to the application in ``ack="manual"`` mode."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Generic, TypeVar

from ._client import Client
from ._records import LeaseToken

T = TypeVar("T")


class Message(Generic[T]):
    """A delivered message, in flight until ``ack()`` or ``nack()``.

    It may be settled from any thread of the process that received it. As a context
    manager it acks when the block succeeds and nacks (requeue) on exception.
    """

    __slots__ = ("_client", "_retry_on", "_settled", "attempts", "body", "id", "token")

    def __init__(
        self,
        client: Callable[[], Client],
        token: LeaseToken,
        body: T,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
    ) -> None:
        self._client = client
        self._retry_on = retry_on
        self._settled = False
        self.token = token
        self.id: int = token.id
        self.attempts: int = token.attempt
        self.body: T = body

    def _settle(self) -> Client:
        if self._settled:
            raise ValueError(f"message {self.id} was already acked or nacked")
        self._settled = True
        return self._client()

    def ack(self) -> None:
        """Finish the message: it is never delivered again."""
        self._settle().ack([self.token])

    def nack(
        self,
        requeue: bool = True,
        *,
        delay: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        """A failed attempt: the queue's retry policy decides when the message comes back
        (backoff, demotion) or whether it is dead; ``requeue=False`` makes it dead now.

        ``delay`` (seconds) replaces the policy's backoff for this retry; ``error`` is logged
        in ``failures()`` (type, message, traceback) and checked against ``retry_on``.
        """
        if delay is not None and (
            isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0
        ):
            raise ValueError(f"delay must be a number of seconds >= 0, not {delay!r}")
        detail = None
        if error is not None:
            detail = (
                type(error).__qualname__,
                str(error),
                "".join(traceback.format_exception(error)),
                isinstance(error, self._retry_on),
            )
        self._settle().nack([self.token], requeue, delay, detail)

    def __enter__(self) -> Message[T]:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._settled:
            if exc_type is None:
                self.ack()
            else:
                self.nack(requeue=True, error=exc if isinstance(exc, BaseException) else None)

    def __repr__(self) -> str:
        return f"<Message id={self.id} attempts={self.attempts} body={self.body!r}>"
