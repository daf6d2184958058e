"""Checks every server store (Redis, PostgreSQL, RabbitMQ) makes the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._errors import StoreError


def check_options(name: Any, timeout: Any, *, forbidden: str = "") -> float:
    """Validate a server store's ``name`` and ``timeout``; returns the timeout as a float."""
    if not isinstance(name, str) or not name or any(c in name for c in forbidden):
        without = f" without {forbidden!r}" if forbidden else ""
        raise ValueError(f"name must be a non-empty string{without}, not {name!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
    return float(timeout)


def check_payloads(payloads: Sequence[Any]) -> None:
    """Refuse a put of anything but bytes before it reaches the server."""
    for p in payloads:
        if not isinstance(p, bytes | bytearray | memoryview):
            raise StoreError(f"payloads must be bytes, not {type(p).__name__}")


def redis_pubsub(client: Any) -> Any:
    """``client.pubsub()``, typed ``Any``: redis-py's annotations of it changed between
    releases (untyped before 8), and a subscription is used only through calls checked at
    run time."""
    return client.pubsub()
