"""The events of ``RabbitMQStore``'s log and the replica that applies them.

An event is one store verb with its arguments, the requester's clock reading and a request
id, packed with msgpack (plain data only: nothing read from the broker is unpickled). The
replica is a ``MemoryStore`` whose verbs are deterministic given an event: its clock reads
the event's time, its random source is seeded with the request id, and the liveness of a
command lease's holder is the requester's judgement, carried in the event. So every
process that applies the same log in the same order holds the same state.
"""

from __future__ import annotations

import collections
import heapq
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack

from .._policy import FailedAttempt, Retention, RetryPolicy
from .._records import Failure, Fault, Leased, LeaseToken, Priority, State
from ._memory import MemoryStore

#: Results kept per request id, so an event appended twice (its confirm was lost, the
#: append retried) is applied once. A retry comes within the store's timeout; this many
#: events from all peers may pass meanwhile.
REMEMBERED: Final = 8192
#: How long after a lease's deadline ``next_due`` wakes the owner to return it.
LEASE_SLACK: Final = 0.001
_POLICY_FIELDS: Final = ("retries", "max_attempts", "timeout_retries", "backoff",
                         "backoff_cap", "jitter", "demote")


def pack(request: str, time: float, verb: str, args: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb([request, time, verb, args], use_bin_type=True)
    return body


Event = tuple[str, float, str, dict[str, Any]]


def unpack(body: bytes) -> list[Event]:
    """The events of one message: one, or several appended together (``EventLog``'s group
    commit concatenates packed events). Raises on anything else, before any is applied."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body)
    events = []
    for request, time, verb, args in unpacker:
        events.append((str(request), float(time), str(verb), dict(args)))
    if not events:
        raise ValueError("no event")
    return events


def tokens_out(tokens: Sequence[LeaseToken]) -> list[list[int]]:
    return [[int(t[0]), int(t[1])] for t in tokens]


def attempt_out(a: FailedAttempt, result: bytes | None) -> list[Any]:
    """A failed attempt as plain data; a callable result must already be evaluated."""
    return [
        [a.token.id, a.token.attempt], a.cause,
        [getattr(a.policy, f) for f in _POLICY_FIELDS],
        None if a.failure is None else list(a.failure),
        a.retryable, a.delay, result,
    ]


def attempt_in(data: Sequence[Any]) -> FailedAttempt:
    token, cause, policy, failure, retryable, delay, result = data
    return FailedAttempt(
        LeaseToken(*token), cause, RetryPolicy(**dict(zip(_POLICY_FIELDS, policy, strict=True))),
        None if failure is None else Failure(*failure), retryable, delay, result,
    )


class EventClock:
    """The replica's clock: the applied event's time; a reader's own time on its thread."""

    def __init__(self) -> None:
        self.t = 0.0
        self._reader = threading.local()

    def time(self) -> float:
        at: float | None = getattr(self._reader, "t", None)
        return self.t if at is None else at

    monotonic = time

    def reading(self, t: float) -> _Reading:
        return _Reading(self._reader, t)


class _Reading:
    def __init__(self, local: threading.local, t: float) -> None:
        self._local, self._t = local, t

    def __enter__(self) -> None:
        self._local.t = self._t

    def __exit__(self, *exc: object) -> None:
        self._local.t = None


class Replica(MemoryStore):
    """The state a log describes, built by applying its events in order."""

    def __init__(self) -> None:
        super().__init__()
        self.event_clock = EventClock()
        self.clock = self.event_clock
        self._dead_holders: frozenset[int] = frozenset()
        #: (deadline, id, attempt) of every lease taken, stale once settled: a heap, so
        #: finding expired leases costs O(log n) however many records are kept.
        self._deadlines: list[tuple[float, int, int]] = []
        self.applied: collections.OrderedDict[str, tuple[bool, Any]] = collections.OrderedDict()
        self._verbs: dict[str, Callable[[dict[str, Any]], Any]] = {
            "put": lambda a: self.put_many(
                a["payloads"], priority=a["priority"], due=a["due"], deadline=a["deadline"],
                bump=a["bump"], expires=a["expires"]),
            "lease": lambda a: self.lease(a["owner"], a["n"], now=a["now"], ttl=a["ttl"],
                                          max_priority=a["max_priority"]),
            "extend": lambda a: self.extend_leases(_tokens(a["tokens"]), until=a["until"]),
            "fail": lambda a: self.fail([attempt_in(x) for x in a["attempts"]], now=a["now"]),
            "tick": lambda a: self.tick(a["now"]),
            "revive": lambda a: self.revive(a["ids"], now=a["now"]),
            "purge": lambda a: self.purge([State(s) for s in a["states"]],
                                          older_than=a["older_than"]),
            "ack": lambda a: self.ack(_tokens(a["tokens"]), results=a["results"]),
            "nack": lambda a: self.nack(_tokens(a["tokens"]), requeue=a["requeue"],
                                        results=a["results"]),
            "discard": lambda a: self.discard(a["ids"]),
            "forget": lambda a: self.forget(a["ids"]),
            "requeue_expired": lambda a: self.requeue_expired(a["now"]),
            "fault": lambda a: self.record_fault(Fault(*a["fault"])),
            "retention": self._set_retention,
            "sync": lambda a: None,
            "command_put": lambda a: self.command_put(
                a["target"], a["payload"], command_type=a["type"], expires_at=a["expires_at"],
                hold=a["hold"], now=a["now"]),
            "command_upsert": lambda a: self.command_upsert(
                a["target"], a["type"], a["payload"], expires_at=a["expires_at"], now=a["now"]),
            "command_drain": self._drain,
            "command_ack": lambda a: self.command_ack(_tokens(a["tokens"])),
            "command_nack": lambda a: self.command_nack(_tokens(a["tokens"])),
            "command_confirm": lambda a: self.command_confirm(a["id"], now=a["now"]),
            "command_cancel": lambda a: self.command_cancel(a["id"], now=a["now"]),
            "command_expire": lambda a: self.command_expire(a["now"]),
        }

    def apply(self, event: Event) -> tuple[str, bool, Any, str]:
        """Apply one event; returns its request id, whether it raised, its outcome (the
        first application's, for an event seen again) and its verb."""
        request, time, verb, args = event
        seen = self.applied.get(request)
        if seen is not None:
            return (request, *seen, verb)
        self.event_clock.t = time
        if verb == "fail":  # the one verb that draws (retry jitter)
            self._rng.seed(request)
        try:
            outcome: tuple[bool, Any] = (False, self._verbs[verb](args))
        except Exception as exc:  # the requester re-raises it; every replica got the same
            outcome = (True, exc)
        self.applied[request] = outcome
        if len(self.applied) > REMEMBERED:
            self.applied.popitem(last=False)
        return (request, *outcome, verb)

    def lease(
        self, owner: str, n: int, *, now: float, ttl: float, max_priority: int = Priority.LOW
    ) -> list[Leased]:
        """Also takes leases whose deadline passed, as the other server stores do."""
        self.requeue_expired(now)
        leased = super().lease(owner, n, now=now, ttl=ttl, max_priority=max_priority)
        with self._lock:
            for x in leased:
                heapq.heappush(self._deadlines, (now + ttl, x.token.id, x.token.attempt))
        return leased

    def extend_leases(self, tokens: Sequence[LeaseToken], *, until: float) -> int:
        n = super().extend_leases(tokens, until=until)
        with self._lock:  # the old deadlines' entries go stale: they no longer match
            for token in tokens:
                rec = self._records.get(token.id)
                if rec is not None and rec.lease_expiry == until:
                    heapq.heappush(self._deadlines, (until, token.id, token.attempt))
        return n

    def _held(self, entry: tuple[float, int, int]) -> bool:
        """Whether a deadline heap entry is a lease still held."""
        rec = self._records.get(entry[1])
        return (rec is not None and rec.state == State.IN_FLIGHT
                and rec.attempts == entry[2] and rec.lease_expiry == entry[0])

    def _earliest_lease(self) -> float | None:
        """The earliest deadline of a lease still held (stale heap entries dropped)."""
        heap = self._deadlines
        while heap and not self._held(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def requeue_expired(self, now: float) -> int:
        n = 0
        with self._lock:
            while (expiry := self._earliest_lease()) is not None and expiry < now:
                _, id_, _ = heapq.heappop(self._deadlines)
                self._release(self._records[id_])
                n += 1
        return n

    def leasable(self, now: float) -> bool:
        """Whether a lease at ``now`` could take anything (else it need not be logged)."""
        if self.has_ready(now):
            return True
        with self._lock:
            expiry = self._earliest_lease()
            return expiry is not None and expiry < now

    def tick(self, now: float) -> list[int]:
        """Also returns to ready the leases whose deadline passed: a peer may have died
        holding them, and no owner watches a peer's process."""
        expired = super().tick(now)
        self.requeue_expired(now)
        return expired

    def next_due(self, now: float) -> float | None:
        """Also just after the earliest lease deadline (``requeue_expired`` wants it passed)."""
        due = super().next_due(now)
        with self._lock:
            expiry = self._earliest_lease()
            if expiry is not None and expiry + LEASE_SLACK <= now:  # passed, not yet returned
                expiry = min((x[0] for x in self._deadlines
                              if x[0] + LEASE_SLACK > now and self._held(x)), default=None)
        deadlines = [] if expiry is None else [expiry + LEASE_SLACK]
        return min([*deadlines, *([] if due is None else [due])], default=None)

    def _set_retention(self, a: dict[str, Any]) -> None:
        self.retention = Retention(a["count"], a["age"])

    def _drain(self, a: dict[str, Any]) -> Any:
        self._dead_holders = frozenset(a["dead"])
        try:
            return self.command_drain(a["target"], now=a["now"], limit=a["limit"],
                                      lease=a["lease"], holder=a["holder"])
        finally:
            self._dead_holders = frozenset()

    def _holder_alive(self, pid: int | None) -> bool:
        return pid is None or pid not in self._dead_holders

    def holders(self, target: str) -> set[int]:
        """The processes holding leases on ``target``'s commands."""
        s = self._command_state()
        with s.cond:
            return {c.holder for c in s.of(target, float("-inf"), (int(State.IN_FLIGHT),))
                    if c.holder is not None}


def _tokens(data: Sequence[Sequence[int]]) -> list[LeaseToken]:
    return [LeaseToken(int(t[0]), int(t[1])) for t in data]
