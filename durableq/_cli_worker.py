"""``durableq worker``: run an executor's workers for a queue directory as a service, or
as one peer of a queue kept in a server (``--store URL``; ``durableq.open_store``).

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
@click.argument("path", type=click.Path(), required=False)
@click.option("--store", "url", metavar="URL", default=None,
              help="Serve the queue kept in this server instead of PATH: redis://, "
                   "rediss://, postgresql://, postgres://, amqp:// or amqps://.")
@click.option("--name", default="durableq", show_default=True,
              help="With --store: the queue's name in the server.")
@click.option("--visibility-timeout", type=DURATION, default=60.0, show_default=True,
              help="With --store: seconds a lease lasts unless renewed (every third of "
                   "it while its task runs); a dead host's tasks run elsewhere within it.")
@click.option("-w", "-n", "--workers", type=click.IntRange(1), default=None,
              help="Worker processes (default: one per CPU).")
@click.option("--import-path", "import_paths", multiple=True, type=click.Path(exists=True),
              help="Directory to import task functions from (repeatable; PYTHONPATH works too).")
@click.option("--max-attempts", type=click.IntRange(1, 0xFFFF), default=3, show_default=True,
              help="Runs of a task whose worker dies or times out.")
@click.option("--timeout", type=DURATION, default=None, help="Kill a task running this long.")
@click.option("--start-method", type=click.Choice(multiprocessing.get_all_start_methods()),
              default=None, help="How worker processes start (default: the platform's).")
@click.option("--allow-module", "allowed", multiple=True, metavar="MODULE",
              help="Run only functions of this module or its submodules (repeatable); "
                   "other tasks fail with TaskRefused, never unpickled.")
@handled
def worker(
    path: str | None, url: str | None, name: str, visibility_timeout: float,
    workers: int | None, import_paths: tuple[str, ...], max_attempts: int,
    timeout: float | None, start_method: str | None, allowed: tuple[str, ...],
) -> None:
    """Run the tasks stored at PATH with N worker processes, until SIGTERM: what an
    earlier program left unfinished (waiting for it to exit first) and what programs add
    with durableq.Submitter(PATH).submit(fn, ...). Task functions are imported by name.
    A missing (or empty) PATH becomes a new queue; another non-empty directory is refused.

    With --store URL instead of PATH, serve the queue NAME kept in that server, beside
    any number of other workers on any hosts: programs submit with
    durableq.Executor(store=durableq.open_store(URL, name=NAME), max_workers=0).

    Example: durableq worker jobs.q -w 4 --import-path ./src

    Example: durableq worker --store redis://host:6379/0 --name jobs -n 4
    """
    if (path is None) == (url is None):
        raise click.UsageError("give a queue directory PATH or --store URL, exactly one")
    if url is None and name != "durableq":
        raise click.UsageError("--name names a queue in a server: use it with --store")
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
        options: dict[str, Any] = {
            "max_workers": workers, "max_attempts": max_attempts, "timeout": timeout,
            "mp_context": multiprocessing.get_context(start_method) if start_method else None,
            "allowed_modules": allowed or None,
        }
        if url is not None:
            _serve_store(url, name, visibility_timeout, options, stop, signals)
        else:
            assert path is not None
            _serve(path, options, stop, signals)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    click.echo("durableq worker: stopped", err=True)


def _serve(
    path: str, options: dict[str, Any], stop: threading.Event, signals: dict[str, int]
) -> None:
    from ._inspect import check_queue
    from ._service import WorkerService

    if os.path.isdir(path) and os.listdir(path):
        check_queue(path)  # never turn some other non-empty directory into a queue
    workers = options["max_workers"]
    name = os.path.basename(os.path.abspath(path))
    _title(f"durableq service {name} -w {workers or os.cpu_count()}")
    click.echo(f"durableq worker: waiting to own {os.path.abspath(path)}", err=True)
    service = WorkerService(path, **options)
    _run(service, workers, stop, signals)


def _serve_store(
    url: str, name: str, visibility_timeout: float, options: dict[str, Any],
    stop: threading.Event, signals: dict[str, int],
) -> None:
    from ._service import WorkerService
    from .store import open_store

    try:
        store = open_store(url, name=name)
    except ValueError as exc:
        raise click.UsageError(f"--store: {exc}") from None
    workers = options["max_workers"]
    _title(f"durableq service {name} -w {workers or os.cpu_count()}")
    click.echo(f"durableq worker: joining the peers of {store!r}", err=True)
    service = WorkerService(store=store, visibility_timeout=visibility_timeout, **options)
    _run(service, workers, stop, signals)


def _run(service: Any, workers: int | None, stop: threading.Event,
         signals: dict[str, int]) -> None:
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
