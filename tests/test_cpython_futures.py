"""CPython 3.11's own ProcessPoolExecutor test cases (Lib/test/test_concurrent_futures.py,
vendored verbatim as tests/cpython/concurrent_futures_311.py), run against
``durableq.Executor`` under fork, spawn and forkserver.

Each CPython test mixin (``InitializerMixin``, ``FailingInitializerMixin``,
``ProcessPoolShutdownTest`` with ``ExecutorShutdownTest``, ``WaitTests``,
``AsCompletedTests``, ``ProcessPoolExecutorTest`` with ``ExecutorTest``,
``ExecutorDeadlockTest``) is combined, as CPython's ``create_executor_tests()`` does, with
its ``ProcessPool{Fork,Spawn,Forkserver}Mixin`` whose ``executor_type`` is swapped for
durableq's. ``FutureTests`` is left out: it tests ``concurrent.futures.Future`` alone and
never builds an executor. The ThreadPool* classes are not ours either.

The subprocess scripts of the three interpreter-exit tests (``test_interpreter_shutdown``,
``test_submit_after_interpreter_shutdown``, ``test_hang_gh83386``) import
``test.test_concurrent_futures`` (not installed here) and ``from concurrent.futures import
<executor_type.__name__>``: ``assert_python_ok`` is patched to point them at the vendored
module and at the executor under test (and to import ``multiprocessing``, which CPython's
``test_hang_gh83386`` script uses without importing it: CPython never notices, since it
skips that test for ProcessPoolExecutor).

Excluded, with the reason, in ``EXCLUDED`` below: the tests that assert BrokenProcessPool
or BrokenExecutor after a worker dies (durableq replaces the worker and retries the task,
then raises ``durableq.WorkerCrashed``: it never breaks), and the tests that read private
attributes of ProcessPoolExecutor.

Known durableq failures are in ``KNOWN``: marked xfail (strict) until fixed, with
``run=False`` for those that can hang the whole session and ``strict=False`` for those
that fail only sometimes. Remove an entry once its fix lands: a strict xfail that passes
fails.

``DURABLEQ_CPYTHON_FUTURES_STDLIB=1`` runs this same harness against
``concurrent.futures.ProcessPoolExecutor``, with nothing excluded and no xfail, to check the
harness rather than durableq: every case then passes (or skips as it does in CPython).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import unittest
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from test.support import script_helper

import durableq
from tests.cpython import concurrent_futures_311 as cpython

STDLIB = os.environ.get("DURABLEQ_CPYTHON_FUTURES_STDLIB") == "1"
if STDLIB:
    EXECUTOR: type[concurrent.futures.Executor] = concurrent.futures.ProcessPoolExecutor
    EXECUTOR_MODULE = "concurrent.futures"
else:
    EXECUTOR = durableq.Executor
    EXECUTOR_MODULE = "durableq"

_BROKEN = "asserts BrokenProcessPool after a worker dies; durableq retries the task instead"
_NEVER_BROKEN = "asserts BrokenProcessPool, which durableq never raises"
_PRIVATE = "reads private attributes of ProcessPoolExecutor"
_OWN_PPE = "builds futures.ProcessPoolExecutor itself, not executor_type"

#: CPython test ("Class.test_name", the class that defines it) -> why it does not run
#: against durableq.Executor.
EXCLUDED: dict[str, str] = {
    "ProcessPoolShutdownTest.test_processes_terminate": f"{_PRIVATE} (_processes)",
    "ProcessPoolShutdownTest.test_context_manager_shutdown": (
        f"{_PRIVATE} (_processes); {_OWN_PPE}"
    ),
    "ProcessPoolShutdownTest.test_del_shutdown": (
        f"{_PRIVATE} (_processes, _call_queue, _executor_manager_thread); {_OWN_PPE}"
    ),
    "ProcessPoolShutdownTest.test_shutdown_no_wait": (
        f"{_PRIVATE} (_processes, _call_queue, _executor_manager_thread); {_OWN_PPE}"
    ),
    "ProcessPoolExecutorTest.test_killed_child": f"{_BROKEN}; also {_PRIVATE} (_processes)",
    "ProcessPoolExecutorTest.test_saturation": f"{_PRIVATE} (_processes, _max_workers)",
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": (
        f"{_PRIVATE} (_processes, _max_workers)"
    ),
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": (
        f"{_PRIVATE} (_processes, _max_workers)"
    ),
    "ProcessPoolExecutorTest.test_max_tasks_per_child": f"{_PRIVATE} (_processes)",
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": (
        f"{_PRIVATE} (_mp_context)"
    ),
    "ExecutorDeadlockTest.test_exit_at_task_unpickle": (
        f"{_BROKEN} (sys.exit() while unpickling the task)"
    ),
    "ExecutorDeadlockTest.test_error_at_task_unpickle": (
        f"{_NEVER_BROKEN}: the stdlib worker dies of the UnpicklingError raised while "
        "unpickling its task"
    ),
    "ExecutorDeadlockTest.test_crash_at_task_unpickle": (
        f"{_BROKEN} (segfault while unpickling the task)"
    ),
    "ExecutorDeadlockTest.test_crash_during_func_exec_on_worker": (
        f"{_BROKEN} (segfault in the task)"
    ),
    "ExecutorDeadlockTest.test_crash_during_result_pickle_on_worker": (
        f"{_BROKEN} (segfault while pickling the result)"
    ),
    "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler": (
        f"{_NEVER_BROKEN}, when unpickling a result fails on the caller's side"
    ),
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": (
        f"{_NEVER_BROKEN}, when unpickling a result calls sys.exit() on the caller's side"
    ),
    "ExecutorDeadlockTest.test_shutdown_deadlock": (
        f"{_BROKEN} (segfault in a task running at shutdown)"
    ),
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle": (
        f"{_PRIVATE} (_executor_manager_thread)"
    ),
}


@dataclass(frozen=True)
class Known:
    """A known durableq failure, kept visible as an xfail until it is fixed."""

    why: str
    hangs: bool = False  #: xfail(run=False): running it can hang the whole session
    flaky: bool = False  #: fails only sometimes: xfail(strict=False)


#: ("Class.test_name", start method or None for all) -> known durableq failure.
KNOWN: dict[tuple[str, str | None], Known] = {}

#: CPython's test mixins that take an executor, in the order CPython defines them.
MIXINS = [
    cpython.InitializerMixin,
    cpython.FailingInitializerMixin,
    cpython.ProcessPoolShutdownTest,
    cpython.WaitTests,
    cpython.AsCompletedTests,
    cpython.ProcessPoolExecutorTest,
    cpython.ExecutorDeadlockTest,
]

START_METHODS = {
    "fork": cpython.ProcessPoolForkMixin,
    "spawn": cpython.ProcessPoolSpawnMixin,
    "forkserver": cpython.ProcessPoolForkserverMixin,
}

_ROOT = Path(__file__).resolve().parent.parent


def _rewrite_script(script: str) -> str:
    script = script.replace(
        "from test.test_concurrent_futures import", f"from {cpython.__name__} import"
    )
    name = EXECUTOR.__name__
    return script.replace(
        f"from concurrent.futures import {name}",
        f"import multiprocessing; from {EXECUTOR_MODULE} import {name}",
    )


def _assert_python_ok(*args: Any, **env_vars: Any) -> Any:
    """script_helper.assert_python_ok, on scripts rewritten to import the vendored module and
    the executor under test, with the repository on PYTHONPATH (so no isolated mode)."""
    args = tuple(_rewrite_script(a) if isinstance(a, str) else a for a in args)
    path = [str(_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env_vars.setdefault("PYTHONPATH", os.pathsep.join(path))
    return script_helper.assert_python_ok(*args, **env_vars)


class _Patches:
    def setUp(self) -> None:
        patcher = mock.patch.object(cpython, "assert_python_ok", _assert_python_ok)
        patcher.start()
        self.addCleanup(patcher.stop)  # type: ignore[attr-defined]
        super().setUp()  # type: ignore[misc]


def _known_failure(test: Callable[..., Any], known: Known) -> Callable[..., Any]:
    """``test`` marked xfail; executors it builds itself are shut down even when it fails
    before doing so, so that the leak check blames the failure and not its leftovers."""

    @functools.wraps(test)
    def run(self: Any) -> Any:
        built: list[concurrent.futures.Executor] = []

        @functools.wraps(EXECUTOR, updated=())
        def build(*args: Any, **kwargs: Any) -> concurrent.futures.Executor:
            built.append(EXECUTOR(*args, **kwargs))
            return built[-1]

        self.executor_type = build
        try:
            return test(self)
        finally:
            del self.executor_type
            for executor in built:
                executor.shutdown(wait=True)

    mark = pytest.mark.xfail(reason=known.why, run=not known.hangs, strict=not known.flaky)
    return mark(run)


def _make(mixin: type, start_method: str) -> type[unittest.TestCase]:
    ctx_mixin = START_METHODS[start_method]
    executor_mixin = type(f"Durable{ctx_mixin.__name__}", (_Patches, ctx_mixin), {})
    executor_mixin.executor_type = EXECUTOR
    stem = mixin.__name__.removesuffix("Mixin").removesuffix("Tests").removesuffix("Test")
    name = f"Test{start_method.capitalize()}{stem}"
    case = type(name, (mixin, executor_mixin, cpython.BaseTestCase), {"__module__": __name__})
    for test in [t for t in dir(case) if t.startswith("test_")]:
        where = getattr(case, test).__qualname__  # the CPython class that defines it
        _seen.add(where)
        if STDLIB:
            continue
        if where in EXCLUDED:
            skipped = unittest.skip(f"excluded: {EXCLUDED[where]}")(getattr(case, test))
            setattr(case, test, skipped)
            continue
        known = KNOWN.get((where, start_method)) or KNOWN.get((where, None))
        if known is not None:
            setattr(case, test, _known_failure(getattr(case, test), known))
    case.__qualname__ = name
    return case


_seen: set[str] = set()
for _method in START_METHODS:
    for _mixin in MIXINS:
        _case = _make(_mixin, _method)
        globals()[_case.__name__] = _case
del _method, _mixin, _case
# A renamed or mistyped entry would silently stop excluding or marking anything.
assert _seen >= set(EXCLUDED) | {where for where, _ in KNOWN}, "unknown test in EXCLUDED/KNOWN"
