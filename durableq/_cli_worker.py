"""``durableq worker``: run an executor's workers for a queue directory as a service.

SIGTERM (or a first Ctrl-C) stops gracefully: no new task starts, running ones finish,
tasks leased ahead go back to the store, exit 0. A second SIGINT (or SIGTERM) kills the
workers at once; their tasks stay stored, uncharged, for the next service (exit 1).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from typing import Any

import click

from ._cli_common import DURATION, FAILED, handled


@click.command()
@click.argument("path", type=click.Path())
@click.option("-w", "--workers", type=click.IntRange(1), default=None,
              help="Worker processes (default: one per CPU).")
@click.option("--import-path", "import_paths", multiple=True, type=click.Path(exists=True),
              help="Directory to import task functions from (repeatable; PYTHONPATH works too).")
@click.option("--max-attempts", type=click.IntRange(1, 0xFFFF), default=3, show_default=True,
              help="Runs of a task whose worker dies or times out.")
@click.option("--timeout", type=DURATION, default=None, help="Kill a task running this long.")
@click.option("--start-method", type=click.Choice(multiprocessing.get_all_start_methods()),
              default=None, help="How worker processes start (default: the platform's).")
@handled
def worker(
    path: str, workers: int | None, import_paths: tuple[str, ...], max_attempts: int,
    timeout: float | None, start_method: str | None,
) -> None:
    """Run the tasks stored at PATH with N worker processes, until SIGTERM: what an
    earlier program left unfinished (waiting for it to exit first) and what programs add
    with durableq.Submitter(PATH).submit(fn, ...). Task functions are imported by name.
    A missing (or empty) PATH becomes a new queue; another non-empty directory is refused.

    Example: durableq worker jobs.q -w 4 --import-path ./src
    """
    for directory in reversed(import_paths):
        full = os.path.abspath(directory)
        sys.path.insert(0, full)
        parts = [full, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(parts)  # for spawned workers too
    stop = threading.Event()
    signals = {"count": 0, "serving": 0}

    def on_signal(signum: int, frame: Any) -> None:
        signals["count"] += 1
        stop.set()
        if not signals["serving"]:
            raise SystemExit(0)  # still waiting to own the queue: nothing runs yet
        if signals["count"] > 1:
            raise SystemExit(FAILED)  # the second one: now

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _serve(path, workers, start_method, max_attempts, timeout, stop, signals)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    click.echo("durableq worker: stopped", err=True)


def _serve(
    path: str, workers: int | None, start_method: str | None, max_attempts: int,
    timeout: float | None, stop: threading.Event, signals: dict[str, int],
) -> None:
    from ._inspect import check_queue
    from ._service import WorkerService

    if os.path.isdir(path) and os.listdir(path):
        check_queue(path)  # never turn some other non-empty directory into a queue
    name = os.path.basename(os.path.abspath(path))
    _title(f"durableq service {name} -w {workers or os.cpu_count()}")
    ctx = multiprocessing.get_context(start_method) if start_method else None
    click.echo(f"durableq worker: waiting to own {os.path.abspath(path)}", err=True)
    service = WorkerService(
        path, workers, mp_context=ctx, max_attempts=max_attempts, timeout=timeout
    )
    signals["serving"] = 1
    try:
        click.echo(f"durableq worker: serving with {workers or os.cpu_count()} workers "
                   f"(pid {os.getpid()}); SIGTERM stops", err=True)
        stop.wait()
        click.echo("durableq worker: stopping: running tasks finish (again to kill)", err=True)
        service.stop(graceful=True)
    except SystemExit:
        service.stop(graceful=False)
        click.echo("durableq worker: killed the workers; their tasks stay stored", err=True)
        raise


def _title(text: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(text)
    except ImportError:
        pass  # a title is a courtesy
