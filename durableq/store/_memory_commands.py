"""Command queues in memory: the ``CommandStore`` contract for ``MemoryStore``.

Rows in a dict, an ordered id set per target and a map from (target, type) to the ready
upsert of that type, all under one ``Condition`` that also wakes this process's watchers.
Nothing survives the process; the reference for the contract and the benchmark baseline.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from .._errors import CommandStateError
from .._records import LeaseToken, State
from ._commandstore import (
    CommandCounts,
    CommandRow,
    check_state,
    holder_alive,
    missing_error,
    select_live,
    to_row,
)

_READY, _HELD, _IN_FLIGHT = int(State.READY), int(State.HELD), int(State.IN_FLIGHT)
_init_lock = threading.Lock()


@dataclass(slots=True)
class _Command:
    id: int
    target: str
    type: str | None
    payload: bytes
    created: float
    expires: float | None
    hold: bool
    state: int
    keyed: bool
    attempt: int = 0
    holder: int | None = None
    deadline: float = 0.0

    def layout(self) -> tuple[object, ...]:
        """This command as a ``ROW_LAYOUT`` tuple."""
        return (self.id, self.target, self.type, self.payload, self.created, self.expires,
                self.hold, self.state, self.attempt, self.keyed, self.holder, self.deadline)

    def live(self, now: float) -> bool:
        return self.expires is None or self.expires > now


class _Commands:
    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.rows: dict[int, _Command] = {}
        self.by_target: dict[str, dict[int, None]] = {}  # ids, kept in ascending order
        self.latest: dict[tuple[str, str], int] = {}  # (target, type) -> ready upsert's id
        self.last_id = 0
        self.versions: dict[str, int] = {}  # per target, bumped to wake watchers

    def add(self, cmd: _Command) -> None:
        self.rows[cmd.id] = cmd
        self.by_target.setdefault(cmd.target, {})[cmd.id] = None

    def remove(self, cmd: _Command) -> None:
        del self.rows[cmd.id]
        ids = self.by_target[cmd.target]
        del ids[cmd.id]
        if not ids:
            del self.by_target[cmd.target]
        if cmd.keyed and cmd.type is not None and self.latest.get((cmd.target, cmd.type)) == cmd.id:
            del self.latest[(cmd.target, cmd.type)]

    def of(self, target: str, now: float, states: tuple[int, ...]) -> list[_Command]:
        cmds = (self.rows[i] for i in self.by_target.get(target, ()))
        return sorted((c for c in cmds if c.state in states and c.live(now)), key=lambda c: c.id)

    def wake(self, target: str) -> None:
        self.versions[target] = self.versions.get(target, 0) + 1
        self.cond.notify_all()


class MemoryCommands:
    """The ``CommandStore`` verbs for ``MemoryStore``, state created on first use."""

    def _command_state(self) -> _Commands:
        state: _Commands | None = self.__dict__.get("_cq_state")
        if state is None:
            with _init_lock:
                state = self.__dict__.setdefault("_cq_state", _Commands())
        return state

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
        s = self._command_state()
        with s.cond:
            s.last_id += 1
            s.add(_Command(s.last_id, target, command_type, bytes(payload), now, expires_at,
                           hold, _HELD if hold else _READY, keyed=False))
            if not hold:
                s.wake(target)
            return s.last_id

    def command_upsert(
        self, target: str, command_type: str, payload: bytes, *, expires_at: float | None,
        now: float,
    ) -> int:
        s = self._command_state()
        with s.cond:
            id_ = s.latest.get((target, command_type))
            if id_ is not None:
                cmd = s.rows[id_]
                cmd.payload, cmd.expires = bytes(payload), expires_at
            else:
                s.last_id += 1
                id_ = s.latest[(target, command_type)] = s.last_id
                s.add(_Command(id_, target, command_type, bytes(payload), now, expires_at,
                               False, _READY, keyed=True))
            s.wake(target)
            return id_

    def command_pending(
        self, target: str, *, now: float, held_only: bool = False
    ) -> list[CommandRow]:
        s = self._command_state()
        states = (_HELD,) if held_only else (_READY, _HELD, _IN_FLIGHT)
        with s.cond:
            rows = [c.layout() for c in s.of(target, now, states)]
        live, _ = select_live(rows, now)
        return [to_row(r) for r in live]

    def command_drain(
        self, target: str, *, now: float, limit: int | None, lease: float | None, holder: int
    ) -> list[CommandRow]:
        s = self._command_state()
        with s.cond:
            live, superseded = select_live(
                [c.layout() for c in s.of(target, now, (_READY, _IN_FLIGHT))], now,
                self._holder_alive,
            )
            taken = [s.rows[r[0]] for r in live[:limit]]
            for id_ in superseded:
                s.remove(s.rows[id_])
            out = []
            for cmd in taken:
                cmd.attempt += 1
                out.append(to_row(cmd.layout()))
                if lease is None:
                    s.remove(cmd)
                    continue
                if cmd.keyed and cmd.type is not None:
                    s.latest.pop((cmd.target, cmd.type), None)
                cmd.state, cmd.holder, cmd.deadline = _IN_FLIGHT, holder, now + lease
        return out

    def _holder_alive(self, pid: int | None) -> bool:
        """Whether a drain must leave ``pid``'s unexpired lease alone (a replica overrides
        this with the requester's judgement)."""
        return holder_alive(pid)

    def _command_leased(self, s: _Commands, token: LeaseToken) -> _Command | None:
        cmd = s.rows.get(token.id)
        if cmd is None or cmd.state != _IN_FLIGHT or cmd.attempt != token.attempt:
            return None
        return cmd

    def command_ack(self, tokens: Sequence[LeaseToken]) -> int:
        s = self._command_state()
        with s.cond:
            done = [c for c in (self._command_leased(s, LeaseToken(*t)) for t in tokens) if c]
            for cmd in done:
                s.remove(cmd)
        return len(done)

    def command_nack(self, tokens: Sequence[LeaseToken]) -> int:
        s = self._command_state()
        applied = 0
        with s.cond:
            for token in tokens:
                cmd = self._command_leased(s, LeaseToken(*token))
                if cmd is None:
                    continue
                applied += 1
                if cmd.keyed and cmd.type is not None:
                    if (cmd.target, cmd.type) in s.latest:
                        s.remove(cmd)  # a newer intent replaced it meanwhile
                        continue
                    s.latest[(cmd.target, cmd.type)] = cmd.id
                cmd.state, cmd.holder, cmd.deadline = _READY, None, 0.0
                s.wake(cmd.target)
        return applied

    def _command_stored(self, s: _Commands, operation: str, command_id: int) -> _Command:
        cmd = s.rows.get(command_id)
        if cmd is None:
            raise missing_error(operation, command_id, s.last_id)
        return cmd

    def command_confirm(self, command_id: int, *, now: float) -> str:
        s = self._command_state()
        with s.cond:
            cmd = self._command_stored(s, "confirm", command_id)
            check_state("confirm", command_id, cmd.state, cmd.expires, now)
            if not cmd.hold:
                raise CommandStateError(command_id, "confirm", "it does not require confirmation")
            cmd.state = _READY
            s.wake(cmd.target)
            return cmd.target

    def command_cancel(self, command_id: int, *, now: float) -> str:
        s = self._command_state()
        with s.cond:
            cmd = self._command_stored(s, "cancel", command_id)
            if cmd.state == _IN_FLIGHT:
                check_state("cancel", command_id, cmd.state, None, now)
            s.remove(cmd)
            return cmd.target

    def command_expire(self, now: float) -> int:
        s = self._command_state()
        with s.cond:
            gone = [c for c in s.rows.values() if not c.live(now)]
            for cmd in gone:
                s.remove(cmd)
        return len(gone)

    def command_counts(self, now: float) -> CommandCounts:
        s = self._command_state()
        with s.cond:
            live = [c.state for c in s.rows.values() if c.live(now)]
            return CommandCounts(
                ready=live.count(_READY), held=live.count(_HELD),
                in_flight=live.count(_IN_FLIGHT), expired=len(s.rows) - len(live),
            )

    def command_watch(self, target: str) -> MemoryWatch:
        return MemoryWatch(self._command_state(), target)

    def command_close(self) -> None:
        """Nothing to release: the commands live as long as the store."""


class MemoryWatch:
    """A watcher woken by this process's producers (a ``MemoryStore`` is never shared)."""

    def __init__(self, state: _Commands, target: str) -> None:
        self._state, self._target = state, target
        with state.cond:
            self._seen = state.versions.get(target, 0)

    def wait(self, timeout: float | None) -> bool:
        s = self._state
        with s.cond:
            woken = s.cond.wait_for(lambda: s.versions.get(self._target, 0) != self._seen,
                                    timeout)
            self._seen = s.versions.get(self._target, 0)
        return woken

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> MemoryWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
