"""The ``durableq`` command: a thin click + rich layer over ``durableq.inspect`` and
``durableq.maintain``; each command lives in a ``_cli_*`` module by role.

Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 queue not found or not a queue.
"""

from __future__ import annotations

from typing import Any

import click

from . import __version__
from ._cli_commands import cancel, confirm, drain, pending
from ._cli_common import DURATION, ago, console, emit, handled, json_option, reading
from ._cli_fix import doctor, export, import_, purge, replay, retry
from ._cli_read import ls, report, show
from ._cli_top import top
from ._cli_worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="durableq")
def main() -> None:
    """Inspect, repair and run durableq queues from a terminal.

    Reading commands never take ownership and can run beside a live owner; each
    takes --json (schemas: docs/cli.md). Repairs are safe beside it too.

    Example: durableq stats jobs.q
    """


@main.command()
@click.argument("path", type=click.Path())
@click.option(
    "--window", type=DURATION, default=None,
    help="Read the counters twice this far apart and show put/ack/fail rates per second "
    "(default: 1s for a table on a terminal, none otherwise).",
)
@json_option
@handled
def stats(path: str, window: float | None, as_json: bool) -> None:
    """Counts per state and priority, totals, rates, oldest ready age and the owner of the
    queue at PATH, read without taking it over.

    Example: durableq stats jobs.q --window 2s --json
    """
    if window is None:
        window = 1.0 if not as_json and console().is_terminal else 0.0
    with reading(path) as queue:
        data = queue.stats(window=window)
    if as_json:
        emit(data)
    else:
        _print_stats(data)


def _print_stats(data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=data["path"], show_header=False)
    for key in ("ready", "scheduled", "in_flight", "dead", "done", "expired"):
        table.add_row(key, f"{data[key]:,}")
    bands = data["by_priority"]
    table.add_row("by priority", "  ".join(f"{k} {v:,}" for k, v in bands.items()))
    for key in ("put_total", "acked_total", "late_total"):
        table.add_row(key, f"{data[key]:,}")
    table.add_row("oldest ready", ago(data["oldest_ready_age"]))
    if data["rates"] is not None:
        table.add_row("rates", "  ".join(f"{k} {v:,.1f}/s" for k, v in data["rates"].items()))
    alive = "alive" if data["owner_alive"] else "not running"
    table.add_row("owner", f"pid {data['owner_pid']} ({alive})" if data["owner_pid"] else "none")
    console().print(table)


for command in (
    ls, show, report, retry, replay, purge, export, import_, doctor, top, worker,
    pending, confirm, cancel, drain,
):
    main.add_command(command)
