"""An executor on a server store is one peer among many: what its dispatcher adds.

Every executor (or ``durableq worker --store``) opened on the same Redis, PostgreSQL or
RabbitMQ store leases from one set of tasks. Three things differ from an executor that
owns its store:

- **Leases expire.** Each is taken for ``visibility_timeout`` seconds and renewed every
  third of that while its task runs (``extend_leases``): a task runs once however long
  it takes while its host lives, and a host that died frees its tasks for the others
  within ``visibility_timeout`` (its own dispatcher still kills a task at its
  ``timeout``). No task is leased ahead of a free worker, so peers share.
- **Peers' puts wake it.** The store's put watch (``watch_puts``) joins the descriptors
  the dispatcher blocks on; an idle dispatcher also looks again every ``SAFETY_CHECK``
  seconds, for a notification lost while the server was unreachable.
- **Peers' results resolve its futures.** A task submitted here may run on any host; its
  outcome is kept in the store with the ack. The store's result watch
  (``watch_results``) wakes the dispatcher, which reads the results of the tasks its
  futures await (``Store.results_of``): at once for a few, at most every ``RESULT_GAP``
  seconds for ``RESULT_BATCH`` or more (each read names every awaited id), and every
  ``RESULT_RECHECK`` seconds while any future waits, so a notification
  lost while the server was unreachable costs latency, never a future. Nothing awaited:
  no timer, and an idle executor uses no CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from ._records import LeaseToken
from .store import Store

#: Seconds an idle dispatcher sleeps at most without looking at a peer store: a put whose
#: notification was lost (server unreachable meanwhile) waits no longer than this.
SAFETY_CHECK: Final = 5.0
#: Seconds between two reads of awaited results while peers keep finishing tasks, when
#: ``RESULT_BATCH`` or more are awaited: one read then covers many acks. Fewer awaited,
#: a shorter gap: a read's cost grows with the ids it names, and one awaited result is
#: read as soon as it is announced.
RESULT_GAP: Final = 0.05
RESULT_BATCH: Final = 1000
#: Seconds between reads of awaited results with no notification at all.
RESULT_RECHECK: Final = 2.0
#: A watch without a descriptor (server unreachable) is retried this often.
WATCH_RETRY: Final = 1.0


class PeerLink:
    """The watches and timers of one dispatcher on a peer store.

    Args:
        store: the server store (``store.peers`` is True).
        awaited: the ids of tasks whose futures wait here (called from the dispatcher).
        resolve: hands ``[(task id, outcome)]`` found in the store to those futures.
        visibility_timeout: seconds each lease lasts in the store.
    """

    def __init__(
        self,
        store: Store,
        *,
        awaited: Callable[[], list[int]],
        resolve: Callable[[list[tuple[int, bytes]]], None],
        visibility_timeout: float,
    ) -> None:
        self.store = store
        self.awaited = awaited
        self.resolve = resolve
        self.lease_ttl = visibility_timeout
        self.puts: Any = _watch(store, "watch_puts")
        self.results: Any = _watch(store, "watch_results")
        self.extend: Any = getattr(store, "extend_leases", None)
        self.renew_at = time.monotonic() + visibility_timeout / 3
        self.results_due = True  # at start: recovered() futures may be done already
        self.checked_at = -float("inf")
        self.waiting = 0  # futures awaited (not run here) at the last check

    def waitables(self) -> list[Any]:
        # Drained even when nothing is awaited: an unread subscription backs up in the server.
        return [w for w in (self.puts, self.results) if w is not None and w.fileno() >= 0]

    def deadline(self, idle: bool, holding: bool) -> float:
        """The monotonic time of the next look this link needs (``inf``: none); ``idle``:
        workers are free and the store had nothing; ``holding``: leases are held here."""
        now = time.monotonic()
        at = now + SAFETY_CHECK if idle else float("inf")
        if any(w is not None and w.fileno() < 0 for w in (self.puts, self.results)):
            at = min(at, now + WATCH_RETRY)
        if self.waiting or self.results_due:
            at = min(at, self.checked_at + self._gap())
        if holding and self.extend is not None:
            at = min(at, self.renew_at)
        return at

    def renew(self, held: list[LeaseToken], now: float) -> None:
        """Extend the leases this dispatcher holds, every third of their timeout."""
        mono = time.monotonic()
        if mono < self.renew_at or self.extend is None:
            return
        self.renew_at = mono + self.lease_ttl / 3
        if held:
            self.extend(held, until=now + self.lease_ttl)

    def _gap(self) -> float:
        if not self.results_due:
            return RESULT_RECHECK
        return RESULT_GAP * min(1.0, self.waiting / RESULT_BATCH)

    def on_ready(self, obj: Any) -> bool:
        """Drain ``obj`` if it is one of this link's watches; True for a put (look for
        tasks), False otherwise."""
        if obj is self.results:
            obj.drain()
            self.results_due = True
            return False
        if obj is self.puts:
            obj.drain()
            return True
        return False

    def owns(self, obj: Any) -> bool:
        return obj is self.puts or obj is self.results

    def check(self, local: set[int]) -> None:
        """Resolve awaited futures whose results peers stored, when a look is due (tasks
        this dispatcher runs itself, ``local``, are not looked for)."""
        now = time.monotonic()
        if now < self.checked_at + self._gap():
            return
        ids = [i for i in self.awaited() if i not in local]
        self.waiting = len(ids)
        self.results_due = False
        self.checked_at = now
        if ids:
            found = self.store.results_of(ids)
            if found:
                self.resolve(sorted(found.items()))

    def close(self) -> None:
        for watch in (self.puts, self.results):
            if watch is not None:
                watch.close()


def _watch(store: Store, name: str) -> Any:
    make = getattr(store, name, None)
    return make() if make is not None else None
