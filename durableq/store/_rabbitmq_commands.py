"""Command queues on RabbitMQ: the ``CommandStore`` verbs of ``RabbitMQStore``.

Each verb that changes a command is an event in the store's log like any other (see
``_rabbitmq``); reads come from the replica after a ``sync`` barrier. Whether a drained
command's holder died is judged once, by the requester, and carried in the event: the
replicas elsewhere cannot see that process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._records import LeaseToken
from ._commandstore import CommandCounts, CommandRow, CommandWatch, holder_alive
from ._rabbitmq_events import tokens_out

if TYPE_CHECKING:
    from ._rabbitmq_events import Replica


class RabbitMQCommands:
    """The ``CommandStore`` verbs, over the log verbs ``RabbitMQStore`` provides."""

    if TYPE_CHECKING:
        def _request(self, verb: str, args: dict[str, Any]) -> Any: ...
        def _current(self) -> Replica: ...
        def _read(self) -> Replica: ...
        def close(self) -> None: ...

    def command_put(self, target: str, payload: bytes, *, command_type: str | None,
                    expires_at: float | None, hold: bool, now: float) -> int:
        id_: int = self._request("command_put", {
            "target": target, "payload": bytes(payload), "type": command_type,
            "expires_at": expires_at, "hold": bool(hold), "now": now,
        })
        return id_

    def command_upsert(self, target: str, command_type: str, payload: bytes, *,
                       expires_at: float | None, now: float) -> int:
        id_: int = self._request("command_upsert", {
            "target": target, "type": command_type, "payload": bytes(payload),
            "expires_at": expires_at, "now": now,
        })
        return id_

    def command_pending(self, target: str, *, now: float,
                        held_only: bool = False) -> list[CommandRow]:
        return self._read().command_pending(target, now=now, held_only=held_only)

    def command_drain(self, target: str, *, now: float, limit: int | None,
                      lease: float | None, holder: int) -> list[CommandRow]:
        # Whether a holder died is judged here, once: replicas elsewhere cannot see it.
        dead = [p for p in self._current().holders(target) if not holder_alive(p)]
        rows: list[CommandRow] = self._request("command_drain", {
            "target": target, "now": now, "limit": limit, "lease": lease, "holder": holder,
            "dead": dead,
        })
        return rows

    def command_ack(self, tokens: Sequence[LeaseToken]) -> int:
        n: int = self._request("command_ack", {"tokens": tokens_out(tokens)}) if tokens else 0
        return n

    def command_nack(self, tokens: Sequence[LeaseToken]) -> int:
        n: int = self._request("command_nack", {"tokens": tokens_out(tokens)}) if tokens else 0
        return n

    def command_confirm(self, command_id: int, *, now: float) -> str:
        target: str = self._request("command_confirm", {"id": command_id, "now": now})
        return target

    def command_cancel(self, command_id: int, *, now: float) -> str:
        target: str = self._request("command_cancel", {"id": command_id, "now": now})
        return target

    def command_expire(self, now: float) -> int:
        n: int = self._request("command_expire", {"now": now})
        return n

    def command_counts(self, now: float) -> CommandCounts:
        return self._read().command_counts(now)

    def command_watch(self, target: str) -> CommandWatch:
        """Woken when this process's follower applies a put, upsert, confirm or nack of
        ``target`` appended by any peer."""
        return self._current().command_watch(target)

    def command_close(self) -> None:
        self.close()
