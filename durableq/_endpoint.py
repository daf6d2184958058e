"""``Endpoint``: a bridge from a RabbitMQ task queue to a local durable ``Executor``.

```
 broker  <id>.tasks --(exclusive consumer, manual ack)--> Endpoint --submit--> Executor
                                                          (ack once the task is committed)
 broker  <id>.results <--(publisher confirms)-- outbox <--(task done)-- Executor futures
```

- **Tasks** are JSON objects ``{"task_id": str, "task": name, "args": [...], "kwargs":
  {...}}``; ``task`` names one of the callables the endpoint was given (nothing read from
  the broker is imported or unpickled). A task is acked to the broker only after the
  executor committed it, so a crash between the two runs it again (at least once).
- **Results** are JSON objects ``{"task_id", "ok", "result"}`` or ``{"task_id", "ok":
  false, "error": {"type", "message"}}``, published persistent with the task id as
  ``message_id``: a result published twice is the same result, and a consumer keeps one
  per task id. Each is first committed to a local outbox (a ``DiskcacheStore`` beside
  the executor's directory), then published with confirms, then dropped from the outbox.
- **The broker goes away**: the executor keeps running the tasks it has; results wait in
  the outbox; ``fault`` (an Event) is set; the endpoint reconnects with backoff (to
  ``BACKOFF_CAP``), takes the exclusive consumer again, clears ``fault`` and publishes
  everything pending. A restarted endpoint publishes the results of tasks an earlier run
  left (``Executor.recovered()``) and whatever its outbox still holds.
- **A young queue is not yet durable**: a broker killed moments after declaring a durable
  queue can come back without it, and without the confirmed messages it held (RabbitMQ
  3.10 came back without about 1 in 8 queues SIGKILLed within 0.4 s of being declared,
  and once without the results of one 1.7 s old). So while a connection is younger than
  ``settle`` seconds, a confirmed result stays leased in the outbox; if the connection
  drops before then, those results are published again after the reconnect (duplicates,
  never losses); once it is older, they are dropped.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from ._errors import ConfigurationError, EndpointBusy, StoreError
from ._executor import Executor
from ._records import LeaseToken
from .store._diskcache import DiskcacheStore
from .store._rabbitmq_log import import_pika

log = logging.getLogger("durableq.endpoint")

#: Longest pause between two reconnect attempts.
BACKOFF_CAP: Final = 2.0
#: Results published per outbox lease.
BATCH: Final = 100
#: Seconds a connection's queue declarations are held to be young (see the module docstring):
#: longer covers a slower broker, but results published meanwhile are sent again after a
#: drop. The oldest queue we saw a killed broker forget was 1.7 s old.
SETTLE: Final = 5.0
#: An outbox lease outlives any publish: a crashed run's leases come back at the next start.
_OUTBOX_TTL: Final = 3600.0


def run_task(task_id: str, fn: Callable[..., Any], args: list[Any],
             kwargs: dict[str, Any]) -> bytes:
    """Run one task in a worker; its outcome as the JSON result message (a raised exception
    is an outcome too: the task ran)."""
    try:
        value = fn(*args, **kwargs)
        return json.dumps({"task_id": task_id, "ok": True, "result": value}).encode()
    except Exception as exc:
        error = {"type": type(exc).__name__, "message": str(exc)}
        return json.dumps({"task_id": task_id, "ok": False, "error": error}).encode()


def _failed(task_id: str, exc: BaseException) -> bytes:
    error = {"type": type(exc).__name__, "message": str(exc)}
    return json.dumps({"task_id": task_id, "ok": False, "error": error}).encode()


class Endpoint:
    """Serve ``<endpoint_id>.tasks`` from a RabbitMQ broker on a local durable executor.

    Args:
        endpoint_id: names the broker queues ``<endpoint_id>.tasks`` and
            ``<endpoint_id>.results``.
        broker: an AMQP URL, e.g. ``"amqp://user:pass@mq-host:5672/%2F"``.
        executor: a durable ``Executor`` (one with a ``path``) that runs the tasks.
        tasks: the callables a task may name, by name (module-level, so workers can load
            them).
        prefetch: tasks taken from the broker ahead of the executor (unacked until
            committed locally; more keeps workers busy, fewer leaves more for a
            successor).
        settle: seconds after each (re)connect during which confirmed results are kept
            in the outbox, to be published again if the connection drops: a broker
            killed that soon after declaring ``<endpoint_id>.results`` may have lost the
            queue with them. ``0`` trusts every confirm at once.

    Raises:
        EndpointBusy: another endpoint consumes ``<endpoint_id>.tasks``.
        StoreError: the broker cannot be reached now.
        ConfigurationError: pika is not installed, or the executor is not durable.
    """

    def __init__(self, endpoint_id: str, *, broker: str, executor: Executor,
                 tasks: Mapping[str, Callable[..., Any]], prefetch: int = 16,
                 settle: float = SETTLE) -> None:
        self._pika = import_pika()
        if not isinstance(endpoint_id, str) or not endpoint_id:
            raise ValueError(f"endpoint_id must be a non-empty string, not {endpoint_id!r}")
        if executor.path is None:
            raise ConfigurationError("Endpoint needs a durable executor: Executor(path=...)")
        if not (isinstance(prefetch, int) and prefetch >= 1):
            raise ValueError(f"prefetch must be an int >= 1, not {prefetch!r}")
        if not (isinstance(settle, (int, float)) and 0 <= settle < _OUTBOX_TTL):
            raise ValueError(f"settle must be seconds in [0, {_OUTBOX_TTL:g}), not {settle!r}")
        self.endpoint_id, self.broker, self.executor = endpoint_id, broker, executor
        self._tasks = dict(tasks)
        self._prefetch, self._settle = prefetch, float(settle)
        #: Published results kept leased until the connection is ``settle`` old.
        self._unsettled: list[LeaseToken] = []
        self._young_until = 0.0  # monotonic time the current connection stops being young
        self.fault = threading.Event()  #: set while the broker is unreachable
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._drained = threading.Event()
        self._con: Any = None
        self._channel: Any = None
        self._connect()  # here, so that a refusal reaches the caller
        # Opened once the broker made this the only endpoint of its id.
        self._outbox = DiskcacheStore(f"{os.fspath(executor.path)}.{endpoint_id}.outbox")
        self._outbox.requeue_expired(float("inf"))  # leases of an earlier run
        self._thread = threading.Thread(target=self._run, name=f"durableq-endpoint-{endpoint_id}",
                                        daemon=True)
        self._thread.start()
        for fut in executor.recovered().values():
            self._watch(fut, "")

    # -- the broker connection -----------------------------------------------------------

    def _connect(self) -> None:
        pika = self._pika
        params = pika.URLParameters(self.broker)
        params.connection_attempts = 1
        try:
            con = pika.BlockingConnection(params)
        except pika.exceptions.AMQPError as exc:
            raise StoreError(f"endpoint {self.endpoint_id!r}: broker unreachable: {exc!r}"
                             ) from exc
        try:
            channel = con.channel()
            channel.confirm_delivery()
            channel.queue_declare(f"{self.endpoint_id}.tasks", durable=True)
            channel.queue_declare(f"{self.endpoint_id}.results", durable=True)
            channel.basic_qos(prefetch_count=self._prefetch)
            channel.basic_consume(f"{self.endpoint_id}.tasks", self._on_task, exclusive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            con.close()
            if exc.reply_code == 403:  # ACCESS_REFUSED: an exclusive consumer exists
                raise EndpointBusy(self.endpoint_id) from None
            raise StoreError(f"endpoint {self.endpoint_id!r}: {exc!r}") from exc
        except BaseException:
            if con.is_open:
                con.close()
            raise
        self._con, self._channel = con, channel
        self._young_until = time.monotonic() + self._settle
        con.call_later(self._settle, self._settled)
        self.fault.clear()
        self.connected.set()

    def _run(self) -> None:
        pause = 0.05
        while not self._stopping.is_set():
            try:
                if self._con is None:
                    self._connect()
                    pause = 0.05
                self._publish_pending()
                self._channel.start_consuming()  # until close() or the connection drops
            except (EndpointBusy, StoreError, self._pika.exceptions.AMQPError, OSError) as exc:
                if not self._stopping.is_set():
                    log.warning("endpoint %s: broker connection lost (%r); reconnecting",
                                self.endpoint_id, exc)
            finally:
                self._disconnect()
            if not self._stopping.is_set():
                self.fault.set()
            self._stopping.wait(pause)  # backoff; close() ends it at once
            pause = min(pause * 2, BACKOFF_CAP)

    def _disconnect(self) -> None:
        self.connected.clear()
        con, self._con, self._channel = self._con, None, None
        if con is not None and con.is_open:
            try:
                con.close()
            except Exception:
                pass  # already broken: nothing more to release
        with self._lock:
            young, self._unsettled = self._unsettled, []
        try:
            # Confirmed on a connection that dropped young: the broker may have lost them
            # with the queue (see SETTLE), so they are published again.
            self._outbox.nack(young, requeue=True)
        except StoreError:
            log.exception("endpoint %s: %d published results stay leased until the next "
                          "start", self.endpoint_id, len(young))

    def _settled(self) -> None:
        """The connection is ``settle`` old: its queues outlive a broker crash from now on,
        and so do the results confirmed into them (run on the connection's thread)."""
        with self._lock:
            settled, self._unsettled = self._unsettled, []
        self._outbox.ack(settled)

    # -- tasks in, results out -----------------------------------------------------------

    def _on_task(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        task_id = ""
        try:
            task = json.loads(body)
            task_id = str(task["task_id"])
            fn = self._tasks[task["task"]]
            args, kwargs = list(task.get("args", [])), dict(task.get("kwargs", {}))
        except (ValueError, KeyError, TypeError) as exc:
            reason = ConfigurationError(f"not a task of endpoint {self.endpoint_id!r}: "
                                        f"{exc!r} (tasks: {sorted(self._tasks)})")
            self._outbox.put_many([_failed(task_id or str(props.message_id or ""), reason)])
        else:
            self._watch(self.executor.submit(run_task, task_id, fn, args, kwargs), task_id)
        channel.basic_ack(method.delivery_tag)  # committed (executor or outbox): safe
        self._publish_pending()

    def _watch(self, fut: concurrent.futures.Future[Any], task_id: str) -> None:
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(lambda f: self._on_done(f, task_id))

    def _on_done(self, fut: concurrent.futures.Future[Any], task_id: str) -> None:
        try:
            outcome = fut.result()
        except BaseException as exc:  # the task never ran through: crashed, timed out
            if not task_id:  # an earlier run's: its id went with that run's memory
                log.error("endpoint %s: a task of an earlier run failed: %r (its failure "
                          "is in the executor's failure log)", self.endpoint_id, exc)
                with self._lock:
                    self._pending.discard(fut)
                return
            outcome = _failed(task_id, exc)
        try:
            self._outbox.put_many([outcome])
        except StoreError:
            log.exception("endpoint %s: cannot keep the result of task %s",
                          self.endpoint_id, task_id)
        with self._lock:
            self._pending.discard(fut)
        con = self._con
        if con is not None:
            try:
                con.add_callback_threadsafe(self._publish_pending)
            except Exception:
                pass  # disconnected: the reconnect publishes it

    def _publish_pending(self) -> None:
        """Publish every result in the outbox (called on the connection's thread)."""
        pika, channel = self._pika, self._channel
        if channel is None:
            return
        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                     content_type="application/json")
        while batch := self._outbox.lease("endpoint", BATCH, now=time.time(), ttl=_OUTBOX_TTL):
            done = []
            try:
                for item in batch:
                    props.message_id = json.loads(item.payload)["task_id"]
                    channel.basic_publish("", f"{self.endpoint_id}.results", item.payload,
                                          props, mandatory=True)
                    done.append(item.token)
            finally:
                if time.monotonic() < self._young_until:
                    with self._lock:
                        self._unsettled += done  # until _settled() or _disconnect()
                else:
                    self._outbox.ack(done)
                rest = [i.token for i in batch if i.token not in done]
                if rest:
                    self._outbox.nack(rest, requeue=True)
        self._drained.set()

    def pending(self) -> int:
        """Results committed locally and not yet published."""
        counts = self._outbox.counts()
        with self._lock:
            kept = len(self._unsettled)
        return counts.ready + counts.in_flight - kept

    # -- lifetime ------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Stop taking tasks, wait (up to ``timeout``) for the tasks taken to finish and
        their results to be published, then disconnect. What is left stays durable in the
        executor and the outbox for the next endpoint."""
        with self._lock:
            pending = list(self._pending)
        concurrent.futures.wait(pending, timeout)
        con = self._con
        if con is not None and self.pending():
            self._drained.clear()
            try:
                con.add_callback_threadsafe(self._publish_pending)
                self._drained.wait(timeout)
            except Exception:
                pass  # disconnected: the results stay in the outbox
        self._stopping.set()
        con, channel = self._con, self._channel
        if con is not None:
            try:
                con.add_callback_threadsafe(channel.stop_consuming)
            except Exception:
                pass  # already down: the thread sees _stopping
        self._thread.join(30)
        self._outbox.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
