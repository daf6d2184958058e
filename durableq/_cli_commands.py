"""Command-queue commands: ``pending``, ``confirm``, ``cancel`` and ``drain`` on the
``durableq.CommandQueue`` kept in a queue directory. Payloads are described as message
bodies are (never unpickled): see ``_bodies``."""

from __future__ import annotations

import time
from typing import Any

import click

from ._bodies import describe
from ._cli_common import FAILED, ago, console, emit, handled, json_option
from ._commands import CommandQueue
from ._errors import CommandNotFound, CommandStateError
from ._inspect import check_queue
from .store import DiskcacheStore
from .store._commandstore import CommandRow


def command_json(row: CommandRow) -> dict[str, Any]:
    """A command as the JSON output shows it (schema: docs/cli.md)."""
    return {
        "id": row.id, "target": row.target, "command_type": row.command_type,
        "created_at": row.created_at, "expires_at": row.expires_at,
        "requires_confirmation": row.requires_confirmation, "confirmed": row.confirmed,
        "attempt": row.attempt, "payload": describe(row.payload),
    }


def _print(rows: list[CommandRow], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("id", "type", "age", "expires", "held", "attempt", "payload"):
        table.add_column(col, overflow="fold", no_wrap=col != "payload")
    now = time.time()
    for r in rows:
        held = "-" if not r.requires_confirmation else "confirmed" if r.confirmed else "yes"
        expires = "never" if r.expires_at is None else f"in {ago(r.expires_at - now)}"
        table.add_row(
            str(r.id), r.command_type or "-", ago(now - r.created_at), expires, held,
            str(r.attempt), describe(r.payload)["repr"][:60],
        )
    console().print(table)


@click.command()
@click.argument("path", type=click.Path())
@click.argument("target")
@click.option("--confirmations", is_flag=True, help="Only commands held for confirm.")
@json_option
@handled
def pending(path: str, target: str, confirmations: bool, as_json: bool) -> None:
    """List TARGET's undelivered commands in the command queue at PATH, oldest first,
    without delivering or changing anything.

    Example: durableq pending devices.q dev-42
    """
    store = DiskcacheStore.attach(check_queue(path))
    try:
        rows = store.command_pending(target, now=time.time(), held_only=confirmations)
    finally:
        store.command_close()
        store.close()
    if as_json:
        emit({"path": store.path, "target": target, "commands": [command_json(r) for r in rows]})
    else:
        _print(rows, f"{target}: {len(rows)} pending")


@click.command()
@click.argument("path", type=click.Path())
@click.argument("target")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N commands.")
@json_option
@handled
def drain(path: str, target: str, limit: int | None, as_json: bool) -> None:
    """Take TARGET's ready commands from the command queue at PATH and print them: they
    are delivered (removed) in one transaction, as CommandQueue.drain() does, so what this
    prints is all that is left of them.

    Example: durableq drain devices.q dev-42 --json > dev-42.json
    """
    full = check_queue(path)
    cq = CommandQueue(full)
    try:
        rows = cq.store.command_drain(
            target, now=time.time(), limit=limit, lease=None, holder=0
        )
    finally:
        cq.close()
    if as_json:
        emit({"path": full, "target": target, "commands": [command_json(r) for r in rows]})
    else:
        _print(rows, f"{target}: {len(rows)} drained")


def _each(path: str, ids: tuple[int, ...], verb: str, as_json: bool) -> None:
    full = check_queue(path)
    cq = CommandQueue(full)
    done: list[int] = []
    failed: dict[str, str] = {}
    try:
        for id_ in ids:
            try:
                getattr(cq, verb)(id_)
                done.append(id_)
            except (CommandNotFound, CommandStateError) as exc:
                failed[str(id_)] = str(exc)
    finally:
        cq.close()
    past = {"cancel": "cancelled", "confirm": "confirmed"}[verb]
    if as_json:
        emit({"path": full, past: done, "failed": failed})
    else:
        if done:
            click.echo(f"{past}: {', '.join(map(str, done))}")
        for which, why in failed.items():
            click.echo(f"durableq: {which}: {why}", err=True)
    if failed:
        raise SystemExit(FAILED)


@click.command()
@click.argument("path", type=click.Path())
@click.argument("ids", nargs=-1, required=True, type=click.IntRange(1))
@json_option
@handled
def cancel(path: str, ids: tuple[int, ...], as_json: bool) -> None:
    """Remove waiting (ready or held) commands from the command queue at PATH so they are
    never delivered. A command delivered, in flight or expired cannot be (exit 1).

    Example: durableq cancel devices.q 17
    """
    _each(path, ids, "cancel", as_json)


@click.command()
@click.argument("path", type=click.Path())
@click.argument("ids", nargs=-1, required=True, type=click.IntRange(1))
@json_option
@handled
def confirm(path: str, ids: tuple[int, ...], as_json: bool) -> None:
    """Release commands held for confirmation in the command queue at PATH: their target's
    next drain delivers them. Confirming twice is harmless.

    Example: durableq confirm devices.q 17 18
    """
    _each(path, ids, "confirm", as_json)
