"""Shared fixtures: a leak check after every test, queue directories, start methods."""

from __future__ import annotations

import gc
import multiprocessing
import threading
import unittest
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import (  # noqa: F401  (session fixtures)
    postgres_server,
    rabbitmq_server,
    redis_server,
)

#: Bounded wait for anything cross-process; only a deadlock reaches it.
TIMEOUT = 30.0

START_METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]


class WithStartMethod:
    """unittest mixin: the class's tests run with ``start_method`` as multiprocessing's
    default (CPython's suites take the method from there), restored afterwards."""

    start_method: str
    _old_method: str | None

    @classmethod
    def setUpClass(cls) -> None:
        if cls.start_method not in multiprocessing.get_all_start_methods():
            raise unittest.SkipTest(f"{cls.start_method} is not available here")
        cls._old_method = multiprocessing.get_start_method(allow_none=True)
        multiprocessing.set_start_method(cls.start_method, force=True)
        super().setUpClass()  # type: ignore[misc]

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()  # type: ignore[misc]
        finally:
            multiprocessing.set_start_method(cls._old_method, force=True)


def _durableq_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("durableq-")]


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After each test: no child processes left, no durableq threads still running."""
    yield
    gc.collect()
    children = multiprocessing.active_children()
    for p in children:
        p.terminate()
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)
    threads = _durableq_threads()
    for t in threads:
        t.join(10)
    assert not children, f"test left child processes running: {children}"
    assert not [t for t in threads if t.is_alive()], f"test left threads running: {threads}"


@pytest.fixture
def qpath(tmp_path: Path) -> Path:
    return tmp_path / "jobs.q"


@pytest.fixture(params=START_METHODS)
def ctx(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context(request.param)
