"""Recurring errors: failures grouped by what they have in common.

A fingerprint is the exception type, its message with the varying parts (numbers, ids,
addresses, quoted values) masked, and the frame that raised it. So ``KeyError: 'user 42'``
and ``KeyError: 'user 97'`` raised in one place are one group; the same message from
another function is another.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ._records import Failure

_MASKS: Final = [
    (re.compile(r"0x[0-9a-fA-F]+"), "<addr>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b[0-9a-fA-F]{12,}\b"), "<hex>"),
    (re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"), "<n>"),
]
_FRAME: Final = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


def normalise(message: str) -> str:
    """``message`` with numbers, ids and addresses replaced by placeholders."""
    for pattern, mask in _MASKS:
        message = pattern.sub(mask, message)
    return message[:500]


def top_frame(traceback: str) -> str:
    """``file:function`` of the innermost frame of a formatted traceback ("" if none)."""
    frames = _FRAME.findall(traceback)
    return f"{frames[-1][0]}:{frames[-1][1]}" if frames else ""


def fingerprint(type_: str, message: str, traceback: str) -> str:
    """A short stable id for the group a failure belongs to."""
    key = "\x00".join((type_, normalise(message), top_frame(traceback)))
    return hashlib.blake2b(key.encode(errors="replace"), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Failures sharing one fingerprint."""

    fingerprint: str
    type: str
    message: str  #: normalised: the varying parts masked
    frame: str  #: where it was raised, ``file:function``
    count: int
    tasks: int  #: distinct messages (tasks) affected
    first_seen: float
    last_seen: float
    sample_traceback: str  #: the most recent one


def group(failures: Iterable[Failure]) -> list[ErrorGroup]:
    """Group ``failures``, most frequent first (then most recent)."""
    acc: dict[str, list[Failure]] = {}
    for f in failures:
        acc.setdefault(fingerprint(f.type, f.message, f.traceback), []).append(f)
    out = []
    for fp, members in acc.items():
        last = max(members, key=lambda f: f.time)
        out.append(ErrorGroup(
            fingerprint=fp,
            type=last.type,
            message=normalise(last.message),
            frame=top_frame(last.traceback),
            count=len(members),
            tasks=len({f.id for f in members}),
            first_seen=min(f.time for f in members),
            last_seen=last.time,
            sample_traceback=last.traceback,
        ))
    out.sort(key=lambda g: (-g.count, -g.last_seen))
    return out
