"""Tasks and their outcomes as stored and as sent to workers.

A task payload starts with a fixed header the dispatcher reads without unpickling (timeout,
its retry policy, the function's name); the call itself is pickled, which names functions
by import path, so a restarted program or a new deploy runs tasks an earlier one
submitted. An outcome is one tag byte, then the pickled value, or for an exception a
plain-data summary (type, message, traceback, whether ``retry_on`` matches) the dispatcher
reads without unpickling, then the pickled ``(exception, traceback text)``.
"""

from __future__ import annotations

import pickle
import struct
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures.process import _RemoteTraceback
from typing import Any, Final, NamedTuple

import msgpack

from ._policy import RetryPolicy
from ._schedule import timing_of

#: timeout (0: none), max_attempts, kind, retries, timeout_retries (0xFFFF: no limit),
#: backoff, backoff_cap, flags (jitter, demote), length of the function's name.
_HEADER: Final = struct.Struct("<dHBHHddBH")
_UNLIMITED: Final = 0xFFFF
_JITTER, _DEMOTE = 1, 2
_CALL, _CHUNK = 0, 1
_OK, _RAISED = b"\x00", b"\x01"
_SUMMARY: Final = struct.Struct("<I")
_TIMEOUT: Final = struct.Struct("<d")


class Options(NamedTuple):
    """Per-task policy: timeout and the retry policy travel in the stored task's header;
    priority and dates say where and when the store files it."""

    timeout: float | None
    max_attempts: int
    priority: Any = None
    not_before: Any = None
    delay: float | None = None
    retries: int | None = 0
    timeout_retries: int | None = 0
    backoff: float = 0.0
    backoff_cap: float = 300.0
    jitter: bool = True
    demote: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    deadline: Any = None
    ttl: Any = None
    expires_at: Any = None

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            retries=self.retries, max_attempts=self.max_attempts,
            timeout_retries=self.timeout_retries, backoff=self.backoff,
            backoff_cap=self.backoff_cap, jitter=self.jitter, demote=self.demote,
            retry_on=self.retry_on,
        )


def check_options(timeout: float | None, max_attempts: int, *rest: Any, **named: Any) -> Options:
    """Validate task options, naming the bad one."""
    opts = Options(timeout, max_attempts, *rest, **named)
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, not {timeout!r}")
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or not (
        1 <= max_attempts < _UNLIMITED
    ):
        raise ValueError(f"max_attempts must be an int from 1 to 65534, not {max_attempts!r}")
    for name in ("retries", "timeout_retries"):
        value = getattr(opts, name)
        if value is not None and not (isinstance(value, int) and 0 <= value < _UNLIMITED):
            raise ValueError(f"{name} must be None (no limit) or an int from 0 to 65534, "
                             f"not {value!r}")
    policy = opts.policy()  # raises what is wrong with the rest of the policy
    timing_of(
        priority=opts.priority, not_before=opts.not_before, delay=opts.delay,
        deadline=opts.deadline, ttl=opts.ttl, expires_at=opts.expires_at,
    )
    return opts._replace(
        timeout=None if timeout is None else float(timeout), retry_on=policy.retry_on
    )


def _header(fn: Any, kind: int, opts: Options) -> bytes:
    name = name_of(fn).encode(errors="replace")[:_UNLIMITED]

    def budget(value: int | None) -> int:
        return _UNLIMITED if value is None else value

    flags = (_JITTER if opts.jitter else 0) | (_DEMOTE if opts.demote else 0)
    return _HEADER.pack(
        opts.timeout or 0.0, opts.max_attempts, kind, budget(opts.retries),
        budget(opts.timeout_retries), opts.backoff, opts.backoff_cap, flags, len(name),
    ) + name


def encode_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: Options
) -> bytes:
    """One call of ``fn``. Raises what pickling raises: nothing half-made is stored."""
    return _header(fn, _CALL, options) + pickle.dumps(
        (fn, args, kwargs, options.retry_on), protocol=pickle.HIGHEST_PROTOCOL
    )


def encode_chunk(
    fn: Callable[..., Any], arg_tuples: list[tuple[Any, ...]], options: Options
) -> bytes:
    """Several calls of ``fn`` run as one task (``map(chunksize=...)``); its result is a list."""
    return _header(fn, _CHUNK, options) + pickle.dumps(
        (fn, arg_tuples, {}, options.retry_on), protocol=pickle.HIGHEST_PROTOCOL
    )


class Header(NamedTuple):
    """What the dispatcher reads from a stored task without unpickling it."""

    timeout: float | None
    policy: RetryPolicy
    name: str
    kind: int
    size: int  #: where the pickled call starts


