"""Snapshots of ``RabbitMQStore``'s replica: opening a store replays only the log's tail.

Every ``SNAPSHOT_EVERY`` messages of the log, a following process whose own request lands
there packs its replica (msgpack, plain data: nothing read from the broker is unpickled)
with the offset of the next message, and publishes it with confirms to the classic durable
queue ``durableq.<name>.snapshot``, which keeps only the newest (``x-max-length`` 1). A
process that opens the store reads that message (and leaves it there), restores its
replica from it and follows the log from that offset: the state any snapshot holds plus
the events after it is the state of the whole log, so whichever peer's snapshot is newest
does. Without a snapshot, or one it cannot read, it replays the log from the start.

The stream itself is not trimmed: a RabbitMQ stream drops whole segments by size or age,
which could cut events that no snapshot covers yet.
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
from typing import Any, Final

import msgpack

from .._policy import Retention
from .._records import Failure, Fault, State
from ._memory import _Record
from ._memory_commands import _Command
from ._rabbitmq_events import Replica
from ._rabbitmq_log import EventLog

log = logging.getLogger("durableq.rabbitmq")

#: Log messages between two snapshots by one process.
SNAPSHOT_EVERY: Final = 10_000
#: A replica that packs to more than this is not published (RabbitMQ refuses messages over
#: 128 MiB by default), and this process waits twice as long before packing it again.
SNAPSHOT_MAX_BYTES: Final = 64 << 20
_FORMAT: Final = 1
_RECORD_FIELDS: Final = ("id", "priority", "due", "payload", "created", "deadline", "bump",
                         "expires", "state", "attempts", "lease_expiry", "finished", "late",
                         "failed")
_COMMAND_FIELDS: Final = ("id", "target", "type", "payload", "created", "expires", "hold",
                          "state", "keyed", "attempt", "holder", "deadline")


def _fields(obj: object, names: tuple[str, ...]) -> list[Any]:
    return [getattr(obj, name) for name in names]


def dump(replica: Replica, offset: int) -> bytes:
    """The replica's state after applying every log message before ``offset``."""
    with replica._lock:
        commands = replica._command_state()
        with commands.cond:
            state = {
                "format": _FORMAT, "offset": offset, "t": replica.event_clock.t,
                "records": [[int(v) if f == "state" else v
                             for f, v in zip(_RECORD_FIELDS, _fields(r, _RECORD_FIELDS),
                                             strict=True)]
                            for r in replica._records.values()],
                "history": [r.id for r in replica._history],
                "next_id": replica._next_id, "acked_total": replica._acked_total,
                "late_total": replica._late_total,
                "faults": [[f.kind, f.time, f.detail] for f in replica._faults],
                "results": replica._results,
                "failures": [list(f) for f in replica._failures],
                "retention": [replica.retention.count, replica.retention.age],
                "applied": list(replica.applied),
                "commands": [_fields(c, _COMMAND_FIELDS) for c in commands.rows.values()],
                "latest": [[t, k, i] for (t, k), i in commands.latest.items()],
                "last_command": commands.last_id,
            }
    body: bytes = msgpack.packb(state, use_bin_type=True)
    return body


