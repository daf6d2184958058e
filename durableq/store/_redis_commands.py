"""Command queues on Redis: the ``CommandStore`` contract for ``RedisStore``.

A command is a hash ``P..'c:'..id`` (fields ``tg`` target, ``ty`` type, ``p`` payload, ``cr``
created, ``ex`` expires, ``ho`` needs confirmation, ``st`` state, ``at`` attempt, ``ke``
keyed (an upsert), ``hd``/``hh`` holder pid and host, ``dl`` lease deadline), listed in
``P..'ct:'..target`` (sorted by id), in ``P..'cs:'..state`` and, with an expiry, in
``P..'cx'``; ``P..'cl'`` maps target NUL type to the ready upsert of that type (latest
intent wins). A drain reads a target's rows, picks the live ones in Python (a holder pid
is checked only on its own host) and applies its choice with a script that first checks
nothing changed meanwhile, else reads again. Put, upsert, confirm and nack publish on
``P..'cw:'..target``, which watchers subscribe to.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .._errors import CommandStateError, StoreError
from .._records import LeaseToken, State
from ._commandstore import CommandCounts, CommandRow, check_state, missing_error, select_live
from ._commandstore import to_row as _to_row
from ._server import redis_pubsub

if TYPE_CHECKING:
    import redis

T = TypeVar("T")

_READY, _HELD, _IN_FLIGHT = int(State.READY), int(State.HELD), int(State.IN_FLIGHT)
_HOST: Final = socket.gethostname()
#: How often a drain reads again after another client changed its target meanwhile.
_DRAIN_TRIES: Final = 100

_C: Final = r"""
local P = ARGV[1]
local function ckey(id) return P .. 'c:' .. id end
local function wake(target) redis.call('PUBLISH', P .. 'cw:' .. target, 1) end
local function remove(id)
  local k = ckey(id)
  local f = redis.call('HMGET', k, 'tg', 'ty', 'st', 'ke')
  if not f[1] then return end
  redis.call('ZREM', P .. 'ct:' .. f[1], id)
  redis.call('SREM', P .. 'cs:' .. f[3], id)
  redis.call('ZREM', P .. 'cx', id)
  if f[4] == '1' and redis.call('HGET', P .. 'cl', f[1] .. '\0' .. f[2]) == tostring(id) then
    redis.call('HDEL', P .. 'cl', f[1] .. '\0' .. f[2])
  end
  redis.call('DEL', k)
end
local function insert(target, typ, payload, now, expires, hold, keyed)
  local id = redis.call('INCR', P .. 'c:seq')
  local st = hold == '1' and 2 or 0
  local f = {'tg', target, 'p', payload, 'cr', now, 'ho', hold, 'st', st, 'at', 0,
             'ke', keyed, 'dl', 0}
  if typ ~= false then table.insert(f, 'ty'); table.insert(f, typ) end
  if expires ~= '' then
    table.insert(f, 'ex'); table.insert(f, expires)
    redis.call('ZADD', P .. 'cx', expires, id)
  end
  redis.call('HSET', ckey(id), unpack(f))
  redis.call('ZADD', P .. 'ct:' .. target, id, id)
  redis.call('SADD', P .. 'cs:' .. st, id)
  return id
end
"""

#: ARGV: P, target, has type (0/1), type, payload, now, expires, hold.
_PUT: Final = _C + r"""
local typ = ARGV[3] == '1' and ARGV[4] or false
local id = insert(ARGV[2], typ, ARGV[5], ARGV[6], ARGV[7], ARGV[8], '0')
if ARGV[8] ~= '1' then wake(ARGV[2]) end
return id
"""

#: ARGV: P, target, type, payload, expires, now.
_UPSERT: Final = _C + r"""
local key = ARGV[2] .. '\0' .. ARGV[3]
local id = redis.call('HGET', P .. 'cl', key)
if id then
  local k = ckey(id)
  redis.call('HSET', k, 'p', ARGV[4])
  if ARGV[5] ~= '' then
    redis.call('HSET', k, 'ex', ARGV[5])
    redis.call('ZADD', P .. 'cx', ARGV[5], id)
  else
    redis.call('HDEL', k, 'ex')
    redis.call('ZREM', P .. 'cx', id)
  end
  id = tonumber(id)
