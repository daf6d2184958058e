"""The in-process reference store: the contract in plain Python, and the benchmark baseline.

Nothing here survives the process; other processes reach it through the queue's owner.
"""

from __future__ import annotations

import collections
import heapq
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from .._clock import SYSTEM, Clock
from .._policy import CAUSES, FailedAttempt, Retention, Verdict, decide
from .._records import Counts, Failure, Fault, Leased, LeaseToken, Priority, Record, State
from ._memory_commands import MemoryCommands
from ._sqlite_policy import FAILURE_LOG_MAX


@dataclass(slots=True)
class _Record:
    id: int
    priority: int
    due: float
    payload: bytes
    created: float
    deadline: float | None = None
    bump: float | None = None
    expires: float | None = None
    state: State = State.READY
    attempts: int = 0
    lease_expiry: float = 0.0
    finished: float | None = None
    late: bool = False
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0))

    def public(self, state: State | None = None) -> Record:
        return Record(
            self.id, state or self.state, Priority(self.priority), self.due, self.attempts,
            self.created, self.finished, self.deadline, self.expires, self.late, self.payload,
        )


class MemoryStore(MemoryCommands):
    """Messages in a dict and heaps (delivery order, bumps, expiries), under one lock."""

    shared: ClassVar[bool] = False
    #: Nothing outlives the owner: a producer elsewhere hands puts over without waiting.
    durable: ClassVar[bool] = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[int, _Record] = {}
        self._ready: list[tuple[int, float, int]] = []  # heap of (priority, due, id)
        self._bumps: list[tuple[float, int]] = []
        self._expiries: list[tuple[float, int]] = []
        self._dues: list[tuple[float, int]] = []  # (due, id) of messages put for later
        self._next_id = 1
        self._acked_total = 0
        self._late_total = 0
        self._faults: list[Fault] = []
        self._results: dict[int, bytes] = {}
        self._failures: list[Failure] = []
        self._history: collections.deque[_Record] = collections.deque()  # oldest first
        self._rng = random.Random()
        self.retention = Retention()
        self.clock: Clock = SYSTEM

    def put_many(
        self,
        payloads: Sequence[bytes],
        *,
        priority: int = Priority.MEDIUM,
        due: float = 0.0,
        deadline: float | None = None,
        bump: float | None = None,
        expires: float | None = None,
    ) -> list[int]:
        now = self.clock.time()
        with self._lock:
            ids = list(range(self._next_id, self._next_id + len(payloads)))
            self._next_id += len(payloads)
            for id_, payload in zip(ids, payloads, strict=True):
                self._records[id_] = _Record(
                    id_, int(priority), due, bytes(payload), now, deadline, bump, expires
                )
                heapq.heappush(self._ready, (int(priority), due, id_))
                if due > now:
                    heapq.heappush(self._dues, (due, id_))
                if bump is not None:
                    heapq.heappush(self._bumps, (bump, id_))
                if expires is not None:
                    heapq.heappush(self._expiries, (expires, id_))
        return ids

    def _current(self, entry: tuple[int, float, int]) -> _Record | None:
        """The record a heap entry stands for, if it is still ready at that place."""
        rec = self._records.get(entry[2])
        if rec is None or rec.state != State.READY or (rec.priority, rec.due) != entry[:2]:
            return None
        return rec

    def lease(
        self, owner: str, n: int, *, now: float, ttl: float, max_priority: int = Priority.LOW
    ) -> list[Leased]:
        out: list[Leased] = []
        not_due: list[tuple[int, float, int]] = []
        with self._lock:
            while self._ready and len(out) < n and self._ready[0][0] <= max_priority:
                entry = heapq.heappop(self._ready)
                rec = self._current(entry)
                if rec is None:
                    continue  # discarded, moved, or a stale entry
                if entry[1] > now:
                    not_due.append(entry)  # a later band may still have due messages
                    continue
                if rec.expires is not None and rec.expires <= now:
                    continue  # expired: tick() files it (and says so)
                rec.state, rec.lease_expiry = State.IN_FLIGHT, now + ttl
                rec.attempts += 1
                if rec.deadline is not None and rec.deadline < now:
                    rec.late = True
                    self._late_total += 1
                out.append(Leased(LeaseToken(rec.id, rec.attempts), rec.payload))
            for entry in not_due:
                heapq.heappush(self._ready, entry)
        return out

    def extend_leases(self, tokens: Sequence[LeaseToken], *, until: float) -> int:
        """Push the deadline of the leases still held to ``until`` (a peer renewing the
        tasks it runs); stale tokens are ignored. Returns how many."""
        n = 0
        with self._lock:
            for token in tokens:
                rec = self._leased(token)
                if rec is not None:
                    rec.lease_expiry = until
                    n += 1
        return n

    def _leased(self, token: LeaseToken) -> _Record | None:
        rec = self._records.get(token.id)
        if rec is None or rec.state != State.IN_FLIGHT or rec.attempts != token.attempt:
            return None
        return rec

    def _finish(self, rec: _Record, state: State, now: float) -> None:
        rec.state, rec.finished = state, now
        if state != State.DEAD:
            if self.retention.keeps:
                self._history.append(rec)
            else:
                del self._records[rec.id]

    def ack(self, tokens: Sequence[LeaseToken], *, results: Sequence[bytes] | None = None) -> int:
        applied = 0
        now = self.clock.time()
        with self._lock:
            for i, token in enumerate(tokens):
                rec = self._leased(token)
                if rec is not None:
                    self._finish(rec, State.DONE, now)
                    if results is not None:
                        self._results[token.id] = bytes(results[i])
                    applied += 1
            self._acked_total += applied
            self._trim(now)
        return applied

    def nack(
        self,
        tokens: Sequence[LeaseToken],
        *,
        requeue: bool,
        results: Sequence[bytes] | None = None,
    ) -> int:
        applied = 0
        now = self.clock.time()
        with self._lock:
            for i, token in enumerate(tokens):
                rec = self._leased(token)
                if rec is not None:
                    if requeue:
                        self._release(rec)
                    else:
                        self._finish(rec, State.DEAD, now)
                    if results is not None:
                        self._results[token.id] = bytes(results[i])
                    applied += 1
        return applied

    def fail(self, attempts: Sequence[FailedAttempt], *, now: float) -> list[Verdict | None]:
        out: list[Verdict | None] = []
        with self._lock:
            for a in attempts:
                rec = self._leased(a.token)
                if rec is None:
                    out.append(None)
                    continue
                rec.failed[a.cause] += 1
                verdict = decide(
                    a.policy, cause=a.cause, count=rec.failed[a.cause], retryable=a.retryable,
                    delay=a.delay, priority=rec.priority, due=rec.due, now=now, rng=self._rng,
                )
                rec.priority, rec.due = verdict.priority, verdict.due
                if verdict.retry:
                    self._release(rec)
                else:
                    self._finish(rec, State.DEAD, now)
                    result = a.result(verdict.failures) if callable(a.result) else a.result
                    if result is not None:
                        self._results[rec.id] = bytes(result)
                if a.failure is not None:
                    self._failures.append(a.failure)
                out.append(verdict)
            self._trim(now)
        return out

    def failures(
        self, *, since: float | None = None, limit: int | None = None, id: int | None = None
    ) -> list[Failure]:
        with self._lock:
            found = [
                f for f in self._failures
                if (since is None or f.time >= since) and (id is None or f.id == id)
            ]
        return found[-limit:] if limit else ([] if limit == 0 else found)

    def discard(self, ids: Sequence[int]) -> int:
        with self._lock:
            gone = {i for i in ids if (r := self._records.get(i)) and r.state == State.READY}
            for i in gone:
                del self._records[i]
        return len(gone)

    def unfinished(self, upto: int) -> list[int]:
        with self._lock:
            return sorted(
                r.id for r in self._records.values()
                if r.id <= upto and r.state in (State.READY, State.IN_FLIGHT)
            )

    def results(self, upto: int) -> dict[int, bytes]:
        with self._lock:
            return {i: r for i, r in self._results.items() if i <= upto}

    def results_of(self, ids: Sequence[int]) -> dict[int, bytes]:
        with self._lock:
            return {i: self._results[i] for i in ids if i in self._results}

    def forget(self, ids: Sequence[int]) -> int:
        with self._lock:
            return sum(self._results.pop(i, None) is not None for i in ids)

    def _release(self, rec: _Record) -> None:
        rec.state = State.READY
        heapq.heappush(self._ready, (rec.priority, rec.due, rec.id))
        heapq.heappush(self._dues, (rec.due, rec.id))

    def requeue_expired(self, now: float) -> int:
        with self._lock:
            expired = [
                r for r in self._records.values()
                if r.state == State.IN_FLIGHT and r.lease_expiry < now
            ]
            for rec in expired:
                self._release(rec)
        return len(expired)

    def tick(self, now: float) -> list[int]:
        expired: list[int] = []
        with self._lock:
            while self._bumps and self._bumps[0][0] <= now:
                _, id_ = heapq.heappop(self._bumps)
                rec = self._records.get(id_)
                if rec is not None and rec.bump is not None:
                    rec.bump = None
                    rec.priority = int(Priority.HIGH)
                    if rec.state == State.READY:
                        heapq.heappush(self._ready, (rec.priority, rec.due, rec.id))
            while self._expiries and self._expiries[0][0] <= now:
                _, id_ = heapq.heappop(self._expiries)
                rec = self._records.get(id_)
                if rec is not None and rec.state == State.READY:
                    self._finish(rec, State.EXPIRED, now)
                    expired.append(id_)
        return expired

    def has_ready(self, now: float) -> bool:
        with self._lock:
            return any(
                entry[1] <= now and (r := self._current(entry)) is not None
                and (r.expires is None or r.expires > now)
                for entry in self._ready
            )

    def next_event(self, now: float) -> float | None:
        """When a deadline window opens or an expiry passes next (``tick``'s work)."""
        with self._lock:
            return min(self._events(now), default=None)

    def _events(self, now: float) -> list[float]:
        """Under the lock: the next bump and the next expiry after ``now``, if any."""
        return [b for b, _ in self._bumps[:1]] + [e for e, _ in self._expiries if e > now][:1]

    def next_due(self, now: float) -> float | None:
        # Due times in a heap, dropped once past (callers ask with a time that only grows)
        # or stale: a look costs O(log n), however many messages wait or are kept.
        with self._lock:
            dues = self._dues
            while dues:
                due, id_ = dues[0]
                rec = self._records.get(id_)
                if due > now and rec is not None and rec.state == State.READY and rec.due == due:
                    break
                heapq.heappop(dues)
            events = [dues[0][0]] if dues else []
            return min(events + self._events(now), default=None)

    def counts(self) -> Counts:
        now = self.clock.time()
        with self._lock:
            recs = list(self._records.values())
        waiting = [
            r for r in recs
            if r.state == State.READY and (r.expires is None or r.expires > now)
        ]
        ready = [r for r in waiting if r.due <= now]
        by_priority = {p.name.lower(): 0 for p in Priority}
        for r in waiting:
            by_priority[Priority(r.priority).name.lower()] += 1
        states = [r.state for r in recs]
        return Counts(
            ready=len(ready),
            in_flight=states.count(State.IN_FLIGHT),
            dead=states.count(State.DEAD),
            put_total=self._next_id - 1,
            acked_total=self._acked_total,
            scheduled=len(waiting) - len(ready),
            done=states.count(State.DONE),
            expired=states.count(State.EXPIRED),
            late_total=self._late_total,
            by_priority=by_priority,
            next_due=self.next_due(now),
            oldest_ready_age=max((now - r.created for r in ready), default=None),
        )

    def records(
        self, states: Sequence[State], *, since: float | None = None, limit: int | None = None
    ) -> list[Record]:
        with self._lock:
            found = [
                r.public() for r in self._records.values()
                if r.state in states and r.finished is not None
                and (since is None or r.finished >= since)
            ]
        found.sort(key=lambda r: (r.finished, r.id), reverse=True)
        return found[:limit] if limit is not None else found

    def record(self, id: int) -> Record | None:
        with self._lock:
            rec = self._records.get(id)
            if rec is None:
                return None
            waiting = rec.state == State.READY and rec.due > self.clock.time()
            return rec.public(State.SCHEDULED if waiting else None)

    def revive(self, ids: Sequence[int] | None, *, now: float) -> list[int]:
        with self._lock:
            dead = [r for r in self._records.values() if r.state == State.DEAD]
            if ids is not None:
                wanted = set(ids)
                dead = [r for r in dead if r.id in wanted]
            for rec in sorted(dead, key=lambda r: r.id):
                rec.finished, rec.due = None, now
                rec.failed = dict.fromkeys(CAUSES, 0)
                self._results.pop(rec.id, None)
                self._release(rec)
        return sorted(r.id for r in dead)

    def purge(self, states: Sequence[State], *, older_than: float | None = None) -> int:
        limit = older_than if older_than is not None else float("inf")
        with self._lock:
            gone = [
                r.id for r in self._records.values()
                if r.state in states and r.finished is not None and r.finished < limit
            ]
            for i in gone:
                del self._records[i]
                self._results.pop(i, None)
            if gone:
                self._history = collections.deque(
                    x for x in self._history if self._records.get(x.id) is x
                )
        return len(gone)

    def _trim(self, now: float) -> None:
        r = self.retention
        cutoff = now - r.age if r.age is not None else float("-inf")
        history = self._history
        while history and (
            (r.count is not None and len(history) > r.count)
            or (history[0].finished or now) < cutoff
        ):
            old = history.popleft()
            if self._records.get(old.id) is old:
                del self._records[old.id]
        if len(self._failures) > 2 * FAILURE_LOG_MAX or (
            self._failures and self._failures[0].time < cutoff
        ):
            self._failures = [f for f in self._failures[-FAILURE_LOG_MAX:] if f.time >= cutoff]

    def record_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def faults(self, limit: int = 100) -> list[Fault]:
        with self._lock:
            return self._faults[-limit:]

    def close(self) -> None:
        """Nothing to release: the records live as long as this object."""

    def __repr__(self) -> str:
        return f"MemoryStore(<{len(self._records)} records>)"
