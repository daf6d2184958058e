"""The executor's dispatcher: one thread that leases tasks from the store, hands each to an
idle worker process, and settles outcomes, crashes and timeouts back into the store.

It waits on the workers' pipes and process sentinels and on a wakeup pipe
(``multiprocessing.connection.wait``) with a timeout only when a task deadline is near:
an idle pool sleeps in one system call. Each worker holds up to ``PIPELINE`` short tasks,
so it starts the next one while the dispatcher is still storing the last outcome. Outcomes come
back in order, and each worker writes the token of the task it starts into shared memory
(no system call), so the task a worker was running when it died is known exactly: only
that task's attempt is spent; tasks it had not started go back to the store uncounted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Final

from . import _worker
from ._allow import AllowList
from ._clock import SYSTEM, Clock
from ._errors import (
    InitializerFailed,
    StoreError,
    TaskExpired,
    TaskTimeout,
    WorkerCrashed,
    describe_exit,
)
from ._lazy import ALL, NONE, Gate
from ._limits import MemoryWatch, describe
from ._peers import PeerLink
from ._policy import CRASH, ERROR, TIMEOUT, FailedAttempt
from ._records import Failure, Fault, Leased, LeaseToken
from ._task import encode_error, error_of, header_of, timeout_of
from ._wakeup import FrameReader, Waiter, Wakeup, readable
from .store import Store

#: A lease outlives any task: the dispatcher itself notices dead workers and timeouts.
LEASE_TTL: Final = 10 * 365 * 86400.0
STORE_RETRY: Final = 0.5
#: Tasks sent ahead to each worker, at most, while tasks are short: it hides the
#: dispatcher's round trip, and each round and each store transaction then serves more
#: tasks (no-op submits: ~6k/s with 4, ~9k/s with 16 on 2 CPUs). Longer tasks gain nothing
#: from it and would wait behind each other while another worker idles: a worker holds
#: about ``SHORT_TASK`` worth of tasks (by the recent average), and one at a time beyond.
PIPELINE: Final = 16
SHORT_TASK: Final = 0.005
#: While tasks are short, leases are taken this many at a time into memory: one store
#: transaction feeds many workers' rounds. Long tasks are leased exactly as needed.
LEASE_AHEAD: Final = 64


@dataclass(eq=False)
class _Worker:
    process: Any
    conn: Connection
    budget: float  # tasks it may still take (max_tasks_per_child)
    running: Any  # shared (task id, attempt) the worker writes as it starts a task
    tasks: deque[Leased] = field(default_factory=deque)  # the first one is running
    init_error: str = ""  # its initializer raised (traceback), acted on once it exited
    deadline: float = float("inf")  # of the running task
    since: float = 0.0  # when the running task started
    reader: FrameReader = field(init=False)  # its outcomes, off ``conn``

    def __post_init__(self) -> None:
        self.reader = FrameReader(self.conn.fileno())

    @property
    def task(self) -> Leased | None:
        return self.tasks[0] if self.tasks else None

    def room(self, depth: int) -> int:
        return max(0, int(min(depth - len(self.tasks), self.budget)))


@dataclass
class Settled:
    """Outcomes waiting to be written to the store, then handed to futures."""

    acks: list[tuple[LeaseToken, bytes]] = field(default_factory=list)
    failed: list[FailedAttempt] = field(default_factory=list)  # judged by their policy
    requeue: list[LeaseToken] = field(default_factory=list)


class Dispatcher(threading.Thread):
    """Runs the workers of one executor. Talks to the executor only through callbacks.

    Args:
        resolve: called with ``[(task id, outcome bytes)]`` once outcomes are stored.
        begin: called with a task id as it is sent; False means its future was cancelled
            (the task is then dropped, not run).
        on_fault: records a fault (and sets the fault event).
        on_broken: called once with ``InitializerFailed`` (or a ``BrokenExecutor`` naming
            the error that killed the dispatcher); the dispatcher then stops.
    """

    def __init__(
        self,
        store: Store,
        *,
        ctx: Any,
        workers: int,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        max_tasks_per_child: int | None,
        name: str,
        keep_results: bool,
        resolve: Callable[[list[tuple[int, bytes]]], None],
        begin: Callable[[int], bool],
        on_fault: Callable[[Fault], None],
        on_broken: Callable[[BrokenExecutor], None],
        gate: Gate | None = None,
        memory: MemoryWatch | None = None,
        note: Callable[[Fault], None] | None = None,
        allowed: AllowList | None = None,
        peer: PeerLink | None = None,
    ) -> None:
        super().__init__(name=f"durableq-executor-{name}", daemon=True)
        self.store = store
        self.ctx = ctx
        self.size = workers
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks_per_child
        self.pool = name
        self.keep_results = keep_results
        self.resolve = resolve
        self.begin = begin
        self.on_fault = on_fault
        self.on_broken = on_broken
        self.gate = gate  # lazy mode: no new task starts while the machine is overloaded
        self.memory = memory  # worker memory limits; the "auto" pool size
        self.note = note or on_fault  # logged, but not a failure (recycled, shrunk)
        self.allowed = allowed  # what workers may unpickle (allowed_modules)
        self.peer = peer  # a server store's peers: expiring leases, their puts and results
        self.lease_ttl = peer.lease_ttl if peer is not None else LEASE_TTL
        self.workers: dict[int, _Worker] = {}  # by sentinel
        self._wakeup = Wakeup()
        self._waiter = Waiter()
        self.idle = False  # True while waiting with nothing to lease: producers wake us
        self.stopping = False  # shutdown asked: finish what the store holds, then exit
        self.killing = False  # kill_workers(): stop every worker now, charge no task
        self.cancel = False  # shutdown(cancel_futures=True): lease nothing new
        self.discards: list[int] = []  # cancelled futures' tasks, dropped from the store
        self.settled = Settled()
        self.leased: deque[Leased] = deque()  # leased ahead, not yet sent
        self.assign_asked, self.assigned = threading.Event(), threading.Event()
        #: The store may hold scheduled tasks: look up the next due time when idle.
        self.maybe_scheduled = True
        self.schedules = 0  #: scheduled() calls so far (see _round)
        #: The last lease came up short and nothing was put since: skip the next one
        #: (only while no scheduled task may come due meanwhile).
        self.drained = False
        #: Submits piled up in the put log while no worker had room (``ingest``).
        self.ingest_asked = False
        self._ingest: Callable[[], None] | None = getattr(store, "ingest", None)
        self.looked_at = 0.0  # when the last lease looked at the store
        self.retry_at = 0.0
        self.error: BaseException | None = None
        self.on_exit: Callable[[], None] = lambda: None
        #: Called with each failure logged (the executor counts recurring errors).
        self.on_failure: Callable[[Failure], None] = lambda failure: None
        self.clock: Clock = SYSTEM
        self.depth = 1  # tasks per worker: up to PIPELINE while recent tasks were short
        self.run_time = 1.0  # moving average of task run times, seconds
        #: Crashes and timeouts seen, for stats.
        self.crashes = 0
        self.timeouts = 0
        self.stale = 0

    # -- called from other threads ---------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    def ingest(self) -> None:
        """Move the put log's submits into the store soon, workers free or not: a backlog
        left there would be moved all at once by the next lease, or after a crash by the
        next owner before its first task."""
        if self._ingest is not None:
            self.ingest_asked = True
            self.wake()

    def assign_now(self, timeout: float) -> None:
        """Let free workers take what is stored (as ProcessPoolExecutor hands work to its
        call queue as soon as it is submitted): ``shutdown(cancel_futures=True)`` then
        cancels only what no worker holds."""
        if not self.is_alive():
            return
        self.assigned.clear()
        self.assign_asked.set()
        self.wake()
        self.assigned.wait(timeout)

    def kill_workers(self) -> None:
        """Stop at once: kill every worker from the dispatcher thread; their tasks are not
        charged an attempt and stay stored (their futures get ``TaskAbandoned``)."""
        self.stopping = self.cancel = self.killing = True
        self.wake()

    def _kill_all(self) -> None:
        for w in list(self.workers.values()):
            w.process.kill()
        for w in list(self.workers.values()):
            w.process.join()
            self._receive(w.conn)  # outcomes sent before the kill still count
            self._requeue_unstarted(w, started=0)
            del self.workers[w.process.sentinel]
            w.conn.close()

    def request_stop(self) -> None:
        """Finish what the store holds, then stop the workers and exit."""
        self.stopping = True
        self.wake()

    def scheduled(self) -> None:
        """A task with a future due time was stored: the next idle round sets a timer."""
        self.schedules += 1
        self.maybe_scheduled = True
        self.wake()

    def nudge(self) -> None:
        """Wake the dispatcher only if it sleeps for lack of tasks (cheap on every submit)."""
        self.drained = False  # before reading idle: see _assign
        if self.idle:
            self.idle = False
            self.wake()

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while self._round():
                pass
        except BaseException as exc:  # a bug: reported, and no future waits forever
            self.error = exc
            self.on_fault(Fault("dispatcher-died", time.time(), repr(exc)))
            broken = BrokenExecutor(f"the executor's dispatcher died: {exc!r}")
            broken.__cause__ = exc
            self.on_broken(broken)
        finally:
            try:
                self._discard()
                self._return_leased()
                self._stop_workers()
                self._settle()
            finally:
                self._wakeup.close()
                if self.peer is not None:
                    self.peer.close()
                self.on_exit()

    def _round(self) -> bool:
        ingest = self._ingest
        if self.ingest_asked and ingest is not None:
            self.ingest_asked = False
            try:
                ingest()
            except StoreError as exc:
                self._store_failed(exc)
        self._assign()
        if self.assign_asked.is_set():
            self.assign_asked.clear()
            self.assigned.set()
        busy = [w for w in self.workers.values() if w.task is not None]
        if self.stopping and not busy and not self._has_work():
            return False
        waits: list[Any] = [self._wakeup, *self.workers]
        waits += [w.conn for w in self.workers.values()]
        deadline = min([w.deadline for w in busy] + [float("inf")])
        peer = self.peer
        if peer is not None:
            waits += peer.waitables()
            deadline = min(deadline, peer.deadline(self.idle, bool(busy or self.leased)))
        if self.retry_at:
            deadline = min(deadline, self.retry_at)
        recheck = self.gate.recheck_in() if self.gate is not None else None
        if recheck is not None:
            deadline = min(deadline, time.monotonic() + recheck)
        if busy and self.memory is not None and self.memory.polls:
            deadline = min(deadline, time.monotonic() + self.memory.poll_in())
        # Idle (set by _assign): the store ran dry with workers free; sleep until a
        # producer wakes us or the earliest scheduled task is due.
        if self.idle and self.maybe_scheduled and not (self.cancel or self.retry_at):
            # From the time the last lease looked: a task due in between is not missed.
            seen = self.schedules
            due = self.store.next_due(self.looked_at)
            if due is None:
                self.maybe_scheduled = False  # until a scheduled put or a restart
                if seen != self.schedules:
                    # One was stored while we looked: a look that missed it must not undo
                    # its scheduled() (a task delayed for 0.5 s then waited forever).
                    self.maybe_scheduled = True
            else:
                wait_s = max(0.0, due - self.clock.time())
                deadline = min(deadline, time.monotonic() + wait_s)
        timeout = None if deadline == float("inf") else max(0.0, deadline - time.monotonic())
        ready: list[Any] = self._waiter.wait(waits, timeout)
        self.idle = False
        if not ready or self._wakeup in ready:
            self.drained = False  # a timer (a due task) or a wakeup: look at the store
        if peer is not None and not ready:
            self.maybe_scheduled = True  # the safety look: a peer's lease may have expired
        for obj in ready:
            if obj is self._wakeup:
                self._wakeup.clear()
            elif peer is not None and peer.owns(obj):
                if peer.on_ready(obj):  # a peer's put (or retry, or expired lease)
                    self.drained = False
                    self.maybe_scheduled = True
            elif isinstance(obj, int):
                self._exited(self.workers[obj])
            else:
                self._receive(obj, ready=True)
        if busy and self.memory is not None and self.memory.polls:
            self._watch_memory(busy)
        now = time.monotonic()
        for w in busy:
            if w.process.sentinel in self.workers and w.task is not None and w.deadline <= now:
                self._timed_out(w)
        self._settle()
        if peer is not None:
            self._peer_round(peer)
        return True

    def _peer_round(self, peer: PeerLink) -> None:
        """Renew the leases held here; resolve futures whose tasks peers finished."""
        held = [t.token for w in self.workers.values() for t in w.tasks]
        held += [t.token for t in self.leased]
        try:
            peer.renew(held, self.clock.time())
            peer.check({t.id for t in held})
        except StoreError as exc:
            self._store_failed(exc)

    def _has_work(self) -> bool:
        if self.cancel or self.retry_at:
            return False
        if self.peer is not None:
            # Peers keep serving the store: stopping waits only for this executor's own
            # futures (run here or by a peer).
            return bool(self.leased) or bool(self.peer.awaited())
        return bool(self.leased) or self.store.has_ready(self.clock.time())

    # -- handing out tasks --------------------------------------------------------------------

    def _discard(self) -> None:
        """Drop the tasks of futures cancelled since the last round from the store."""
        if self.discards:
            ids, self.discards = self.discards, []
            self.store.discard(ids)

    def _assign(self) -> None:
        self._discard()
        if self.killing:
            self._kill_all()
        self.idle = False
        if self.cancel or self.retry_at > time.monotonic():
            return
        self.retry_at = 0.0
        # Spread before stacking: each next task to the worker holding the fewest (a map's
        # 20 long chunks go 10 and 10, not 16 to the first worker's pipeline and 4 to the
        # next one's while the first is still queued up).
        slots = [
            w for _, _, w in sorted(
                (len(w.tasks) + k, i, w)
                for i, w in enumerate(self.workers.values())
                for k in range(w.room(self.depth))
            )
        ]
        if not slots:
            return
        band = self.gate.admit() if self.gate is not None else ALL
        if band != ALL:
            # Lazy mode holds (_round wakes us for the next check): tasks leased ahead wait,
            # and with bypass="high" only HIGH ones are leased, to the front.
            slots = slots[: self._lease_high(len(slots), band)]
            if not slots:
                return
        # Idle before looking at the store: a put from now on wakes us (nudge), so slots
        # left free after this lease need no second look before sleeping.
        self.idle = True
        want = len(slots) - len(self.leased) if band == ALL else 0
        if want > 0 and self.drained and not self.maybe_scheduled:
            want = 0  # the last lease came up short and nothing was put or came due since
        if want > 0:
            # Peers share the store: none takes tasks it has no free worker for.
            ahead = LEASE_AHEAD if self.depth > 1 and self.peer is None else 0
            try:
                asked = max(want, ahead)
                self.looked_at = self.clock.time()
                if self.maybe_scheduled:  # deadlines' bumps to HIGH and expiries first
                    expired = self.store.tick(self.looked_at)
                    if expired:
                        self.resolve([(i, encode_error(TaskExpired(i))) for i in expired])
                got = self.store.lease(self.pool, asked, now=self.looked_at, ttl=self.lease_ttl)
                self.leased += got
                self.drained = len(got) < asked
            except StoreError as exc:
                self._store_failed(exc)
                return
        leased = [self.leased.popleft() for _ in range(min(len(slots), len(self.leased)))]
        dropped: list[LeaseToken] = []
        batches: dict[_Worker, list[Leased]] = {}
        for w, task in zip(slots, leased, strict=False):
            if self.begin(task.token.id):
                batches.setdefault(w, []).append(task)
            else:
                dropped.append(task.token)
        for w, tasks in batches.items():
            self._send(w, tasks)
        if dropped:
            self.store.ack(dropped)
        if len(leased) == len(slots):
            self.idle = False  # every slot taken: an outcome, not a put, wakes us next

    def _lease_high(self, n: int, band: int) -> int:
        """Lease up to ``n`` tasks of bands up to ``band`` ahead of those leased already;
        returns how many. Tasks whose deadline is near were bumped to HIGH: they pass too."""
        if band == NONE:
            return 0
        try:
            now = self.clock.time()
            if self.maybe_scheduled:
                expired = self.store.tick(now)
                if expired:
                    self.resolve([(i, encode_error(TaskExpired(i))) for i in expired])
            high = self.store.lease(self.pool, n, now=now, ttl=self.lease_ttl, max_priority=band)
        except StoreError as exc:
            self._store_failed(exc)
            return 0
        self.leased.extendleft(reversed(high))
        return len(high)

    def _send(self, w: _Worker, tasks: list[Leased]) -> None:
        """One write for all of a worker's new tasks: a system call is the round's cost."""
        first = not w.tasks
        w.tasks.extend(tasks)
        w.budget -= len(tasks)
        if first:
            self._arm(w, time.monotonic())
        try:
            w.conn.send_bytes(_worker.pack_tasks((t.token, t.payload) for t in tasks))
        except OSError:
            pass  # the worker died: its sentinel says so next round, and the task is retried

    def _arm(self, w: _Worker, now: float) -> None:
        """The worker's first task is running from ``now``: arm its timeout."""
        timeout = timeout_of(w.tasks[0].payload) if w.tasks else None
        w.deadline = now + timeout if timeout else float("inf")
        w.since = now

    # -- what comes back ----------------------------------------------------------------------

    def _receive(self, conn: Connection, *, ready: bool = False) -> None:
        """Handle the outcomes ``conn`` holds; ``ready``: wait() just found it readable
        (else it is looked at first, and nothing waits)."""
        w = next((x for x in self.workers.values() if x.conn is conn), None)
        if w is None:
            return  # already handled as exited this round
        try:
            while ready or readable(w.reader.fd):
                ready = False
                for frame in w.reader.read():
                    self._outcome(w, frame)
        except (EOFError, OSError):
            pass  # it exited: the sentinel handles it

    def _outcome(self, w: _Worker, frame: bytes) -> None:
        if frame.startswith(_worker.INIT_FAILED):
            # Acted on once the worker has exited, as ProcessPoolExecutor does: by then it
            # has flushed what its initializer logged.
            w.init_error = frame[_worker.FRAME.size :].decode(errors="replace")
            return
        token = LeaseToken(*_worker.FRAME.unpack_from(frame))
        if w.task is None or w.task.token != token:
            self.stale += 1  # a late outcome of an attempt given up on: fenced off
            return
        task = w.tasks.popleft()
        now = time.monotonic()
        self.run_time += (now - w.since - self.run_time) / 8
        self.depth = max(1, min(PIPELINE, int(SHORT_TASK / max(self.run_time, 1e-6))))
        self._arm(w, now)
        outcome = frame[_worker.FRAME.size :]
        error = error_of(outcome)
        if error is None:
            self.settled.acks.append((token, outcome))
        else:  # raised: retried or not under the task's policy
            kind, message, tb, retryable = error
            self._judge(task, ERROR, w.process.pid, kind, message, tb, retryable, outcome)
        if self.memory is not None and w.budget > 0:
            size = self.memory.over_soft(w.process.pid)
            if size is not None:
                self._retire(w, f"RSS {describe(size)} > max_worker_memory "
                                f"{describe(self.memory.soft or 0)} after task {token.id}")

    def _exited(self, w: _Worker) -> None:
        self._receive(w.conn)  # an outcome sent just before exiting still counts
        w.process.join(1.0)
        code = w.process.exitcode
        del self.workers[w.process.sentinel]
        w.conn.close()
        if w.init_error:
            self._broken(w.init_error)
        task = w.task
        if task is not None and tuple(w.running) == task.token:
            self.crashes += 1
            self._failed(task, code, timeout=None)
            self._requeue_unstarted(w, started=1)
        else:
            # Idle, or killed before it started its first task: no attempt is spent.
            self._requeue_unstarted(w, started=0)
            self._died_idle(w, code)
        if self.memory is not None:
            self.memory.forget(w.process.pid)
        if (not self.stopping or self._has_work()) and len(self.workers) < self.size:
            self._spawn()

    def _died_idle(self, w: _Worker, code: int | None) -> None:
        if code not in (0, None) and not self.stopping:
            self.on_fault(
                Fault("worker-died", time.time(), f"worker {w.process.pid} died before "
                      f"starting a task: {describe_exit(code)}")
            )

    def _timed_out(self, w: _Worker) -> None:
        w.process.kill()
        w.process.join()
        self._receive(w.conn)  # it may have finished in the last instant
        task = w.task
        del self.workers[w.process.sentinel]
        w.conn.close()
        if task is not None:
            self.timeouts += 1
            self._failed(task, w.process.exitcode, timeout=timeout_of(task.payload))
            self._requeue_unstarted(w, started=1)
        self._spawn()

    # -- memory limits (see _limits.py) --------------------------------------------------------

    def _retire(self, w: _Worker, why: str) -> None:
        """The worker takes nothing new, finishes what it holds and exits (then replaced
        unless the pool shrank)."""
        w.budget = 0
        try:
            w.conn.send_bytes(b"")
        except OSError:
            pass  # already gone: its sentinel says so
        self.note(Fault("worker-recycled", time.time(), f"worker {w.process.pid}: {why}"))

    def _watch_memory(self, busy: list[_Worker]) -> None:
        memory = self.memory
        assert memory is not None
        running = {
            w.process.pid: w
            for w in busy
            if w.process.sentinel in self.workers and w.task is not None
        }
        over = memory.poll(list(running))
        if over is None:
            return  # not due yet
        for pid, size in over:
            self._killed_for_memory(running[pid], size)
        size = memory.resize(self.size)
        if size < self.size:
            self.size = size
            live = [w for w in self.workers.values() if w.budget > 0]
            if live:
                why = f"memory pressure: pool shrinks to {size} worker(s)"
                self._retire(min(live, key=lambda w: len(w.tasks)), why)
        elif size > self.size:
            self.size = size
            self._spawn()

    def _killed_for_memory(self, w: _Worker, size: int) -> None:
        w.process.kill()
        w.process.join()
        self._receive(w.conn)  # outcomes sent before the kill still count
        task = w.task
        del self.workers[w.process.sentinel]
        w.conn.close()
        why = (f"killed with RSS {describe(size)} > hard_worker_memory "
               f"{describe(self.memory.hard or 0) if self.memory else '?'}")
        if task is not None and tuple(w.running) == task.token:
            self.crashes += 1
            self._failed(task, w.process.exitcode, timeout=None, why=why)
            self._requeue_unstarted(w, started=1)
        else:
            self._requeue_unstarted(w, started=0)
            self.note(Fault("worker-recycled", time.time(), f"worker {w.process.pid} {why}"))
        if len(self.workers) < self.size:
            self._spawn()

    def _requeue_unstarted(self, w: _Worker, started: int) -> None:
        for queued in list(w.tasks)[started:]:
            self.settled.requeue.append(queued.token)
        w.tasks.clear()

    def _failed(
        self, task: Leased, exitcode: int | None, timeout: float | None, why: str = ""
    ) -> None:
        """The worker running ``task`` died or overran its timeout: a crash or a timeout,
        judged by the task's ``max_attempts`` or ``timeout_retries``."""
        token = task.token
        what = (
            f"task {token.id} ran past its {timeout:g} s timeout; worker killed"
            if timeout
            else f"worker died ({describe_exit(exitcode)}) running task {token.id}"
        ) + (f": {why}" if why else "")
        self.on_fault(
            Fault("task-timeout" if timeout else "worker-crashed", time.time(),
                  f"{what} (delivery {token.attempt})")
        )

        def final(count: int) -> bytes:
            exc: BaseException = (
                TaskTimeout(token.id, timeout, count)
                if timeout
                else WorkerCrashed(token.id, count, exitcode)
            )
            return encode_error(exc)

        kind = "TaskTimeout" if timeout else "WorkerCrashed"
        self._judge(task, TIMEOUT if timeout else CRASH, 0, kind, what, "", True, final)

    def _judge(
        self,
        task: Leased,
        cause: str,
        pid: int,
        kind: str,
        message: str,
        tb: str,
        retryable: bool,
        result: bytes | Callable[[int], bytes],
    ) -> None:
        head = header_of(task.payload)
        failure = Failure(
            time.time(), task.token.id, head.name, task.token.attempt, cause, kind, message,
            tb, pid,
        )
        self.settled.failed.append(
            FailedAttempt(task.token, cause, head.policy, failure, retryable, None, result)
        )

    def _broken(self, tb: str) -> None:
        if not self.stopping:
            self.stopping = self.cancel = True
            self.on_fault(Fault("initializer-failed", time.time(), tb))
            self.on_broken(InitializerFailed(f"the executor's initializer raised:\n{tb}"))

    # -- writing back -------------------------------------------------------------------------

    def _settle(self) -> None:
        s = self.settled
        if not (s.acks or s.failed or s.requeue):
            return
        keep = self.keep_results
        dead: list[tuple[int, bytes]] = []
        try:
            if s.acks:
                tokens = [t for t, _ in s.acks]
                self.store.ack(tokens, results=[o for _, o in s.acks] if keep else None)
            if s.failed:
                now = self.clock.time()
                judged = s.failed if keep else [a._replace(result=None) for a in s.failed]
                verdicts = self.store.fail(judged, now=now)
                for attempt, verdict in zip(s.failed, verdicts, strict=True):
                    if verdict is None:
                        continue
                    if attempt.failure is not None:
                        self.on_failure(attempt.failure)
                    if verdict.retry:
                        self.drained = False
                        if verdict.due > now:
                            self.maybe_scheduled = True
                        continue
                    result = attempt.result
                    if callable(result):
                        result = result(verdict.failures)
                    dead.append((attempt.token.id, result or b""))
            if s.requeue:
                self.store.nack(s.requeue, requeue=True)
                self.drained = False
        except StoreError as exc:
            # Nothing of the failed call was applied; apply what is left again shortly.
            self._store_failed(exc)
            return
        self.settled = Settled()
        self.resolve([(t.id, o) for t, o in s.acks] + dead)

    def _store_failed(self, exc: StoreError) -> None:
        self.retry_at = time.monotonic() + STORE_RETRY
        self.on_fault(Fault("store-error", time.time(), repr(exc)))

    # -- worker processes ---------------------------------------------------------------------

    def start_workers(self) -> None:
        """Start the first workers, from the caller's thread (before ``start()``): forking
        them from the dispatcher thread while the caller runs subprocess.Popen or holds an
        import lock would hand them that pipe or lock (replacements still fork from here;
        the executor steers ``max_tasks_per_child`` away from the fork start method)."""
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        ours, theirs = self.ctx.Pipe()
        running = self.ctx.RawArray("q", 2)  # the token of the task the worker started
        process = self.ctx.Process(
            target=_worker.main,
            args=(
                theirs, running, self.pool, self.initializer, self.initargs, self.max_tasks,
                self.allowed,
            ),
            name=f"durableq-worker-{self.pool}",
        )
        process.start()
        theirs.close()
        budget = self.max_tasks if self.max_tasks is not None else float("inf")
        self.workers[process.sentinel] = _Worker(process, ours, budget, running)

    def _return_leased(self) -> None:
        """Tasks leased ahead and never sent go back to the store."""
        if not self.leased:
            return
        dropped: list[LeaseToken] = []
        back: list[LeaseToken] = []
        for task in self.leased:
            (back if self.begin(task.token.id) else dropped).append(task.token)
        self.leased.clear()
        try:
            self.store.ack(dropped)
            self.store.nack(back, requeue=True)
        except StoreError as exc:
            self.on_fault(Fault("store-error", time.time(), repr(exc)))

    def _stop_workers(self) -> None:
        for w in self.workers.values():
            try:
                w.conn.send_bytes(b"")
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for w in self.workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join()
            w.conn.close()
        self.workers.clear()
