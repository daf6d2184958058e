"""Reading commands: ``ls``, ``show`` and ``report``. None of them writes."""

from __future__ import annotations

import time
from typing import Any

import click

from ._bodies import describe
from ._cli_common import DURATION, FAILED, ago, console, emit, handled, json_option, reading, when
from ._inspect import STATE_NAMES
from ._records import Failure, Record


def record_json(rec: Record, *, unpickle: bool = False) -> dict[str, Any]:
    """A message as the JSON output shows it (schema: docs/cli.md)."""
    return {
        "id": rec.id,
        "state": rec.state.name.lower(),
        "priority": rec.priority.name.lower(),
        "due": rec.due,
        "attempts": rec.attempts,
        "created": rec.created,
        "finished": rec.finished,
        "deadline": rec.deadline,
        "expires": rec.expires,
        "late": rec.late,
        "body": describe(rec.body, unpickle=unpickle),
    }


def failure_json(f: Failure) -> dict[str, Any]:
    return f._asdict()


@click.command()
@click.argument("path", type=click.Path())
@click.option(
    "--state", "states", multiple=True, type=click.Choice(list(STATE_NAMES)),
    help="Only messages in this state (repeatable; default: all).",
)
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--after", type=click.IntRange(0), default=0, help="Start after this id (paging).")
@json_option
@handled
def ls(path: str, states: tuple[str, ...], limit: int, after: int, as_json: bool) -> None:
    """List the messages of the queue at PATH by id, a page at a time (--after ID for the
    next page): state, priority, attempts, age and a preview of the body.

    Example: durableq ls jobs.q --state dead --limit 20
    """
    wanted = [STATE_NAMES[s] for s in states] or list(STATE_NAMES.values())
    with reading(path) as queue:
        page = queue.messages(wanted, after=after, limit=limit)
    more = len(page) == limit
    if as_json:
        emit({
            "path": queue.path,
            "messages": [record_json(r) for r in page],
            "next_after": page[-1].id if more else None,
        })
        return
    from rich.table import Table

    now = time.time()
    table = Table(title=f"{queue.path}: {', '.join(states) or 'all states'}")
    for col in ("id", "state", "priority", "attempts", "age", "due", "body"):
        if col == "body":
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, no_wrap=True)
    for r in page:
        body = describe(r.body)
        due = f"in {ago(r.due - now)}" if r.due > now else "-"
        table.add_row(
            str(r.id), r.state.name.lower(), r.priority.name.lower(), str(r.attempts),
            ago(now - r.created), due, body["repr"][:40],
        )
    console().print(table)
    if more:
        click.echo(f"more: durableq ls {path} --after {page[-1].id}", err=True)


@click.command()
@click.argument("path", type=click.Path())
@click.argument("id", type=click.IntRange(1))
@click.option(
    "--unpickle", is_flag=True,
    help="Unpickle the body to show it. Runs code from the queue: only for queues you trust.",
)
@json_option
@handled
def show(path: str, id: int, unpickle: bool, as_json: bool) -> None:
    """One message of the queue at PATH: its state, dates, attempts, body and failure
    history. Pickled bodies are described, not unpickled, unless --unpickle.

    Example: durableq show jobs.q 42
    """
    with reading(path) as queue:
        rec = queue.message(id)
        failures = queue.failures(limit=None, id=id)
    if rec is None:
        click.echo(f"durableq: no message {id} in {queue.path}", err=True)
        raise SystemExit(FAILED)
    data = {**record_json(rec, unpickle=unpickle), "failures": [failure_json(f) for f in failures]}
    if as_json:
        emit({"path": queue.path, **data})
        return
    from rich.table import Table

    table = Table(title=f"message {id}", show_header=False)
    for key in ("state", "priority", "attempts", "late"):
        table.add_row(key, str(data[key]))
    for key in ("created", "due", "finished", "deadline", "expires"):
        table.add_row(key, when(data[key]) if data[key] else "-")
    body = data["body"]
    kind = body["kind"] + (f" {body['function']}" if body["function"] else "")
    table.add_row("body", f"{kind}, {body['size']} bytes")
    if body["problem"]:
        table.add_row("unreadable", body["problem"])
    out = console()
    out.print(table)
    out.print(body["repr"], markup=False, highlight=False)
    for f in failures:
        out.rule(f"attempt {f.attempt}: {f.cause} at {when(f.time)} (pid {f.pid})")
        out.print(f"{f.type}: {f.message}", markup=False)
        if f.traceback.strip() not in ("", f"{f.type}: {f.message}"):
            out.print(f.traceback.rstrip(), markup=False, highlight=False)


@click.command()
@click.argument("path", type=click.Path())
@click.option("--since", type=DURATION, default=None, help="Only failures this recent (1d, 2h).")
@click.option("--traceback", "with_tb", is_flag=True, help="Show each group's latest traceback.")
@json_option
@handled
def report(path: str, since: float | None, with_tb: bool, as_json: bool) -> None:
    """Recurring errors in the queue at PATH: failed attempts grouped by exception type,
    message (numbers and ids masked) and the frame that raised it, most frequent first.

    Example: durableq report jobs.q --since 1d
    """
    with reading(path) as queue:
        groups = queue.report(since=None if since is None else time.time() - since)
    if as_json:
        emit({
            "path": queue.path,
            "since": since,
            "groups": [
                {
                    "fingerprint": g.fingerprint, "type": g.type, "message": g.message,
                    "frame": g.frame, "count": g.count, "tasks": g.tasks,
                    "first_seen": g.first_seen, "last_seen": g.last_seen,
                    "sample_traceback": g.sample_traceback,
                }
                for g in groups
            ],
        })
        return
    if not groups:
        click.echo("no failures" + ("" if since is None else " in that window"))
        return
    from rich.table import Table

    table = Table(title=f"{queue.path}: recurring errors")
    for col in ("count", "tasks", "error", "where", "last seen"):
        table.add_column(col, overflow="fold")
    now = time.time()
    for g in groups:
        table.add_row(
            str(g.count), str(g.tasks), f"{g.type}: {g.message}", g.frame or "-",
            ago(now - g.last_seen) + " ago",
        )
    out = console()
    out.print(table)
    if with_tb:
        for g in groups:
            out.rule(f"{g.type} ({g.fingerprint})")
            out.print(g.sample_traceback.rstrip(), markup=False, highlight=False)
