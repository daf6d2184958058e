"""The failure-policy reads and repairs every queue-like class offers (Queue, Executor,
Pool): one implementation, over two hooks each class provides."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from typing import Any

from ._records import Failure, Record
from ._report import ErrorGroup

Since = datetime.datetime | datetime.timedelta | float | None


class AdminMixin:
    """``failures``, ``report``, ``dead_letters``, ``retry_dead``, ``purge_dead``,
    ``history`` and ``replay``, run by the queue's owner on its store."""

    def _admin(self, name: str, *args: Any) -> Any:
        raise NotImplementedError

    def _decode(self, body: bytes) -> Any:
        raise NotImplementedError

    def _decoded(self, records: list[Record]) -> list[Record]:
        out = []
        for rec in records:
            try:
                body = self._decode(rec.body)
            except Exception:
                body = rec.body  # undecodable: shown as stored
            out.append(dataclasses.replace(rec, body=body))
        return out

    def failures(self, since: Since = None, limit: int | None = 100) -> list[Failure]:
        """Failed attempts from the durable failure log, oldest first: time, id, task name,
        attempt, cause, exception type, message, traceback and process id.

        ``since``: a datetime, a timedelta (that long ago) or epoch seconds; ``limit``: the
        newest N (None: all)."""
        return list(self._admin("failures", since, limit))

    def report(self, since: Since = None) -> list[ErrorGroup]:
        """Recurring errors: failures grouped by exception type, message (numbers, ids and
        addresses masked) and raising frame, most frequent first, each with its count, tasks
        affected, first and last seen and a sample traceback."""
        return list(self._admin("report", since))

    def dead_letters(self, limit: int | None = None) -> list[Record]:
        """Messages whose last attempt failed (or that were nacked without requeue),
        newest first, with their decoded bodies."""
        return self._decoded(self._admin("dead_letters", limit))

    def retry_dead(self, ids: int | Iterable[int] | None = None) -> list[int]:
        """Put dead messages (all when ``ids`` is None) back to ready, with fresh failure
        budgets; returns the ids revived."""
        return list(self._admin("retry_dead", None if ids is None else _list(ids)))

    def purge_dead(self, older_than: float | datetime.timedelta | None = None) -> int:
        """Delete dead messages that died more than ``older_than`` ago (all when None);
        returns how many."""
        return int(self._admin("purge_dead", older_than))

    def history(
        self, since: Since = None, state: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Finished messages kept per the ``history=`` retention, newest first: ``state``
        ``"done"``, ``"expired"``, ``"dead"`` (or several; None: all)."""
        if state is not None and not isinstance(state, str):
            state = list(state)
        return self._decoded(self._admin("history", since, state, limit))

    def replay(self, ids: int | Iterable[int]) -> list[int]:
        """Enqueue copies of finished messages as new messages; returns their new ids."""
        return list(self._admin("replay", _list(ids)))


def _list(ids: int | Iterable[int]) -> list[int]:
    return [ids] if isinstance(ids, int) else list(ids)
