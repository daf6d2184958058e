"""procrastinate's side of bench/server_bench.py: the app, its two tasks, and the fresh
database its schema lives in. Producer and worker each build the same app, and the worker
finds a deferred job's task by its name."""

from __future__ import annotations

import os
import time
from typing import Any

import procrastinate
import psycopg
from psycopg.conninfo import make_conninfo

seen: list[int] = []  # latency of each job, ns
out: Any = None  # where the last job sends the results


def make_app(url: str) -> procrastinate.App:
    """An app on ``url`` with the bench's tasks registered by name."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=url, min_size=1, max_size=4))

    @app.task(name="job")
    def job(i: int, stamp: int) -> None:
        seen.append(time.perf_counter_ns() - stamp)

    @app.task(name="last")
    def last() -> None:
        """The job after the last message: report, then end the worker (stopping it after
        a given job takes a signal and a graceful shutdown, which the clock would count)."""
        out.send((time.perf_counter_ns(), seen))
        os._exit(0)

    return app


def create_database(url: str, name: str) -> str:
    """Create database ``name`` on ``url``'s server with procrastinate's schema in it;
    return its URL."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = make_conninfo(url, dbname=name)
    app = make_app(db_url)
    with app.open():
        app.schema_manager.apply_schema()
    return db_url


def drop_database(url: str, name: str) -> None:
    """Drop the database :func:`create_database` made, ending any session left in it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
