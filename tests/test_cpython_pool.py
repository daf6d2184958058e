"""CPython's own pool test cases (Lib/test/_test_multiprocessing.py: ``_TestPool``,
``_TestPoolWorkerErrors``, ``_TestPoolWorkerLifetime``), run against ``durableq.Pool``
under fork, spawn and forkserver.

The mixin's ``Pool`` is durableq's, and cases that call ``multiprocessing.Pool()`` get it
too (patched). The subprocess script of
``test_worker_finalization_via_atexit_handler_of_multiprocessing`` imports ``Pool`` from
``durableq`` instead of ``multiprocessing`` (``assert_python_ok`` is patched to rewrite
it), so it checks our pool's exit, not the stdlib's.

Excluded, with the reason, in ``EXCLUDED`` below: tests that read private attributes of
``multiprocessing.pool.Pool`` (``_pool``, ``_repopulate_pool``). None of these cases
asserts worker-death behaviour, so nothing is excluded for that.

``_TestPool.setUpClass`` keeps one pool for the whole class, so the leak check here allows
what existed before each test and checks, at the end of the module, that nothing is left.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time
import unittest
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from test import _test_multiprocessing as cpython
from test.support import script_helper

import durableq

from .conftest import TIMEOUT, WithStartMethod

EXCLUDED = {
    "test_make_pool": "reads the private list of worker processes (len(p._pool)); its "
    "ValueError checks for Pool(0) and Pool(-1) are in test_pool.py",
    "test_pool_worker_lifetime": "reads private attributes (p._pool worker pids) and calls "
    "the private p._repopulate_pool(); recycling is tested in test_pool.py",
}

_assert_python_ok = script_helper.assert_python_ok


def _durableq_script(*args: Any, **env: Any) -> Any:
    """``assert_python_ok`` with ``from multiprocessing import Pool`` pointed at durableq."""
    args = tuple(
        a.replace("from multiprocessing import Pool", "from durableq import Pool")
        if isinstance(a, str)
        else a
        for a in args
    )
    assert any("from durableq import Pool" in str(a) for a in args)
    return _assert_python_ok(*args, **env)


class DurableMixin(cpython.ProcessesMixin):
    Pool = staticmethod(durableq.Pool)

    def setUp(self) -> None:
        for target, name, new in (
            (multiprocessing, "Pool", durableq.Pool),
            (script_helper, "assert_python_ok", _durableq_script),
        ):
            patcher = mock.patch.object(target, name, new)
            patcher.start()
            self.addCleanup(patcher.stop)


def _make(base: type, start_method: str) -> type[unittest.TestCase]:
    class Case(WithStartMethod, base, DurableMixin, unittest.TestCase):  # type: ignore[valid-type, misc]
        @classmethod
        def setUpClass(cls) -> None:
            super().setUpClass()
            pool = getattr(cls, "pool", None)  # _TestPool's, shared by the class's tests
            if pool is not None:
                assert isinstance(pool, durableq.Pool), "the harness must test durableq's pool"
                # Once a task has run, the pool's workers all exist: the first test's leak
                # check then sees them as the class's, not as left over by that test.
                pool.apply(int, ("1",))

    Case.start_method = start_method
    for name, why in EXCLUDED.items():
        if hasattr(Case, name):
            setattr(Case, name, unittest.skip(f"excluded: {why}")(getattr(Case, name)))
    # The name the workers import the class by (test_traceback sends a classmethod).
    name = f"TestCPython{base.__name__[5:]}_{start_method}"
    Case.__name__ = Case.__qualname__ = name
    return Case


TestCPythonPool_fork = _make(cpython._TestPool, "fork")
TestCPythonPool_spawn = _make(cpython._TestPool, "spawn")
TestCPythonPool_forkserver = _make(cpython._TestPool, "forkserver")
TestCPythonPoolWorkerErrors_fork = _make(cpython._TestPoolWorkerErrors, "fork")
TestCPythonPoolWorkerErrors_spawn = _make(cpython._TestPoolWorkerErrors, "spawn")
TestCPythonPoolWorkerLifetime_fork = _make(cpython._TestPoolWorkerLifetime, "fork")
TestCPythonPoolWorkerLifetime_spawn = _make(cpython._TestPoolWorkerLifetime, "spawn")


def _durableq_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("durableq-")}


def _settle(before: set[Any], now: Any) -> set[Any]:
    """What ``now()`` returns beyond ``before``, once it stopped shrinking (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    extra = set(now()) - before
    while extra and time.monotonic() < deadline:
        time.sleep(0.01)
        extra = set(now()) - before
    return extra


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Overrides conftest's: the class's shared pool may outlive a test; nothing else may."""
    children = set(multiprocessing.active_children())
    threads = _durableq_threads()
    yield
    gc.collect()
    assert not _settle(children, multiprocessing.active_children), "child processes left"
    assert not _settle(threads, _durableq_threads), "durableq threads left"


@pytest.fixture(autouse=True, scope="module")
def nothing_left_by_the_module() -> Iterator[None]:
    yield
    gc.collect()
    assert not _settle(set(), multiprocessing.active_children), "child processes left"
    assert not _settle(set(), _durableq_threads), "durableq threads left"
