from __future__ import annotations

import collections
import enum
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durableq._serializer import AutoSerializer, MsgpackSerializer, PickleSerializer, get_serializer

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # msgpack's range
plain = st.recursive(
    st.none()
    | st.booleans()
    | ints
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes()
    | st.datetimes(timezones=st.just(timezone(timedelta(hours=-3)))),
    lambda children: st.lists(children)
    | st.lists(children).map(tuple)
    | st.dictionaries(st.text() | ints, children),
    max_leaves=20,
)


def _same(a: object, b: object) -> bool:
    """Equal, with types kept all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[attr-defined]
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))  # type: ignore[arg-type]
    if isinstance(a, datetime):
        return a == b and a.tzinfo == b.tzinfo  # type: ignore[attr-defined]
    return a == b


@given(plain)
def test_plain_data_round_trips_through_msgpack(obj: object) -> None:
    data = AutoSerializer().dumps(obj)
    assert data[:1] == b"\x01", "plain data must not fall back to pickle"
    assert _same(AutoSerializer().loads(data), obj)
    assert _same(MsgpackSerializer().loads(MsgpackSerializer().dumps(obj)), obj)


class Color(enum.IntEnum):
    RED = 1


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize(
    "obj",
    [Fraction(1, 3), Color.RED, Point(1, 2), {"k": Point(1, 2)}, 2**70, {1, 2},
     collections.OrderedDict(a=1), datetime(2026, 1, 1, tzinfo=None).date()],
)
def test_other_objects_fall_back_to_pickle_and_keep_their_type(obj: object) -> None:
    s = AutoSerializer()
    data = s.dumps(obj)
    assert data[:1] == b"\x02"
    assert _same(s.loads(data), obj)


def test_msgpack_serializer_refuses_other_types_naming_them() -> None:
    with pytest.raises(TypeError, match="Fraction"):
        MsgpackSerializer().dumps({"x": Fraction(1, 2)})


def test_msgpack_serializer_never_unpickles() -> None:
    data = PickleSerializer().dumps([1])
    with pytest.raises(TypeError, match="unpickle"):
        MsgpackSerializer().loads(data)


def test_unknown_serializer_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown serializer 'json'"):
        get_serializer("json")
