"""``RabbitMQStore``: the ``Store`` and ``CommandStore`` contracts on RabbitMQ alone.

A RabbitMQ queue hands each message to one consumer and forgets it once acked: it cannot
answer what the contracts ask of a store (ids, counts by state, history, the failure log,
dead letters, results, leases with deadlines on the caller's clock, exact (priority, due,
id) order, upserts keyed by (target, type), held commands waiting for confirmation). So
the store keeps no state in queues of messages. Every verb that changes state is an event
appended, with publisher confirms, to one durable RabbitMQ *stream* per store
(``durableq.<name>.log``): the broker's disk is the only durable truth, and its order is
the one order every process applies. Each process that opens the store follows the stream
(manual acks) into a replica (``_rabbitmq_events.Replica``) and answers reads from it; a
verb returns the outcome its own event had at its place in the log.

So every process that opens the store, on any host, is a peer (no owner lock): leases,
their deadlines, dedup keys of upserts and the confirmation state of held commands live in
the log, survive a broker restart and are rebuilt by any process that opens the store. A
verb whose confirm was lost is appended again with the same request id and applied once.
While the broker is unreachable, verbs retry with backoff for ``timeout`` seconds, then
raise ``StoreError``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

from .._clock import SYSTEM, Clock
from .._errors import StoreError
from .._policy import FailedAttempt, Retention, Verdict
from .._records import Counts, Failure, Fault, Leased, LeaseToken, Priority, Record, State
from ._rabbitmq_commands import RabbitMQCommands
from ._rabbitmq_events import Replica, attempt_out, pack, tokens_out, unpack
from ._rabbitmq_log import EventLog, import_pika
from ._rabbitmq_snapshot import Snapshots
from ._rabbitmq_watch import SETTLING, WAKING, LogWatch, RabbitMQOwnerLock
from ._server import check_options, check_payloads


class RabbitMQStore(RabbitMQCommands):
    """Messages and commands as an event log in a RabbitMQ stream, shared by every process
    and host that opens it.

    Args:
        url: an AMQP URL, e.g. ``"amqp://user:pass@broker-host:5672/%2F"``.
        name: the queue's name (its stream is ``durableq.<name>.log``).
        timeout: seconds to keep retrying while the broker is unreachable (restarting)
            before raising ``StoreError``. The default, 30 s, outlasts a broker restart:
            a RabbitMQ node takes 10 to 20 s to boot and recover its streams.

    Raises:
        ConfigurationError: pika is not installed.
    """

    shared: ClassVar[bool] = True
    #: Every process that opens the store is a peer (see ``RedisStore.peers``).
    peers: ClassVar[bool] = True

    def __init__(self, url: str, *, name: str = "durableq", timeout: float = 30.0) -> None:
        import_pika()
        timeout = check_options(name, timeout)
        self.url, self.name, self.timeout = url, name, timeout
        self._init_process_state()

    def _init_process_state(self) -> None:
        self.clock: Clock = SYSTEM
        self._pid = os.getpid()
        self._replica = Replica()
        self._done = threading.Condition()
        self._waiting: dict[str, tuple[bool, Any] | None] = {}
        self._synced = False
        #: Puts this process appended without reading them back (``put_quiet``), and how
        #: many of them a read-back event has since passed: reads wait until they did.
        self._quiet = self._quiet_read = 0
        self._watches: set[LogWatch] = set()
        self._result_watches: set[LogWatch] = set()
        self._watch_lock = threading.Lock()
        self._log = EventLog(self.url, f"durableq.{self.name}.log", timeout=self.timeout,
                             apply=self._on_event, thread_name=f"durableq-rabbitmq-{self.name}")
        self._snapshots = Snapshots(self._log, f"durableq.{self.name}.snapshot")
        self._follow_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.name, self.timeout = state["url"], state["name"], state["timeout"]
        self._init_process_state()

    def __repr__(self) -> str:
        return f"RabbitMQStore(name={self.name!r})"

    # -- the log -------------------------------------------------------------------------

    def _on_event(self, offset: int, body: bytes) -> None:
        try:
            events = unpack(body)
        except Exception:
            return  # not an event of this format: every replica skips it alike
        outcomes = [self._replica.apply(event) for event in events]
        verbs = {verb for _, _, _, verb in outcomes}
        watches = (self._watches if verbs & WAKING else set()) | (
            self._result_watches if verbs & SETTLING else set())
        if watches:
            with self._watch_lock:
                for watch in watches:
                    watch.wake()
        with self._done:
            done = [o for o in outcomes if o[0] in self._waiting]
            for request, raised, outcome, _ in done:
                self._waiting[request] = (raised, outcome)
            if done:
                self._done.notify_all()
        if done and self._snapshots.due(offset + 1):  # see _rabbitmq_snapshot
            self._snapshots.take(self._replica, offset + 1)

    def _follow(self) -> None:
        """Follow the log, from the newest snapshot's offset if there is one."""
        if self._log.following:
            return
        with self._follow_lock:
            if self._log.following:
                return
            snapshot = self._snapshots.read()
            if snapshot is not None:
                self._replica = snapshot[1]
            self._log.follow(0 if snapshot is None else snapshot[0])

    def _request(self, verb: str, args: dict[str, Any]) -> Any:
        """Append one event and return its outcome (re-raising what applying it raised)."""
        if self._pid != os.getpid():  # forked: this process follows the log on its own
            self._init_process_state()
        self._follow()
        request = uuid.uuid4().hex
        with self._done:
            self._waiting[request] = None
            quiet = self._quiet  # confirmed before this event is appended: applied before it
        try:
            self._log.append(pack(request, self.clock.time(), verb, args), verb)
            deadline = time.monotonic() + self.timeout
            with self._done:
                while (outcome := self._waiting[request]) is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StoreError(
                            f"rabbitmq store {self.name!r}: {verb} was written but not read "
                            f"back within {self.timeout:g} s (broker unreachable? "
                            f"{self._log.last_error!r})"
                        )
                    self._done.wait(left)
        finally:
            with self._done:
                self._waiting.pop(request, None)
        self._synced = True
        with self._done:
            self._quiet_read = max(self._quiet_read, quiet)
        raised, value = outcome
        if raised:
            raise value
        return value

    def _current(self) -> Replica:
        """The replica, caught up with the log at least once in this process."""
        if not self._synced or self._quiet_read < self._quiet or self._pid != os.getpid():
            self._request("sync", {})
        return self._replica

    def _read(self) -> Replica:
        """The replica caught up with everything appended before this call (a barrier)."""
        self._request("sync", {})
        return self._replica

    @property
    def retention(self) -> Retention:
        return self._replica.retention

    @retention.setter
    def retention(self, value: Retention) -> None:
        if value != self._current().retention:
            self._request("retention", {"count": value.count, "age": value.age})

    # -- the Store verbs -----------------------------------------------------------------

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
        if not payloads:
            return []
        check_payloads(payloads)
        ids: list[int] = self._request("put", {
            "payloads": [bytes(p) for p in payloads], "priority": int(priority), "due": due,
            "deadline": deadline, "bump": bump, "expires": expires,
        })
        return ids

    def put_quiet(
        self,
        payloads: Sequence[bytes],
        *,
        priority: int = Priority.MEDIUM,
        due: float = 0.0,
        deadline: float | None = None,
        bump: float | None = None,
        expires: float | None = None,
    ) -> None:
        """``put_many`` for a caller that needs no ids (``Queue.put``): returns once the
        broker confirmed the event, without waiting for this process to read it back. So
        a process that only produces neither follows the log nor waits for its own events
        to come round; its next read or lease first catches up past them."""
        if not payloads:
            return
        check_payloads(payloads)
        if self._pid != os.getpid():
            self._init_process_state()
        self._log.append(pack(uuid.uuid4().hex, self.clock.time(), "put", {
            "payloads": [bytes(p) for p in payloads], "priority": int(priority), "due": due,
            "deadline": deadline, "bump": bump, "expires": expires,
        }), "put")
        with self._done:
            self._quiet += 1

    def lease(
        self, owner: str, n: int, *, now: float, ttl: float, max_priority: int = Priority.LOW
    ) -> list[Leased]:
        # Nothing ready here means nothing to append: an idle owner writes no events.
        if n <= 0 or not self._current().leasable(now):
            return []
        leased: list[Leased] = self._request("lease", {
            "owner": owner, "n": n, "now": now, "ttl": ttl, "max_priority": int(max_priority),
        })
        return leased

    def fail(self, attempts: Sequence[FailedAttempt], *, now: float) -> list[Verdict | None]:
        if not attempts:
            return []
        replica = self._current()
        out = []
        for a in attempts:
            result = a.result
            if callable(result):  # the failure count of its cause, as applying will see it
                rec = replica._records.get(a.token.id)
                result = result((rec.failed[a.cause] if rec is not None else 0) + 1)
            out.append(attempt_out(a, result))
        verdicts: list[Verdict | None] = self._request("fail", {"attempts": out, "now": now})
        return verdicts

    def failures(
        self, *, since: float | None = None, limit: int | None = None, id: int | None = None
    ) -> list[Failure]:
        return self._read().failures(since=since, limit=limit, id=id)

    def tick(self, now: float) -> list[int]:
        expired: list[int] = self._request("tick", {"now": now})
        return expired

    def records(
        self, states: Sequence[State], *, since: float | None = None, limit: int | None = None
    ) -> list[Record]:
        return self._read().records(states, since=since, limit=limit)

    def record(self, id: int) -> Record | None:
        replica = self._read()
        with replica.event_clock.reading(self.clock.time()):
            return replica.record(id)

    def revive(self, ids: Sequence[int] | None, *, now: float) -> list[int]:
        found: list[int] = self._request(
            "revive", {"ids": None if ids is None else list(ids), "now": now}
        )
        return found

    def purge(self, states: Sequence[State], *, older_than: float | None = None) -> int:
        n: int = self._request("purge", {"states": [int(s) for s in states],
                                         "older_than": older_than})
        return n

    def ack(self, tokens: Sequence[LeaseToken], *, results: Sequence[bytes] | None = None) -> int:
        if not tokens:
            return 0
        n: int = self._request("ack", {
            "tokens": tokens_out(tokens),
            "results": None if results is None else [bytes(r) for r in results],
        })
        return n

    def nack(
        self,
        tokens: Sequence[LeaseToken],
        *,
        requeue: bool,
        results: Sequence[bytes] | None = None,
    ) -> int:
        if not tokens:
            return 0
        n: int = self._request("nack", {
            "tokens": tokens_out(tokens), "requeue": bool(requeue),
            "results": None if results is None else [bytes(r) for r in results],
        })
        return n

    def discard(self, ids: Sequence[int]) -> int:
        n: int = self._request("discard", {"ids": list(ids)}) if ids else 0
        return n

    def extend_leases(self, tokens: Sequence[LeaseToken], *, until: float) -> int:
        """Push the deadline of the leases still held to ``until``; returns how many."""
        n: int = self._request("extend", {"tokens": tokens_out(tokens), "until": until}) \
            if tokens else 0
        return n

    def unfinished(self, upto: int) -> list[int]:
        return self._read().unfinished(upto)

    def results(self, upto: int) -> dict[int, bytes]:
        return self._read().results(upto)

    def results_of(self, ids: Sequence[int]) -> dict[int, bytes]:
        return self._read().results_of(ids)

    def forget(self, ids: Sequence[int]) -> int:
        n: int = self._request("forget", {"ids": list(ids)}) if ids else 0
        return n

    def requeue_expired(self, now: float) -> int:
        n: int = self._request("requeue_expired", {"now": now})
        return n

    def has_ready(self, now: float) -> bool:
        return self._current().has_ready(now)

    def next_due(self, now: float) -> float | None:
        """Also the earliest lease deadline: a peer's expired lease is returned by ``tick``."""
        return self._current().next_due(now)

    def counts(self) -> Counts:
        replica = self._read()
        with replica.event_clock.reading(self.clock.time()):
            return replica.counts()

    def record_fault(self, fault: Fault) -> None:
        try:
            self._request("fault", {"fault": [fault.kind, fault.time, fault.detail]})
        except StoreError:
            pass  # best effort: the fault Event and the process's own list still say it

    def faults(self, limit: int = 100) -> list[Fault]:
        return self._read().faults(limit)

    def owner_lock(self, *, wait: bool) -> RabbitMQOwnerLock:
        """The queue's exclusive-owner lock (``Queue(exclusive=True)``)."""
        return RabbitMQOwnerLock(self, wait=wait)

    def watch_puts(self) -> LogWatch:
        """A pipe that wakes whoever waits on it when any peer's event may have made
        messages ready (this process's follower applied it)."""
        self._current()
        return LogWatch(self._watches, self._watch_lock)

    def watch_results(self) -> LogWatch:
        """A pipe that wakes whoever waits on it when any peer's event may have kept
        results (ack, nack, fail)."""
        self._current()
        return LogWatch(self._result_watches, self._watch_lock)

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop following the log and close this process's connections."""
        if self._pid == os.getpid():
            self._log.close()
            self._snapshots.join(self.timeout)
        self._init_process_state()

    def drop(self) -> None:
        """Delete the store's log: every message, command and record. Irreversible."""
        self._log.drop()
        self._snapshots.drop()
        self.close()
