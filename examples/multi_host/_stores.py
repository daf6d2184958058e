"""Open the server store a URL names: what every host of the example shares, and all."""

from __future__ import annotations

import durableq


def open_store(url: str, name: str) -> durableq.Store:
    """``redis://``, ``postgresql://`` or ``amqp://`` -> the matching durableq store."""
    if url.startswith(("redis://", "rediss://")):
        return durableq.RedisStore(url, name=name)
    if url.startswith(("postgresql://", "postgres://")):
        return durableq.PostgresStore(url, name=name)
    if url.startswith(("amqp://", "amqps://")):
        return durableq.RabbitMQStore(url, name=name)
    raise SystemExit(f"unsupported store URL {url!r}: use redis://, postgresql:// or amqp://")