def load(body: bytes) -> tuple[int, Replica]:
    """A replica restored from ``dump``'s bytes, and the log offset to follow it from."""
    state = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if state.get("format") != _FORMAT:
        raise ValueError(f"snapshot format {state.get('format')!r}")
    replica = Replica()
    replica.event_clock.t = float(state["t"])
    for row in state["records"]:
        rec = _Record(**dict(zip(_RECORD_FIELDS, row, strict=True)))
        rec.state = State(rec.state)
        replica._records[rec.id] = rec
        if rec.state == State.READY:
            replica._ready.append((rec.priority, rec.due, rec.id))
            if rec.due > replica.event_clock.t:
                replica._dues.append((rec.due, rec.id))
            if rec.expires is not None:
                replica._expiries.append((rec.expires, rec.id))
        elif rec.state == State.IN_FLIGHT:
            replica._deadlines.append((rec.lease_expiry, rec.id, rec.attempts))
        if rec.bump is not None:
            replica._bumps.append((rec.bump, rec.id))
    heapq.heapify(replica._ready)
    heapq.heapify(replica._deadlines)
    for heap in (replica._dues, replica._expiries, replica._bumps):
        heapq.heapify(heap)
    replica._history = collections.deque(replica._records[i] for i in state["history"])
    replica._next_id = int(state["next_id"])
    replica._acked_total, replica._late_total = state["acked_total"], state["late_total"]
    replica._faults = [Fault(*f) for f in state["faults"]]
    replica._results = {int(i): bytes(r) for i, r in state["results"].items()}
    replica._failures = [Failure(*f) for f in state["failures"]]
    replica.retention = Retention(*state["retention"])
    replica.applied = collections.OrderedDict((r, (False, None)) for r in state["applied"])
    commands = replica._command_state()
    for row in state["commands"]:
        commands.add(_Command(**dict(zip(_COMMAND_FIELDS, row, strict=True))))
    for target in commands.by_target:  # ids in ascending order, as appended
        commands.by_target[target] = dict.fromkeys(sorted(commands.by_target[target]))
    commands.latest = {(t, k): i for t, k, i in state["latest"]}
    commands.last_id = int(state["last_command"])
    return int(state["offset"]), replica


class Snapshots:
    """Reads the newest snapshot of a log and publishes new ones from a thread of their own."""

    def __init__(self, log: EventLog, queue: str) -> None:
        self._log, self.queue = log, queue
        self.taken_at = 0  # the offset of the last snapshot this process read or wrote
        self._every = SNAPSHOT_EVERY
        self._thread: threading.Thread | None = None

    def _channel(self, con: Any) -> Any:
        channel = con.channel()
        channel.queue_declare(self.queue, durable=True, arguments={
            "x-max-length": 1, "x-overflow": "drop-head"})
        return channel

    def read(self) -> tuple[int, Replica] | None:
        """The newest snapshot, or None (there is none, or it cannot be read)."""
        try:
            con = self._log.connect()
            try:
                channel = self._channel(con)
                method, _, body = channel.basic_get(self.queue, auto_ack=False)
                if method is None:
                    return None
                channel.basic_nack(method.delivery_tag, requeue=True)  # others read it too
            finally:
                con.close()
            offset, replica = load(body)
        except Exception as exc:  # replaying the whole log is slower, never wrong
            log.warning("rabbitmq log %s: snapshot not read (%r); replaying the log",
                        self._log.queue, exc)
            return None
        self.taken_at = offset
        return offset, replica

    def due(self, offset: int) -> bool:
        return offset >= self.taken_at + max(self._every, SNAPSHOT_EVERY) and (
            self._thread is None or not self._thread.is_alive())

    def take(self, replica: Replica, offset: int) -> None:
        """Pack the replica now (it stands after ``offset - 1``); publish it meanwhile."""
        self.taken_at = offset
        body = dump(replica, offset)
        if len(body) > SNAPSHOT_MAX_BYTES:
            self._every = 2 * max(self._every, SNAPSHOT_EVERY)
            return
        self._thread = threading.Thread(target=self._publish, args=(body,), daemon=True,
                                        name=f"durableq-snapshot-{self.queue}")
        self._thread.start()

    def _publish(self, body: bytes) -> None:
        pika = self._log._pika
        try:
            con = self._log.connect()
            try:
                channel = self._channel(con)
                channel.confirm_delivery()
                channel.basic_publish("", self.queue, body, pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent))
            finally:
                con.close()
        except Exception as exc:  # the next one will do: the log holds everything
            log.warning("rabbitmq log %s: snapshot not written: %r", self._log.queue, exc)

    def join(self, timeout: float) -> None:
        """Wait for the snapshot being published, if any."""
        if self._thread is not None:
            self._thread.join(timeout)

    def drop(self) -> None:
        """Delete the snapshot queue."""
        con = self._log.connect()
        try:
            con.channel().queue_delete(self.queue)
        finally:
            con.close()
