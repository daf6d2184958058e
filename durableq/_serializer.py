"""Message bodies to bytes and back.

Plain data (None, bool, int, float, str, bytes, list, tuple, dict, datetime) goes through
msgpack, with tuples kept as tuples and datetimes (naive or fixed-offset) as datetimes; the
``"auto"`` serializer falls back to pickle for anything else, so every picklable object
round-trips as with ``multiprocessing.Queue``. The first byte of a payload names its codec,
so a queue can be read whatever serializer wrote it.
"""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Protocol

import msgpack

_MSGPACK: Final = b"\x01"
_PICKLE: Final = b"\x02"
_EXT_TUPLE: Final = 1
_EXT_DATETIME: Final = 2


class Serializer(Protocol):
    """Turns message bodies into bytes and back."""

    name: str

    def dumps(self, obj: object) -> bytes: ...
    def loads(self, data: bytes) -> Any: ...


class _NotPlain(TypeError):
    pass


def _default(obj: object) -> msgpack.ExtType:
    if type(obj) is tuple:
        return msgpack.ExtType(_EXT_TUPLE, _packb(list(obj)))
    if type(obj) is datetime:
        tz = obj.tzinfo
        if tz is None or type(tz) is timezone:
            offset = obj.utcoffset()
            seconds = None if offset is None else offset.total_seconds()
            naive = obj.replace(tzinfo=None).isoformat()
            return msgpack.ExtType(_EXT_DATETIME, _packb([naive, seconds]))
    raise _NotPlain(type(obj).__qualname__)


def _ext_hook(code: int, data: bytes) -> object:
    if code == _EXT_TUPLE:
        return tuple(_unpackb(data))
    if code == _EXT_DATETIME:
        naive, seconds = _unpackb(data)
        value = datetime.fromisoformat(naive)
        if seconds is not None:
            value = value.replace(tzinfo=timezone(timedelta(seconds=seconds)))
        return value
    return msgpack.ExtType(code, data)


def _packb(obj: object) -> bytes:
    # strict_types: subclasses (IntEnum, defaultdict, namedtuple...) are not "plain" and
    # must keep their type, so they go to _default and from there to pickle.
    return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)  # type: ignore[no-any-return]


def _unpackb(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def _is_msgpackable(obj: object) -> bytes | None:
    try:
        return _packb(obj)
    except (_NotPlain, OverflowError, ValueError):
        return None


class AutoSerializer:
    """msgpack for plain data, pickle for everything else."""

    name = "auto"

    def dumps(self, obj: object) -> bytes:
        packed = _is_msgpackable(obj)
        if packed is not None:
            return _MSGPACK + packed
        return _PICKLE + pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return _loads(data, allow_pickle=True)


class MsgpackSerializer:
    """Plain data only: never pickles, so a reader never runs code from the queue."""

    name = "msgpack"

    def dumps(self, obj: object) -> bytes:
        try:
            return _MSGPACK + _packb(obj)
        except _NotPlain as exc:
            raise TypeError(
                f'serializer="msgpack" cannot store {exc.args[0]!r} objects; use plain data '
                '(None, bool, int, float, str, bytes, list, tuple, dict, datetime) or '
                'serializer="auto"'
            ) from None
        except (OverflowError, ValueError) as exc:
            raise TypeError(f'serializer="msgpack" cannot store this value: {exc}') from exc

    def loads(self, data: bytes) -> Any:
        return _loads(data, allow_pickle=False)


class PickleSerializer:
    """Pickle for everything, as multiprocessing.Queue does."""

    name = "pickle"

    def dumps(self, obj: object) -> bytes:
        return _PICKLE + pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return _loads(data, allow_pickle=True)


def _loads(data: bytes, *, allow_pickle: bool) -> Any:
    tag, body = data[:1], memoryview(data)[1:]
    if tag == _MSGPACK:
        return _unpackb(body)
    if tag == _PICKLE:
        if not allow_pickle:
            raise TypeError('serializer="msgpack" refuses to unpickle a stored payload')
        return pickle.loads(body)
    raise ValueError(f"unknown payload codec byte {tag!r}")


_SERIALIZERS: dict[str, type[AutoSerializer | MsgpackSerializer | PickleSerializer]] = {
    "auto": AutoSerializer,
    "msgpack": MsgpackSerializer,
    "pickle": PickleSerializer,
}


def get_serializer(spec: str | Serializer) -> Serializer:
    """Return the serializer named by ``spec`` ("auto", "msgpack", "pickle") or ``spec`` itself."""
    if isinstance(spec, str):
        try:
            return _SERIALIZERS[spec]()
        except KeyError:
            raise ValueError(
                f"unknown serializer {spec!r}; choose one of {sorted(_SERIALIZERS)}"
            ) from None
    if not (callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None))):
        raise TypeError(f"serializer must be a name or have dumps/loads, not {spec!r}")
    return spec
