"""The ``durableq`` command: a thin click + rich layer over ``durableq.inspect``.

Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 queue not found or not a queue.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import __version__
from ._errors import DurableQError, QueueNotFound
from ._inspect import Inspector, inspect

NOT_A_QUEUE = 3


def _open(path: str) -> Inspector:
    try:
        return inspect(path)
    except QueueNotFound as exc:
        click.echo(f"durableq: {exc}", err=True)
        sys.exit(NOT_A_QUEUE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="durableq")
def main() -> None:
    """Inspect durableq queues from a terminal.

    Example: durableq stats jobs.q
    """


@main.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object (schema: docs/cli.md).")
def stats(path: str, as_json: bool) -> None:
    """Counts per state, totals and owner of the queue at PATH, read without taking it over.

    Example: durableq stats jobs.q --json
    """
    with _open(path) as queue:
        try:
            data = queue.stats()
        except DurableQError as exc:
            click.echo(f"durableq: {exc}", err=True)
            sys.exit(1)
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
    else:
        _print_table(data)


def _print_table(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=data["path"], show_header=False)
    for key in ("ready", "scheduled", "in_flight", "dead", "put_total", "acked_total"):
        table.add_row(key, f"{data[key]:,}")
    alive = "alive" if data["owner_alive"] else "not running"
    table.add_row("owner", f"pid {data['owner_pid']} ({alive})" if data["owner_pid"] else "none")
    Console().print(table)
