"""The in-process reference store: the contract in ~100 lines, and the benchmark baseline.

Nothing here survives the process; other processes reach it through the queue's owner.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from .._records import Counts, Fault, Leased, LeaseToken, Priority, State


@dataclass(slots=True)
class _Record:
    id: int
    priority: int
    due: float
    payload: bytes
    state: State = State.READY
    attempts: int = 0
    lease_expiry: float = 0.0


class MemoryStore:
    """Messages in a dict and a heap, guarded by one lock."""

    shared: ClassVar[bool] = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[int, _Record] = {}
        self._ready: list[tuple[int, float, int]] = []  # heap of (priority, due, id)
        self._next_id = 1
        self._acked_total = 0
        self._faults: list[Fault] = []
        self._results: dict[int, bytes] = {}

    def put_many(
        self, payloads: Sequence[bytes], *, priority: int = Priority.MEDIUM, due: float = 0.0
    ) -> list[int]:
        with self._lock:
            ids = list(range(self._next_id, self._next_id + len(payloads)))
            self._next_id += len(payloads)
            for id_, payload in zip(ids, payloads, strict=True):
                self._records[id_] = _Record(id_, int(priority), due, bytes(payload))
                heapq.heappush(self._ready, (int(priority), due, id_))
        return ids

    def lease(self, owner: str, n: int, *, now: float, ttl: float) -> list[Leased]:
        out: list[Leased] = []
        not_due: list[tuple[int, float, int]] = []
        with self._lock:
            while self._ready and len(out) < n:
                entry = heapq.heappop(self._ready)
                if entry[1] > now:
                    not_due.append(entry)  # a later band may still have due messages
                    continue
                rec = self._records.get(entry[2])
                if rec is None or rec.state != State.READY:
                    continue  # discarded, or a stale entry
                rec.state, rec.lease_expiry = State.IN_FLIGHT, now + ttl
                rec.attempts += 1
                out.append(Leased(LeaseToken(rec.id, rec.attempts), rec.payload))
            for entry in not_due:
                heapq.heappush(self._ready, entry)
        return out

    def _leased(self, token: LeaseToken) -> _Record | None:
        rec = self._records.get(token.id)
        if rec is None or rec.state != State.IN_FLIGHT or rec.attempts != token.attempt:
            return None
        return rec

    def ack(self, tokens: Sequence[LeaseToken], *, results: Sequence[bytes] | None = None) -> int:
        applied = 0
        with self._lock:
            for i, token in enumerate(tokens):
                if self._leased(token) is not None:
                    del self._records[token.id]
                    if results is not None:
                        self._results[token.id] = bytes(results[i])
                    applied += 1
            self._acked_total += applied
        return applied

    def nack(
        self,
        tokens: Sequence[LeaseToken],
        *,
        requeue: bool,
        results: Sequence[bytes] | None = None,
    ) -> int:
        applied = 0
        with self._lock:
            for i, token in enumerate(tokens):
                rec = self._leased(token)
                if rec is not None:
                    self._release(rec, State.READY if requeue else State.DEAD)
                    if results is not None:
                        self._results[token.id] = bytes(results[i])
                    applied += 1
        return applied

    def discard(self, ids: Sequence[int]) -> int:
        with self._lock:
            gone = {i for i in ids if (r := self._records.get(i)) and r.state == State.READY}
            for i in gone:
                del self._records[i]
            if gone:
                self._ready = [e for e in self._ready if e[2] not in gone]
                heapq.heapify(self._ready)
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

    def forget(self, ids: Sequence[int]) -> int:
        with self._lock:
            return sum(self._results.pop(i, None) is not None for i in ids)

    def _release(self, rec: _Record, state: State) -> None:
        rec.state = state
        if state == State.READY:
            heapq.heappush(self._ready, (rec.priority, rec.due, rec.id))

    def requeue_expired(self, now: float) -> int:
        with self._lock:
            expired = [
                r for r in self._records.values()
                if r.state == State.IN_FLIGHT and r.lease_expiry < now
            ]
            for rec in expired:
                self._release(rec, State.READY)
        return len(expired)

    def has_ready(self, now: float) -> bool:
        with self._lock:
            return any(
                due <= now and (r := self._records.get(id_)) is not None
                and r.state == State.READY
                for _, due, id_ in self._ready
            )

    def next_due(self, now: float) -> float | None:
        with self._lock:
            return min(
                (r.due for r in self._records.values() if r.state == State.READY and r.due > now),
                default=None,
            )

    def counts(self) -> Counts:
        now = time.time()
        with self._lock:
            states = [r.state for r in self._records.values()]
            waiting = sum(
                1 for r in self._records.values() if r.state == State.READY and r.due > now
            )
            return Counts(
                scheduled=waiting,
                ready=states.count(State.READY) - waiting,
                in_flight=states.count(State.IN_FLIGHT),
                dead=states.count(State.DEAD),
                put_total=self._next_id - 1,
                acked_total=self._acked_total,
            )

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
