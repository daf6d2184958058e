"""The ``durableq`` command, in-process and as a real subprocess beside a running owner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import durableq
from durableq._cli import main

from .conftest import TIMEOUT

SCHEMA = {
    "path": str, "ready": int, "scheduled": int, "in_flight": int, "dead": int, "put_total": int,
    "acked_total": int, "owner_pid": int, "owner_alive": bool,
}


def test_stats_json_reads_a_queue_while_its_owner_runs(qpath: Path) -> None:
    q = durableq.Queue(path=qpath, ack="manual")
    q.put_many(["a", "b", "c"])
    q.get_message(timeout=TIMEOUT).ack()
    q.stats()  # the ack is applied
    result = CliRunner().invoke(main, ["stats", str(qpath), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {k: type(v) for k, v in data.items()} == SCHEMA
    assert (data["put_total"], data["acked_total"], data["owner_pid"]) == (3, 1, os.getpid())
    assert data["ready"] + data["in_flight"] == 2 and data["owner_alive"]
    q.put("the owner is undisturbed")
    assert q.qsize() >= 1


def test_stats_table_and_a_queue_with_no_owner(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put(1)
    del q  # the owner shuts down; its pid stays on record
    result = CliRunner().invoke(main, ["stats", str(qpath)])
    assert result.exit_code == 0, result.output
    assert "ready" in result.output and "not running" in result.output


def test_not_a_queue_exits_3(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["stats", str(tmp_path / "nope")])
    (tmp_path / "plain").mkdir()
    plain = runner.invoke(main, ["stats", str(tmp_path / "plain")])
    assert (missing.exit_code, plain.exit_code) == (3, 3)
    assert "not a durableq queue" in plain.output


def test_usage_errors_exit_2_and_help_shows_an_example() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["stats"]).exit_code == 2
    assert "Example: durableq stats jobs.q" in runner.invoke(main, ["stats", "--help"]).output
    assert durableq.__version__ in runner.invoke(main, ["--version"]).output


def test_real_subprocess_reads_without_taking_ownership(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put_many(range(5))
    out = subprocess.run(
        [sys.executable, "-m", "durableq", "stats", str(qpath), "--json"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )
    data = json.loads(out.stdout)
    assert (data["ready"], data["owner_pid"], data["owner_alive"]) == (5, os.getpid(), True)
    assert [q.get(timeout=TIMEOUT) for _ in range(5)] == list(range(5))  # still the owner


def test_inspecting_in_the_owner_process_keeps_the_lock(qpath: Path) -> None:
    import multiprocessing

    from .test_queue import try_to_open

    q = durableq.Queue(path=qpath)
    with durableq.inspect(qpath) as view:
        assert view.stats()["owner_alive"]
    result = multiprocessing.Queue()
    p = multiprocessing.Process(target=try_to_open, args=(str(qpath), result))
    p.start()
    assert result.get(timeout=TIMEOUT) == f"locked by {os.getpid()}", "the lock survived"
    p.join(TIMEOUT)
    del q
