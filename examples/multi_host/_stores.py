"""Open the server store a URL names: what every host of the example shares, and all."""

from __future__ import annotations

import durableq


def open_store(url: str, name: str) -> durableq.Store:
    """``redis://``, ``postgresql://`` or ``amqp://`` -> the matching durableq store."""
    try:
        return durableq.open_store(url, name=name)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