def timeout_of(payload: bytes) -> float | None:
    """The task's timeout: the header's first field, read without building the rest."""
    (timeout,) = _TIMEOUT.unpack_from(payload)
    return timeout or None


def _name_and_start(payload: bytes) -> tuple[int, str, int]:
    """``(kind, function name, where the pickled call starts)``."""
    fields = _HEADER.unpack_from(payload)
    end = _HEADER.size + fields[8]
    return fields[2], bytes(payload[_HEADER.size : end]).decode(errors="replace"), end


def header_of(payload: bytes) -> Header:
    timeout, attempts, kind, retries, t_retries, backoff, cap, flags, n = _HEADER.unpack_from(
        payload
    )
    policy = RetryPolicy(
        retries=None if retries == _UNLIMITED else retries, max_attempts=attempts,
        timeout_retries=None if t_retries == _UNLIMITED else t_retries, backoff=backoff,
        backoff_cap=cap, jitter=bool(flags & _JITTER), demote=bool(flags & _DEMOTE),
    )
    name = bytes(payload[_HEADER.size : _HEADER.size + n]).decode(errors="replace")
    return Header(timeout or None, policy, name, kind, _HEADER.size + n)


def decode_call(payload: bytes) -> tuple[Any, Any, dict[str, Any]]:
    """``(fn, args, kwargs)`` of a stored task (for chunks: ``(fn, [args, ...], {})``).
    Unpickles: only for tasks this program stored."""
    fn, args, kwargs, _ = pickle.loads(memoryview(payload)[header_of(payload).size :])
    return fn, args, kwargs


def name_of(fn: Any) -> str:
    """``module.qualname`` of a callable, for process titles and messages."""
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def run(
    payload: bytes, on_start: Callable[[str], None], loads: Callable[[Any], Any] = pickle.loads
) -> bytes:
    """Run a stored task and return its encoded outcome (never raises, but for exits).
    ``loads`` unpickles the call (``AllowList.loads`` under ``allowed_modules``)."""
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    try:
        kind, name, start = _name_and_start(payload)
        fn, args, kwargs, retry_on = loads(memoryview(payload)[start:])
        on_start(name)
        if kind == _CHUNK:
            value: Any = [fn(*a) for a in args]
        else:
            value = fn(*args, **kwargs)
    except BaseException as exc:
        return encode_error(exc, retryable=isinstance(exc, retry_on))
    try:
        return _OK + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        return encode_error(exc)


def encode_error(exc: BaseException, *, retryable: bool = False) -> bytes:
    """The exception with its traceback text; one that cannot be pickled is described by
    the pickling error instead, so nothing is swallowed."""
    tb = "".join(traceback.format_exception(exc))
    summary = msgpack.packb([type(exc).__qualname__, str(exc)[:4096], tb, retryable])
    try:
        body = pickle.dumps((exc, tb), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as why:
        note = f"{tb}\nThe exception above could not be pickled: {why!r}"
        body = pickle.dumps((type(why)(str(why)), note))
    return bytes(_RAISED + _SUMMARY.pack(len(summary)) + summary + body)


def error_of(outcome: bytes) -> tuple[str, str, str, bool] | None:
    """``(type, message, traceback, retryable)`` of a failed outcome; None for a result."""
    if outcome[:1] != _RAISED:
        return None
    (n,) = _SUMMARY.unpack_from(outcome, 1)
    start = 1 + _SUMMARY.size
    kind, message, tb, retryable = msgpack.unpackb(outcome[start : start + n])
    return str(kind), str(message), str(tb), bool(retryable)


def decode_outcome(outcome: bytes) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, exception)`` with the remote traceback as its cause."""
    start = 1
    if outcome[:1] == _RAISED:
        (n,) = _SUMMARY.unpack_from(outcome, 1)
        start = 1 + _SUMMARY.size + n
    try:
        value = pickle.loads(memoryview(outcome)[start:])
    except BaseException as exc:
        return False, exc
    if outcome[:1] == _OK:
        return True, value
    error, tb = value
    error.__cause__ = _RemoteTraceback(tb)
    return False, error


def chunks(iterables: Iterable[Iterable[Any]], size: int) -> list[list[tuple[Any, ...]]]:
    """Argument tuples of ``zip(*iterables)`` in lists of ``size``."""
    out: list[list[tuple[Any, ...]]] = []
    for args in zip(*iterables, strict=False):
        if not out or len(out[-1]) == size:
            out.append([])
        out[-1].append(args)
    return out
