"""``Message``: one delivery handed to the application in ``ack="manual"`` mode."""

from __future__ import annotations

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

    __slots__ = ("_client", "_settled", "attempts", "body", "id", "token")

    def __init__(self, client: Callable[[], Client], token: LeaseToken, body: T) -> None:
        self._client = client
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

    def nack(self, requeue: bool = True) -> None:
        """Give the message back: ready again (``requeue``) or dead, kept for inspection."""
        self._settle().nack([self.token], requeue)

    def __enter__(self) -> Message[T]:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._settled:
            if exc_type is None:
                self.ack()
            else:
                self.nack(requeue=True)

    def __repr__(self) -> str:
        return f"<Message id={self.id} attempts={self.attempts} body={self.body!r}>"
