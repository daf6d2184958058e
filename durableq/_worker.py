"""The worker process: receive a task over its pipe, run it, send the outcome back.

Going in, a frame holds one or more tasks, each ``(task id, attempt, length)`` then the
stored task; coming out, one frame per outcome, ``(task id, attempt)`` then the encoded
outcome, sent as soon as the task ends. An empty frame asks the worker to exit. The worker dies with
its parent: a thread waits on the parent's sentinel and exits the process at once, so a
restarted parent never races an orphan running the same task.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import struct
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any, Final

from ._allow import AllowList
from ._task import run

FRAME: Final = struct.Struct("<qi")
_TASK: Final = struct.Struct("<qiI")
#: Sent instead of an outcome when the initializer raised; followed by the traceback text.
INIT_FAILED: Final = FRAME.pack(-1, 0)



def pack_tasks(tasks: Iterable[tuple[tuple[int, int], bytes]]) -> bytes:
    return b"".join(_TASK.pack(*token, len(payload)) + payload for token, payload in tasks)


def _unpack_tasks(frame: bytes) -> Iterator[tuple[int, int, bytes]]:
    view, at = memoryview(frame), 0
    while at < len(view):
        task_id, attempt, size = _TASK.unpack_from(view, at)
        at += _TASK.size
        yield task_id, attempt, bytes(view[at : at + size])
        at += size


def _title(text: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(text)
    except Exception:  # a title is a courtesy: never fail a task over it
        pass


def _die_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)  # the parent is gone: its successor will run our task again

    threading.Thread(target=watch, name="durableq-parent-watch", daemon=True).start()


def main(
    conn: Connection,
    running: Any,
    pool: str,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    max_tasks: int | None,
    allowed: AllowList | None = None,
) -> None:
    """Entry point of a worker process."""
    loads = allowed.loads if allowed is not None else pickle.loads
    _die_with_parent()
    _title(f"durableq worker {pool} init")
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException:
            # The logger concurrent.futures users already watch for pool trouble.
            logging.getLogger("concurrent.futures").critical(
                "Exception in initializer:", exc_info=True
            )
            conn.send_bytes(INIT_FAILED + traceback.format_exc().encode())
            return
    idle = f"durableq worker {pool} idle"
    _title(idle)
    done = 0
    while max_tasks is None or done < max_tasks:
        try:
            frame = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not frame:
            return
        for task_id, attempt, payload in _unpack_tasks(frame):

            def started(name: str, task_id: int = task_id) -> None:
                _title(f"durableq worker {pool} task {task_id} {name}")

            running[0], running[1] = task_id, attempt  # read by the dispatcher if we die
            outcome = run(payload, started, loads)
            conn.send_bytes(FRAME.pack(task_id, attempt) + outcome)
            _title(idle)
            done += 1
