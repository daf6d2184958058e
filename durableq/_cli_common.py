"""What every ``durableq`` command shares: opening the queue, exit codes, JSON output,
durations, and progress bars that show on a terminal only."""

from __future__ import annotations

import datetime
import functools
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import click

from ._errors import DurableQError, QueueNotFound
from ._inspect import Inspector, inspect
from ._maintain import Maintainer, maintain

#: Exit codes (docs/cli.md); click exits 2 on a usage error by itself.
OK, FAILED, NOT_A_QUEUE = 0, 1, 3

F = TypeVar("F", bound=Callable[..., Any])
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def handled(fn: F) -> F:
    """Turn the library's errors into the documented exit codes and a one-line message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except QueueNotFound as exc:
            click.echo(f"durableq: {exc}", err=True)
            sys.exit(NOT_A_QUEUE)
        except (DurableQError, ValueError, OSError) as exc:
            click.echo(f"durableq: {exc}", err=True)
            sys.exit(FAILED)

    return wrapper  # type: ignore[return-value]


@contextmanager
def reading(path: str) -> Iterator[Inspector]:
    with inspect(path) as queue:
        yield queue


@contextmanager
def repairing(path: str, *, create: bool = False) -> Iterator[Maintainer]:
    with maintain(path, create=create) as queue:
        yield queue  # type: ignore[misc]


def emit(data: Any) -> None:
    """One JSON document on stdout (keys sorted: stable for diffs and tests)."""
    click.echo(json.dumps(data, sort_keys=True))


class Duration(click.ParamType):  # type: ignore[type-arg]
    """``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1w``, or ``1h30m``: seconds as a float."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            self.fail(f"{value!r} is not a duration like 30s, 15m, 2h, 1d or 1h30m", param, ctx)
        return sum(float(n) * _UNITS[u or "s"] for n, u in parts)


DURATION = Duration()


def json_option(fn: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="One JSON document (schema: docs/cli.md)."
    )(fn)


def when(epoch: float | None) -> str:
    """Local wall time for a table, or "-"."""
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    """``3s``, ``4m10s``, ``2h05m``, ``3d4h`` or "-"."""
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[int, int | None], None]]:
    """``update(done, total)``: a rich bar with rate and ETA on stderr when it is a
    terminal; nothing at all when it is piped (scripts and logs stay clean)."""
    out = console(stderr=True)
    if not out.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=out,
    )
    with bar:
        task = bar.add_task(label, total=total)

        def update(done: int, new_total: int | None) -> None:
            bar.update(task, completed=done, total=new_total)

        yield update
