"""Stored bodies described for people and scripts, without running code from the queue.

A body is a queue message (a codec byte, then msgpack or pickle) or an executor task (a
fixed header, then a pickled ``(fn, args, kwargs)``). msgpack is decoded, since decoding
it runs nothing; pickle is only walked with ``pickletools`` (opcodes parsed, nothing
executed), which is enough to check it is whole; a task's header names its function. Unpickling
happens only when the caller asks (``unpickle=True``, the CLI's ``--unpickle``): a pickle
from a directory someone else could write runs their code.
"""

from __future__ import annotations

import base64
import datetime
import io
import pickletools
import struct
from typing import Any, Final

from ._serializer import get_serializer
from ._task import decode_call, header_of

_PICKLE_START: Final = b"\x80"  # PROTO opcode: every pickle durableq writes starts so
_MSGPACK, _PICKLE = b"\x01", b"\x02"
#: Longest text shown for a value; the JSON ``repr`` is cut there too.
REPR_MAX: Final = 2000


def _task_start(body: bytes) -> int | None:
    """Where the pickled call starts if ``body`` looks like a stored task, else None."""
    try:
        header = header_of(body)
    except (struct.error, ValueError):
        return None
    at = header.size
    if header.kind not in (0, 1) or body[at : at + 2] != _PICKLE_START + b"\x05":
        return None
    return at


def kind_of(body: bytes) -> str:
    """``"task"``, ``"msgpack"``, ``"pickle"`` or ``"unknown"``: the first reading of
    ``body`` that parses."""
    for kind in _candidates(body):
        if _problem_as(kind, body) is None:
            return kind
    return "unknown"


def _candidates(body: bytes) -> list[str]:
    out = ["task"] if _task_start(body) is not None else []
    if body[:1] == _MSGPACK:
        out.append("msgpack")
    elif body[:1] == _PICKLE:
        out.append("pickle")
    return out


def _pickle_problem(data: bytes | memoryview) -> str | None:
    """Why ``data`` is not one whole pickle, or None. Parses opcodes only."""
    try:
        ops = list(pickletools.genops(io.BytesIO(bytes(data))))
    except Exception as exc:  # genops raises ValueError and others on bad input
        return f"broken pickle: {exc}"
    if not ops or ops[-1][0].name != "STOP":
        return "broken pickle: no STOP opcode"
    return None


def problem(body: bytes) -> str | None:
    """Why a body could never be read by a consumer or a worker, or None if it can under
    any of the formats it might be in (so a repair never buries a readable one)."""
    problems = [_problem_as(kind, body) for kind in _candidates(body)]
    if not problems:
        return f"unknown payload format (first byte {body[:1]!r}, {len(body)} bytes)"
    return None if None in problems else "; ".join(p for p in problems if p)


def _problem_as(kind: str, body: bytes) -> str | None:
    if kind == "task":
        return _pickle_problem(memoryview(body)[_task_start(body) or 0 :])
    if kind == "pickle":
        return _pickle_problem(memoryview(body)[1:])
    try:
        get_serializer("msgpack").loads(body)
    except Exception as exc:
        return f"broken msgpack: {exc}"
    return None


def describe(body: bytes, *, unpickle: bool = False) -> dict[str, Any]:
    """A JSON-ready description: ``kind``, ``size``, ``value`` (plain data, or None when it
    is not shown), ``repr`` (text for people), for tasks ``function``, ``timeout`` and
    ``max_attempts``, and ``problem`` (why it is unreadable, or None)."""
    kind = kind_of(body)
    out: dict[str, Any] = {
        "kind": kind, "size": len(body), "value": None, "repr": "", "function": None,
        "timeout": None, "max_attempts": None,
        "problem": problem(body) if kind == "unknown" else None,
    }
    if kind == "unknown":
        out["repr"] = _hex(body)
        return out
    if kind == "task":
        header = header_of(body)
        out["function"] = header.name
        out["timeout"], out["max_attempts"] = header.timeout, header.policy.max_attempts
        if unpickle:
            _, args, kwargs = decode_call(body)
            out["repr"] = _cut(f"{header.name}(*{args!r}, **{kwargs!r})")
        else:
            out["repr"] = f"{header.name}(...)  [pickled; --unpickle shows the arguments]"
        return out
    if kind == "pickle" and not unpickle:
        out["repr"] = f"<pickle, {len(body)} bytes; --unpickle shows it>"
        return out
    value = get_serializer("auto").loads(body)
    out["value"] = jsonable(value) if kind == "msgpack" else None
    out["repr"] = _cut(repr(value))
    return out


def jsonable(value: Any) -> Any:
    """``value`` with what JSON lacks made plain: tuples as lists, bytes as
    ``{"base64": ...}``, datetimes as ISO text, anything else as its repr."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return repr(value)


def _hex(body: bytes) -> str:
    return body[: REPR_MAX // 2].hex() + ("..." if len(body) > REPR_MAX // 2 else "")


def _cut(text: str) -> str:
    return text if len(text) <= REPR_MAX else text[:REPR_MAX] + "..."
