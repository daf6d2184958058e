"""Command queues on PostgreSQL: the ``CommandStore`` contract for ``PostgresStore``.

Rows in ``durableq_command``; a partial unique index keeps one ready upsert per (queue,
target, type). Each write takes a transaction-scoped advisory lock on its (queue, target),
so the verbs of one target apply one after another while other targets go on; a drain
reads the target's rows, picks the live ones in Python (a holder pid is checked only on
its own host) and writes its choice in the same transaction. Put, upsert, confirm and
nack notify the target's channel; ``command_watch`` listens on it.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .._errors import CommandStateError
from .._records import LeaseToken, State
from ._commandstore import CommandCounts, CommandRow, check_state, missing_error, select_live
from ._commandstore import to_row as _to_row

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")
_READY, _HELD, _IN_FLIGHT = int(State.READY), int(State.HELD), int(State.IN_FLIGHT)
_HOST: Final = socket.gethostname()
_COLUMNS: Final = (
    "id, target, type, payload, created, expires, hold, state, attempt, keyed, holder, "
    "deadline, holder_host"
)


def _layout(r: Sequence[Any]) -> tuple[Any, ...]:
    """A row as a ``ROW_LAYOUT`` tuple; a holder on another host is unknown (None), so only
    its lease deadline ends its lease."""
    holder = r[10] if r[12] == _HOST else None
    return (r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], holder, r[11])


class PostgresCommands:
    """The ``CommandStore`` verbs for ``PostgresStore``."""

    if TYPE_CHECKING:  # provided by PostgresStore
        name: str
        timeout: float

        def connect(self) -> psycopg.Connection[Any]: ...
        def close(self) -> None: ...
        def _tx(self, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T: ...

    def _target_lock(self, con: psycopg.Connection[Any], target: str) -> None:
        con.execute("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))",
                    (self.name, target))

    def _wake(self, con: psycopg.Connection[Any], target: str) -> None:
        from ._postgres import channel

        con.execute("SELECT pg_notify(%s, '')", (channel(self.name, target),))

    def _command_new_id(self, con: psycopg.Connection[Any]) -> int:
        row = con.execute(
            "UPDATE durableq_queue SET command_last_id = command_last_id + 1 WHERE queue = %s "
            "RETURNING command_last_id", (self.name,),
        ).fetchone()
        assert row is not None, "the queue's row is made when the store is first used"
        return int(row[0])

    def _command_insert(self, con: psycopg.Connection[Any], target: str, type_: str | None,
                payload: bytes, now: float, expires: float | None, hold: bool,
                keyed: bool) -> int:
        id_ = self._command_new_id(con)
        con.execute(
            "INSERT INTO durableq_command (queue, id, target, type, payload, created, expires,"
            " hold, state, keyed) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (self.name, id_, target, type_, bytes(payload), now, expires, hold,
             _HELD if hold else _READY, keyed),
        )
        return id_

    def command_put(
        self,
        target: str,
        payload: bytes,
        *,
        command_type: str | None,
        expires_at: float | None,
        hold: bool,
        now: float,
    ) -> int:
        def put(con: psycopg.Connection[Any]) -> int:
            id_ = self._command_insert(
                con, target, command_type, payload, now, expires_at, hold, False
            )
            if not hold:
                self._wake(con, target)
            return id_

        return self._tx("command put", put)

    def command_upsert(
        self, target: str, command_type: str, payload: bytes, *, expires_at: float | None,
        now: float,
    ) -> int:
        def upsert(con: psycopg.Connection[Any]) -> int:
            self._target_lock(con, target)
            row = con.execute(
                "UPDATE durableq_command SET payload = %s, expires = %s WHERE queue = %s "
                "AND target = %s AND type = %s AND keyed AND state = 0 RETURNING id",
                (bytes(payload), expires_at, self.name, target, command_type),
            ).fetchone()
            id_ = row[0] if row else self._command_insert(
                con, target, command_type, payload, now, expires_at, False, True
            )
            self._wake(con, target)
            return int(id_)

        return self._tx("command upsert", upsert)

    def _command_rows(self, con: psycopg.Connection[Any], target: str, now: float,
              states: tuple[int, ...]) -> list[tuple[Any, ...]]:
        return [_layout(r) for r in con.execute(
            f"SELECT {_COLUMNS} FROM durableq_command WHERE queue = %s AND target = %s AND "
            "state = ANY(%s) AND (expires IS NULL OR expires > %s) ORDER BY id",
            (self.name, target, list(states), now),
        )]

    def command_pending(
        self, target: str, *, now: float, held_only: bool = False
    ) -> list[CommandRow]:
        states = (_HELD,) if held_only else (_READY, _HELD, _IN_FLIGHT)
        rows = self._tx("command pending", lambda con: self._command_rows(con, target, now, states))
        live, _ = select_live(rows, now)
        return [_to_row(r) for r in live]

    def command_drain(
        self, target: str, *, now: float, limit: int | None, lease: float | None, holder: int
    ) -> list[CommandRow]:
        def drain(con: psycopg.Connection[Any]) -> list[CommandRow]:
            # Look before locking: an idle consumer's drain takes no lock.
            if not con.execute(
                "SELECT EXISTS (SELECT 1 FROM durableq_command WHERE queue = %s AND target = "
                "%s AND state IN (0, 3))", (self.name, target),
            ).fetchone()[0]:  # type: ignore[index]
                return []
            self._target_lock(con, target)
            live, superseded = select_live(
                self._command_rows(con, target, now, (_READY, _IN_FLIGHT)), now
            )
            taken = live[:limit]
            ids = [r[0] for r in taken]
            gone = list(superseded) + (ids if lease is None else [])
            if gone:
                con.execute("DELETE FROM durableq_command WHERE queue = %s AND id = ANY(%s)",
                            (self.name, gone))
            if lease is not None and ids:
                con.execute(
                    "UPDATE durableq_command SET state = 3, attempt = attempt + 1, holder = %s,"
                    " holder_host = %s, deadline = %s WHERE queue = %s AND id = ANY(%s)",
                    (holder, _HOST, now + lease, self.name, ids),
                )
            return [_to_row(r, r[8] + 1) for r in taken]

        return self._tx("command drain", drain)

    def _command_settle(self, tokens: Sequence[LeaseToken], nack: bool) -> int:
        if not tokens:
            return 0

        def settle(con: psycopg.Connection[Any]) -> int:
            rows = con.execute(
                "SELECT c.id, c.target, c.type, c.keyed FROM durableq_command AS c "
                "JOIN unnest(%s::bigint[], %s::integer[]) AS t(id, attempt) "
                "ON c.id = t.id AND c.attempt = t.attempt WHERE c.queue = %s AND c.state = 3 "
                "ORDER BY c.id", ([int(t[0]) for t in tokens], [int(t[1]) for t in tokens],
                                  self.name),
            ).fetchall()
            for id_, target, type_, keyed in rows:
                if nack:
                    self._target_lock(con, target)
                    newer = keyed and con.execute(
                        "SELECT 1 FROM durableq_command WHERE queue = %s AND target = %s AND "
                        "type = %s AND keyed AND state = 0", (self.name, target, type_),
                    ).fetchone()
                    if not newer:
                        con.execute(
                            "UPDATE durableq_command SET state = 0, holder = NULL, "
                            "holder_host = NULL, deadline = 0 WHERE queue = %s AND id = %s",
                            (self.name, id_),
                        )
                        self._wake(con, target)
                        continue
                con.execute("DELETE FROM durableq_command WHERE queue = %s AND id = %s",
                            (self.name, id_))
            return len(rows)

        return self._tx("command settle", settle)

    def command_ack(self, tokens: Sequence[LeaseToken]) -> int:
        return self._command_settle(tokens, nack=False)

    def command_nack(self, tokens: Sequence[LeaseToken]) -> int:
        return self._command_settle(tokens, nack=True)

    def _command_decide(self, operation: str, command_id: int, now: float) -> str:
        def decide(con: psycopg.Connection[Any]) -> str:
            row = con.execute(
                "SELECT target, state, expires, hold FROM durableq_command WHERE queue = %s "
                "AND id = %s FOR UPDATE", (self.name, command_id),
            ).fetchone()
            if row is None:
                (last,) = con.execute(
                    "SELECT command_last_id FROM durableq_queue WHERE queue = %s", (self.name,)
                ).fetchone() or (0,)
                raise missing_error(operation, command_id, int(last))
            target, state, expires, hold = row
            if operation == "cancel":
                if state == _IN_FLIGHT:
                    check_state("cancel", command_id, state, None, now)
                con.execute("DELETE FROM durableq_command WHERE queue = %s AND id = %s",
                            (self.name, command_id))
                return str(target)
            check_state("confirm", command_id, state, expires, now)
            if not hold:
                raise CommandStateError(command_id, "confirm", "it does not require confirmation")
            con.execute("UPDATE durableq_command SET state = 0 WHERE queue = %s AND id = %s",
                        (self.name, command_id))
            self._wake(con, target)
            return str(target)

        return self._tx(f"command {operation}", decide)

    def command_confirm(self, command_id: int, *, now: float) -> str:
        return self._command_decide("confirm", command_id, now)

    def command_cancel(self, command_id: int, *, now: float) -> str:
        return self._command_decide("cancel", command_id, now)

    def command_expire(self, now: float) -> int:
        return self._tx("command expire", lambda con: con.execute(
            "DELETE FROM durableq_command WHERE queue = %s AND expires <= %s", (self.name, now)
        ).rowcount)

    def command_counts(self, now: float) -> CommandCounts:
        rows = self._tx("command counts", lambda con: con.execute(
            "SELECT state, expires IS NOT NULL AND expires <= %s, count(*) FROM "
            "durableq_command WHERE queue = %s GROUP BY 1, 2", (now, self.name),
        ).fetchall())
        live = {s: n for s, expired, n in rows if not expired}
        return CommandCounts(live.get(_READY, 0), live.get(_HELD, 0),
                             live.get(_IN_FLIGHT, 0), sum(n for _, e, n in rows if e))

    def command_watch(self, target: str) -> PostgresWatch:
        from ._postgres import channel

        return PostgresWatch(self, channel(self.name, target))

    def command_close(self) -> None:
        """Close this process's connections (shared with the message verbs, which open
        new ones when next used)."""
        self.close()


class PostgresWatch:
    """A ``LISTEN`` on one target's channel, on a connection of its own; listening before
    it returns, so a command committed afterwards always ends a wait."""

    def __init__(self, store: PostgresCommands, name: str) -> None:
        self._store, self._channel = store, name
        self._con: psycopg.Connection[Any] | None = None
        store._tx("command watch", lambda con: None)  # the schema exists; the server answers
        self._listen()

    def _listen(self) -> None:
        self._con = self._store.connect()
        self._con.execute(f'LISTEN "{self._channel}"')

    def wait(self, timeout: float | None) -> bool:
        con = self._con
        if con is None:
            return False
        try:
            if next(iter(con.notifies(timeout=0, stop_after=1)), None) is not None:
                return True
            ready, _, _ = select.select([con.fileno()], [], [], timeout)
            if not ready:
                return False
            woken = next(iter(con.notifies(timeout=0, stop_after=1)), None) is not None
            for _ in con.notifies(timeout=0):
                pass  # drain the burst: one wakeup is enough
            return woken
        except Exception as exc:
            from ._postgres import import_psycopg

            pg = import_psycopg()
            if not isinstance(exc, pg.OperationalError):
                raise
            # The server restarted: listen again; what came meanwhile may be ready.
            con.close()
            deadline = time.monotonic() + self._store.timeout
            while True:
                try:
                    self._listen()
                    return True
                except pg.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> PostgresWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
