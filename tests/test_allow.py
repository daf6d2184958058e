"""allowed_modules=: workers unpickle only tasks naming functions from the listed modules."""

from __future__ import annotations

import datetime
import os
import pickle
from pathlib import Path

import pytest

import durableq
from durableq import DiskcacheStore, TaskRefused
from durableq._allow import AllowList
from durableq._task import check_options, encode_call

from .conftest import TIMEOUT

HERE = __name__  # "tests.test_allow"


def add(a: int, b: int = 0) -> int:
    return a + b


def age(when: datetime.datetime) -> float:
    return when.timestamp()


def test_a_function_outside_the_list_is_refused_at_submit() -> None:
    with durableq.Executor(1, allowed_modules=[HERE]) as ex:
        assert ex.submit(add, 2, b=3).result(TIMEOUT) == 5
        assert ex.submit(age, datetime.datetime(2026, 1, 1)).result(TIMEOUT) > 0  # plain data
        with pytest.raises(TaskRefused, match=r"posix\.getpid is not in allowed_modules"):
            ex.submit(os.getpid)
        with pytest.raises(TaskRefused):
            ex.map(os.getpid, [])
    with durableq.Pool(1, allowed_modules=["tests"]) as pool:  # a package allows its modules
        assert pool.map(add, [1, 2]) == [1, 2]


def test_a_stored_task_naming_another_module_is_never_unpickled(tmp_path: Path) -> None:
    # As a holder of the queue's key could: a validly signed task calling os.mkdir.
    path, marker = tmp_path / "q", tmp_path / "ran"
    store = DiskcacheStore(path)
    (task_id,) = store.put_many([encode_call(os.mkdir, (str(marker),), {}, check_options(None, 1))])
    store.close()
    with durableq.Executor(1, path=path, allowed_modules=[HERE]) as ex:
        fut = ex.recovered()[task_id]
        with pytest.raises(TaskRefused) as info:
            fut.result(TIMEOUT)
        assert (info.value.module, info.value.name) == ("posix", "mkdir")
    assert not marker.exists()


def test_the_unpickler_refuses_code_hidden_in_arguments() -> None:
    allowed = AllowList([HERE])
    assert allowed.loads(pickle.dumps((add, (1, {2: [3.0]}), {}))) == (add, (1, {2: [3.0]}), {})
    for payload in (pickle.dumps(eval), pickle.dumps((add, (os.system,), {}))):
        with pytest.raises(TaskRefused):
            allowed.loads(payload)
    assert pickle.loads(pickle.dumps(allowed)).modules == (HERE,)


@pytest.mark.parametrize("bad", ["os path", "", "1abc"])
def test_bad_module_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not an import path"):
        AllowList([bad])
    with pytest.raises(TypeError, match="not one string"):
        AllowList("myapp")
