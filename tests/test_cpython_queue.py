"""CPython's own ``_TestQueue`` cases (Lib/test/_test_multiprocessing.py), run against
``durableq.Queue`` / ``durableq.JoinableQueue`` under fork, spawn and forkserver.

Cases that build ``multiprocessing.Queue()`` themselves run with that name patched to
durableq's class. Excluded, with the reason:

- ``test_queue_feeder_donot_stop_onexc``: asserts that ``put()`` of an unpicklable object
  *succeeds* and the stdlib's private feeder thread drops it later through the private
  ``_on_queue_feeder_error`` hook. durableq serializes and commits inside ``put()``, so it
  raises to the caller instead of losing the item silently (tested in test_queue.py).
- ``test_queue_feeder_on_queue_feeder_error``: exercises a stdlib subclass's private
  ``_on_queue_feeder_error`` hook on ``multiprocessing.queues.Queue`` itself, not ours.
"""

from __future__ import annotations

import multiprocessing
import unittest
from unittest import mock

from test import _test_multiprocessing as cpython

import durableq

from .conftest import WithStartMethod

EXCLUDED = {
    "test_queue_feeder_donot_stop_onexc": "put() raises on unpicklable objects instead of "
    "dropping them in a feeder thread",
    "test_queue_feeder_on_queue_feeder_error": "tests the stdlib class's private feeder hook",
}


class DurableMixin(cpython.ProcessesMixin):
    Queue = staticmethod(durableq.Queue)
    JoinableQueue = staticmethod(durableq.JoinableQueue)

    def setUp(self) -> None:
        # Cases that call multiprocessing.Queue() directly get durableq's classes too.
        for name, cls in (("Queue", durableq.Queue), ("JoinableQueue", durableq.JoinableQueue)):
            patcher = mock.patch.object(multiprocessing, name, cls)
            patcher.start()
            self.addCleanup(patcher.stop)


def _make(start_method: str) -> type[unittest.TestCase]:
    class Case(  # type: ignore[misc]
        WithStartMethod, cpython._TestQueue, DurableMixin, unittest.TestCase
    ):
        pass

    Case.start_method = start_method

    for name, why in EXCLUDED.items():
        setattr(Case, name, unittest.skip(f"excluded: {why}")(getattr(Case, name)))
    name = f"TestCPythonQueue_{start_method}"
    Case.__name__ = Case.__qualname__ = name
    return Case


TestCPythonQueue_fork = _make("fork")
TestCPythonQueue_spawn = _make("spawn")
TestCPythonQueue_forkserver = _make("forkserver")