else
  id = insert(ARGV[2], ARGV[3], ARGV[4], ARGV[6], ARGV[5], '0', '1')
  redis.call('HSET', P .. 'cl', key, id)
end
wake(ARGV[2])
return id
"""

#: ARGV: P, target. Every row of the target, oldest first, as ROW_LAYOUT plus holder host.
_ROWS: Final = _C + r"""
local out = {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'ct:' .. ARGV[2], 0, -1)) do
  local f = redis.call('HMGET', ckey(id), 'ty', 'p', 'cr', 'ex', 'ho', 'st', 'at', 'ke',
                       'hd', 'dl', 'hh')
  if f[2] then out[#out + 1] = {tonumber(id), f} end
end
return out
"""

#: ARGV: P, target, lease ('' none), now, holder, host, n taken, then (id, state, attempt)
#: for the taken rows and then for the superseded ones. Returns nil if any changed, else
#: the taken rows' new attempts.
_DRAIN: Final = _C + r"""
local n = tonumber(ARGV[7])
for i = 8, #ARGV, 3 do
  local f = redis.call('HMGET', ckey(ARGV[i]), 'st', 'at')
  if f[1] ~= ARGV[i + 1] or f[2] ~= ARGV[i + 2] then return false end
end
local out = {}
for j = 0, (#ARGV - 7) / 3 - 1 do
  local i = 8 + 3 * j
  local id = ARGV[i]
  local k = ckey(id)
  if j >= n then
    remove(id)
  else
    out[#out + 1] = redis.call('HINCRBY', k, 'at', 1)
    if ARGV[3] == '' then
      remove(id)
    else
      local f = redis.call('HMGET', k, 'tg', 'ty', 'ke', 'st')
      if f[3] == '1' and redis.call('HGET', P .. 'cl', f[1] .. '\0' .. f[2]) == id then
        redis.call('HDEL', P .. 'cl', f[1] .. '\0' .. f[2])
      end
      redis.call('SMOVE', P .. 'cs:' .. f[4], P .. 'cs:3', id)
      redis.call('HSET', k, 'st', 3, 'hd', ARGV[5], 'hh', ARGV[6], 'dl', ARGV[4] + ARGV[3])
    end
  end
end
return out
"""

#: ARGV: P, nack (0/1), then (id, attempt) pairs. Returns how many applied.
_SETTLE: Final = _C + r"""
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local k = ckey(id)
  local f = redis.call('HMGET', k, 'st', 'at', 'tg', 'ty', 'ke')
  if f[1] == '3' and f[2] == ARGV[i + 1] then
    n = n + 1
    if ARGV[2] == '0' then
      remove(id)
    elseif f[5] == '1' and redis.call('HEXISTS', P .. 'cl', f[3] .. '\0' .. f[4]) == 1 then
      remove(id)  -- a newer intent replaced it meanwhile
    else
      if f[5] == '1' then redis.call('HSET', P .. 'cl', f[3] .. '\0' .. f[4], id) end
      redis.call('HSET', k, 'st', 0, 'dl', 0)
      redis.call('HDEL', k, 'hd', 'hh')
      redis.call('SMOVE', P .. 'cs:3', P .. 'cs:0', id)
      wake(f[3])
    end
  end
end
return n
"""

#: ARGV: P, id, now, confirm (1) or cancel (0). Returns {outcome, target or last id}.
_DECIDE: Final = _C + r"""
local id = ARGV[2]
local f = redis.call('HMGET', ckey(id), 'tg', 'st', 'ex', 'ho')
if not f[1] then return {'missing', redis.call('GET', P .. 'c:seq') or '0'} end
if f[2] == '3' then return {'in_flight', f[1]} end
if ARGV[4] == '0' then
  remove(id)
  return {'ok', f[1]}
end
if f[3] and tonumber(f[3]) <= tonumber(ARGV[3]) then return {'expired', f[1]} end
if f[4] ~= '1' then return {'no_hold', f[1]} end
if f[2] == '2' then
  redis.call('HSET', ckey(id), 'st', 0)
  redis.call('SMOVE', P .. 'cs:2', P .. 'cs:0', id)
end
wake(f[1])
return {'ok', f[1]}
"""

#: ARGV: P, now, remove (0/1). Expired commands per state; removes them if asked.
_EXPIRED: Final = _C + r"""
local counts = {0, 0, 0, 0}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'cx', '-inf', ARGV[2])) do
  local st = tonumber(redis.call('HGET', ckey(id), 'st'))
  if st then counts[st + 1] = counts[st + 1] + 1 end
  if ARGV[3] == '1' then remove(id) end
end
return {redis.call('SCARD', P .. 'cs:0') - counts[1], redis.call('SCARD', P .. 'cs:2') - counts[3],
        redis.call('SCARD', P .. 'cs:3') - counts[4], counts[1] + counts[3] + counts[4]}
"""

_COMMAND_SCRIPTS: Final = {
    "put": _PUT, "upsert": _UPSERT, "rows": _ROWS, "drain": _DRAIN, "settle": _SETTLE,
    "decide": _DECIDE, "expired": _EXPIRED,
}


def _layout(id_: int, f: list[Any]) -> tuple[Any, ...]:
    """A script's row as a ``ROW_LAYOUT`` tuple; a holder on another host is unknown
    (None), so only its lease deadline ends its lease."""
    ty, p, cr, ex, ho, st, at, ke, hd, dl, hh = f
    holder = int(hd) if hd is not None and hh is not None and hh.decode() == _HOST else None
    return (id_, None, None if ty is None else ty.decode(), bytes(p), float(cr),
            None if ex is None else float(ex), ho == b"1", int(st), int(at), ke == b"1",
            holder, float(dl))


class RedisCommands:
    """The ``CommandStore`` verbs for ``RedisStore``."""

    if TYPE_CHECKING:  # provided by RedisStore
        prefix: str
        url: str
        timeout: float
        _scripts: dict[str, Any]

        @property
        def where(self) -> str: ...
        def redis(self) -> redis.Redis: ...
        def _retry(self, what: str, fn: Callable[[], T]) -> T: ...

    def _command(self, name: str, *args: Any) -> Any:
        self.redis()
        script = self._scripts["c_" + name]
        return self._retry(f"command {name}", lambda: script(args=[self.prefix, *args]))

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
        return int(self._command(
            "put", target, "0" if command_type is None else "1", command_type or "",
            bytes(payload), repr(now), "" if expires_at is None else repr(expires_at),
            "1" if hold else "0",
        ))

    def command_upsert(
        self, target: str, command_type: str, payload: bytes, *,
        expires_at: float | None, now: float,
    ) -> int:
        return int(self._command(
            "upsert", target, command_type, bytes(payload),
            "" if expires_at is None else repr(expires_at), repr(now),
        ))

    def _command_rows(self, target: str, now: float,
                      states: tuple[int, ...]) -> list[tuple[Any, ...]]:
        rows = [_layout(int(i), f) for i, f in self._command("rows", target)]
        return [
            (r[0], target, *r[2:]) for r in rows
            if r[7] in states and (r[5] is None or r[5] > now)
        ]

    def command_pending(
        self, target: str, *, now: float, held_only: bool = False
    ) -> list[CommandRow]:
        states = (_HELD,) if held_only else (_READY, _HELD, _IN_FLIGHT)
        live, _ = select_live(self._command_rows(target, now, states), now)
        return [_to_row(r) for r in live]

    def command_drain(
        self, target: str, *, now: float, limit: int | None, lease: float | None,
        holder: int,
    ) -> list[CommandRow]:
        for _ in range(_DRAIN_TRIES):
            rows = self._command_rows(target, now, (_READY, _IN_FLIGHT))
            live, superseded = select_live(rows, now)
            taken = live[:limit]
            if not taken and not superseded:
                return []
            by_id = {r[0]: r for r in rows}
            checks: list[Any] = []
            for r in [*taken, *(by_id[i] for i in superseded)]:
                checks += [r[0], r[7], r[8]]
            attempts = self._command(
                "drain", target, "" if lease is None else repr(lease), repr(now), holder,
                _HOST, len(taken), *checks,
            )
            if attempts is not None:
                return [_to_row(r, int(a)) for r, a in zip(taken, attempts, strict=True)]
        raise StoreError(f"command drain of {target!r} kept racing other clients; try again")

    def command_ack(self, tokens: Sequence[LeaseToken]) -> int:
        if not tokens:
            return 0
        flat = [x for t in tokens for x in (int(t[0]), int(t[1]))]
        return int(self._command("settle", "0", *flat))

    def command_nack(self, tokens: Sequence[LeaseToken]) -> int:
        if not tokens:
            return 0
        flat = [x for t in tokens for x in (int(t[0]), int(t[1]))]
        return int(self._command("settle", "1", *flat))

    def _command_decide(self, operation: str, command_id: int, now: float) -> str:
        outcome, detail = self._command(
            "decide", command_id, repr(now), "1" if operation == "confirm" else "0"
        )
        outcome = outcome.decode()
        if outcome == "missing":
            raise missing_error(operation, command_id, int(detail))
        if outcome == "in_flight":
            check_state(operation, command_id, _IN_FLIGHT, None, now)
        if outcome == "expired":
            check_state(operation, command_id, _READY, now, now)
        if outcome == "no_hold":
            raise CommandStateError(command_id, operation, "it does not require confirmation")
        return str(detail.decode())

    def command_confirm(self, command_id: int, *, now: float) -> str:
        return self._command_decide("confirm", command_id, now)

    def command_cancel(self, command_id: int, *, now: float) -> str:
        return self._command_decide("cancel", command_id, now)

    def command_expire(self, now: float) -> int:
        return int(self._command("expired", repr(now), "1")[3])

    def command_counts(self, now: float) -> CommandCounts:
        return CommandCounts(*(int(x) for x in self._command("expired", repr(now), "0")))

    def command_watch(self, target: str) -> RedisWatch:
        return RedisWatch(self, target)

    def command_close(self) -> None:
        """Connections are the store's: ``close`` releases them."""


class RedisWatch:
    """A subscription to a target's channel; subscribed (and confirmed) before it returns,
    so a command committed afterwards always ends a wait."""

    def __init__(self, store: RedisCommands, target: str) -> None:
        self._store = store
        self._channel = f"{store.prefix}cw:{target}"
        self._pubsub = redis_pubsub(store.redis())
        store._retry("command watch", self._subscribe)

    def _subscribe(self) -> None:
        self._pubsub.subscribe(self._channel)
        deadline = time.monotonic() + self._store.timeout
        while time.monotonic() < deadline:
            msg = self._pubsub.get_message(timeout=1.0)
            if msg is not None and msg["type"] == "subscribe":
                return
        raise StoreError(f"redis at {self._store.where}: no confirmation of the subscription")

    def wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        from ._redis import import_redis

        r = import_redis()
        while True:
            left = 3600.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                msg = self._pubsub.get_message(timeout=left)
            except (r.ConnectionError, r.TimeoutError):
                # The server restarted: subscribe again; what came meanwhile may be ready.
                self._pubsub.close()
                self._pubsub = redis_pubsub(self._store.redis())
                self._store._retry("command watch", self._subscribe)
                return True
            if msg is not None and msg["type"] == "message":
                while self._pubsub.get_message(timeout=0) is not None:
                    pass  # drain the burst: one wakeup is enough
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def close(self) -> None:
        self._pubsub.close()

    def __enter__(self) -> RedisWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
