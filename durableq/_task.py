"""Tasks and their outcomes as stored and as sent to workers.

A task payload starts with a fixed header the dispatcher reads without unpickling
(timeout, max_attempts); the call itself is pickled, which names functions by import
path, so a restarted program or a new deploy runs tasks an earlier one submitted.
An outcome is one tag byte then the pickled value or ``(exception, traceback text)``.
"""

from __future__ import annotations

import pickle
import struct
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures.process import _RemoteTraceback
from typing import Any, Final, NamedTuple

from ._schedule import due_of, priority_of

#: timeout in seconds (0: none), max_attempts, kind.
_HEADER: Final = struct.Struct("<dHB")
_CALL, _CHUNK = 0, 1
_OK, _RAISED = b"\x00", b"\x01"


class Options(NamedTuple):
    """Per-task policy: timeout and max_attempts are kept in the stored task's header;
    priority and the due time (not_before or delay) are where the store files it."""

    timeout: float | None
    max_attempts: int
    priority: Any = None
    not_before: Any = None
    delay: float | None = None


def check_options(
    timeout: float | None,
    max_attempts: int,
    priority: Any = None,
    not_before: Any = None,
    delay: float | None = None,
) -> Options:
    """Validate task options, naming the bad one."""
    priority = priority_of(priority)
    due_of(not_before, delay)  # raises what is wrong with them
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, not {timeout!r}")
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or not (
        1 <= max_attempts <= 0xFFFF
    ):
        raise ValueError(f"max_attempts must be an int from 1 to 65535, not {max_attempts!r}")
    return Options(
        None if timeout is None else float(timeout), max_attempts, priority, not_before, delay
    )


def encode_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: Options
) -> bytes:
    """One call of ``fn``. Raises what pickling raises: nothing half-made is stored."""
    return _HEADER.pack(options.timeout or 0.0, options.max_attempts, _CALL) + pickle.dumps(
        (fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL
    )


def encode_chunk(
    fn: Callable[..., Any], arg_tuples: list[tuple[Any, ...]], options: Options
) -> bytes:
    """Several calls of ``fn`` run as one task (``map(chunksize=...)``); its result is a list."""
    return _HEADER.pack(options.timeout or 0.0, options.max_attempts, _CHUNK) + pickle.dumps(
        (fn, arg_tuples, {}), protocol=pickle.HIGHEST_PROTOCOL
    )


def options_of(payload: bytes) -> Options:
    timeout, max_attempts, _ = _HEADER.unpack_from(payload)
    return Options(timeout or None, max_attempts)


def name_of(fn: Any) -> str:
    """``module.qualname`` of a callable, for process titles and messages."""
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def run(payload: bytes, on_start: Callable[[str], None]) -> bytes:
    """Run a stored task and return its encoded outcome (never raises, but for exits)."""
    try:
        _, _, kind = _HEADER.unpack_from(payload)
        fn, args, kwargs = pickle.loads(memoryview(payload)[_HEADER.size :])
        on_start(name_of(fn))
        if kind == _CHUNK:
            value: Any = [fn(*a) for a in args]
        else:
            value = fn(*args, **kwargs)
    except BaseException as exc:
        return encode_error(exc)
    try:
        return _OK + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        return encode_error(exc)


def encode_error(exc: BaseException) -> bytes:
    """The exception with its traceback text; one that cannot be pickled is described by
    the pickling error instead, so nothing is swallowed."""
    tb = "".join(traceback.format_exception(exc))
    try:
        return _RAISED + pickle.dumps((exc, tb), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as why:
        note = f"{tb}\nThe exception above could not be pickled: {why!r}"
        return _RAISED + pickle.dumps((type(why)(str(why)), note))


def decode_outcome(outcome: bytes) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, exception)`` with the remote traceback as its cause."""
    try:
        value = pickle.loads(memoryview(outcome)[1:])
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
