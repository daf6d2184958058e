"""Repairing commands: ``retry``, ``replay``, ``purge``, ``export``, ``import`` and
``doctor``. Each is one atomic store operation (or a series of them), safe beside a live
owner: see ``durableq.maintain``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

import click

from ._cli_common import (
    DURATION,
    FAILED,
    console,
    emit,
    handled,
    json_option,
    progress,
    reading,
    repairing,
)
from ._inspect import STATE_NAMES
from ._maintain import export_line


@click.command()
@click.argument("path", type=click.Path())
@click.argument("ids", nargs=-1, type=click.IntRange(1))
@click.option("--dead", "all_dead", is_flag=True, help="Every dead message.")
@json_option
@handled
def retry(path: str, ids: tuple[int, ...], all_dead: bool, as_json: bool) -> None:
    """Put dead messages of the queue at PATH back to ready, with fresh failure budgets:
    the IDs given, or every dead one with --dead. A running Queue owner delivers them
    within 5 s.

    Example: durableq retry jobs.q --dead
    """
    if bool(ids) == all_dead:
        raise click.UsageError("give message IDs or --dead (not both)")
    with repairing(path) as queue:
        revived = queue.retry_dead(None if all_dead else list(ids))
    if as_json:
        emit({"path": queue.path, "retried": revived})
        return
    missed = sorted(set(ids) - set(revived))
    click.echo(f"{len(revived)} message(s) back to ready" + (f": {_ids(revived)}" if ids else ""))
    if missed:
        click.echo(f"not dead (left alone): {_ids(missed)}", err=True)
        raise SystemExit(FAILED)


@click.command()
@click.argument("path", type=click.Path())
@click.argument("ids", nargs=-1, required=True, type=click.IntRange(1))
@json_option
@handled
def replay(path: str, ids: tuple[int, ...], as_json: bool) -> None:
    """Put copies of finished (done, dead or expired) messages of the queue at PATH as new
    messages, with their priority; the originals stay as they are.

    Example: durableq replay jobs.q 17 18
    """
    new: list[int] = []
    with repairing(path) as queue, progress("replay", len(ids)) as update:
        for n, id_ in enumerate(ids):
            new += queue.replay([id_])
            update(n + 1, len(ids))
    if as_json:
        emit({"path": queue.path, "replayed": dict(zip(map(str, ids), new, strict=True))})
    else:
        click.echo("\n".join(f"{old} -> {n}" for old, n in zip(ids, new, strict=True)))


@click.command()
@click.argument("path", type=click.Path())
@click.option("--dead", is_flag=True, required=True, help="Delete dead messages (required).")
@click.option("--older-than", type=DURATION, default=None, help="Only those dead this long (7d).")
@json_option
@handled
def purge(path: str, dead: bool, older_than: float | None, as_json: bool) -> None:
    """Delete dead messages of the queue at PATH for good, all or those that died more
    than --older-than ago. Oldest first, a page per transaction.

    Example: durableq purge jobs.q --dead --older-than 7d
    """
    with repairing(path) as queue, progress("purge", None) as update:
        count = queue.purge_dead(older_than, progress=update)
    if as_json:
        emit({"path": queue.path, "purged": count})
    else:
        click.echo(f"{count} dead message(s) deleted")


@click.command()
@click.argument("path", type=click.Path())
@click.option(
    "--state", "states", multiple=True, type=click.Choice(list(STATE_NAMES)),
    help="Only messages in this state (repeatable; default: all).",
)
@click.option("-o", "--output", type=click.File("w"), default="-", help="File (default: stdout).")
@handled
def export(path: str, states: tuple[str, ...], output: IO[str]) -> None:
    """Write the messages of the queue at PATH as JSON lines (schema: docs/cli.md), by id,
    read a page at a time beside a live owner.

    Example: durableq export jobs.q > backup.jsonl
    """
    wanted = [STATE_NAMES[s] for s in states] or list(STATE_NAMES.values())
    with reading(path) as queue:
        counts = queue.counts().as_dict()
        total = sum(counts[s.name.lower()] for s in wanted)
        with progress("export", total) as update:
            n = 0
            for n, rec in enumerate(queue.walk(wanted), 1):
                output.write(json.dumps(export_line(rec), sort_keys=True) + "\n")
                if n % 1000 == 0:
                    update(n, max(n, total))
            update(n, n)
    output.flush()


@click.command("import")
@click.argument("path", type=click.Path())
@click.argument("source", type=click.File("rb"), default="-")
@click.option(
    "--finished", is_flag=True,
    help="Also put done, dead and expired messages (as new ready messages).",
)
@json_option
@handled
def import_(path: str, source: IO[bytes], finished: bool, as_json: bool) -> None:
    """Put the messages of a `durableq export` (SOURCE, default stdin) into the queue at
    PATH, created if missing: unfinished ones keep priority, due time, deadline and
    expiry; attempts start again.

    Example: durableq import new.q < backup.jsonl
    """
    size = _size(source)
    with repairing(path, create=True) as queue, progress("import", size) as update:
        count = queue.put_records(_lines(source, update, size), finished=finished)
    if as_json:
        emit({"path": queue.path, "imported": count})
    else:
        click.echo(f"{count} message(s) imported into {queue.path}")


def _size(source: IO[bytes]) -> int | None:
    try:
        return os.fstat(source.fileno()).st_size or None
    except (OSError, ValueError, AttributeError):
        return None


def _lines(source: IO[bytes], update: Any, size: int | None) -> Iterator[dict[str, Any]]:
    read = 0
    for number, raw in enumerate(source, 1):
        read += len(raw)
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"line {number}: not JSON ({exc})") from None
        if number % 1000 == 0:
            update(read, size)
    update(read, size)


@click.command()
@click.argument("path", type=click.Path())
@click.option(
    "--repair", is_flag=True,
    help="Requeue orphaned leases (no owner alive) and quarantine unreadable messages.",
)
@json_option
@handled
def doctor(path: str, repair: bool, as_json: bool) -> None:
    """Check the queue at PATH: SQLite integrity of every database, permissions, the owner
    lock, stuck or orphaned leases and unreadable messages; with --repair, fix what can be
    fixed and say what was done. Exits 1 while a problem remains.

    Example: durableq doctor jobs.q --repair
    """
    from ._doctor import diagnose

    with repairing(path) as queue, progress("doctor", None) as update:
        found = diagnose(queue, repair=repair, progress=lambda step, n, total: update(n, total))
    if as_json:
        emit(found.as_dict())
    else:
        from rich.table import Table

        table = Table(title=f"{found.path}: {'healthy' if found.ok else 'PROBLEMS'}")
        for col in ("check", "status", "detail"):
            table.add_column(col, overflow="fold")
        style = {"ok": "green", "fixed": "yellow", "problem": "bold red"}
        for c in found.checks:
            ids = f" (ids: {_ids(c.ids)})" if c.ids else ""
            table.add_row(c.name, f"[{style[c.status]}]{c.status}", c.detail + ids)
        console().print(table)
    if not found.ok:
        sys.exit(FAILED)


def _ids(ids: list[int] | tuple[int, ...]) -> str:
    return ", ".join(map(str, ids))
