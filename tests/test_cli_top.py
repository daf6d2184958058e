"""``durableq top`` in a pseudo-terminal beside a live owner, its model, and progress bars
that show on a terminal only."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

import durableq
from durableq._cli import main
from durableq._cli_top import TopModel, sparkline

from .conftest import TIMEOUT


def read_until(fd: int, text: bytes, seen: bytearray) -> None:
    """Read the terminal until ``text`` shows up (bounded by TIMEOUT)."""
    end = time.monotonic() + TIMEOUT
    while text not in seen:
        left = end - time.monotonic()
        assert left > 0, f"{text!r} never appeared in {bytes(seen[-2000:])!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # EIO: the other side closed
                break


def in_terminal(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    """Run ``durableq ARGS`` with a pseudo-terminal as stdin, stdout and stderr."""
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "durableq", *args],
        stdin=child_fd, stdout=child_fd, stderr=child_fd, env=env, close_fds=True,
    )
    os.close(child_fd)
    return proc, main_fd


def test_top_renders_in_a_terminal_and_quits_on_q(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put_many(range(10))
    proc, fd = in_terminal("top", str(qpath), "--interval", "0.2")
    seen = bytearray()
    try:
        read_until(fd, b"faults", seen)
        read_until(fd, b"press q", seen)
        assert b"waiting" in seen and b"alive" in seen and b"put" in seen
        os.write(fd, b"q")
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(fd)
    assert q.qsize() == 10, "the owner still has everything"
    del q


def test_progress_bar_on_a_terminal_only(qpath: Path, tmp_path: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put_many(range(3000))
    del q
    proc, fd = in_terminal("export", str(qpath), "-o", str(tmp_path / "out.jsonl"))
    seen = bytearray()
    try:
        read_until(fd, b"3000/3000", seen)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(fd)
    assert b"export" in seen and b"/s" in seen, "a bar with its rate"
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3000
    piped = CliRunner().invoke(main, ["export", str(qpath)])
    assert piped.exit_code == 0 and all(json.loads(x) for x in piped.stdout.splitlines())
    assert "export" not in piped.stderr


def test_model_rates_and_estimate_between_exact_counts(qpath: Path) -> None:
    store = durableq.DiskcacheStore(qpath)
    store.put_many([b"\x01\x01"] * 10)
    with durableq.inspect(qpath) as view:
        model = TopModel(view)
        first = model.refresh()
        assert (first.waiting_estimate, first.rates["put"]) == (10, 0.0)
        store.put_many([b"\x01\x02"] * 5)
        (lease,) = store.lease("t", 1, now=time.time(), ttl=60)
        store.ack([lease.token])
        model._count_cost = float("inf")  # as on a huge backlog: no exact count for now
        second = model.refresh()
        assert second.counts == first.counts, "no new scan"
        assert second.waiting_estimate == 14 and second.tallies["acked_total"] == 1
        assert second.rates["put"] > 0 and second.rates["ack"] > 0
        assert [len(v) for v in second.history.values()] == [2, 2, 2]
    store.close()
    top = CliRunner().invoke(main, ["top", str(qpath), "--json", "--count", "2",
                                    "--interval", "0.01"])
    snapshots = [json.loads(line) for line in top.stdout.splitlines()]
    assert len(snapshots) == 2 and snapshots[1]["waiting_estimate"] == 14
    assert set(snapshots[0]) == {
        "time", "owner_pid", "owner_alive", "counts", "counts_age", "waiting_estimate",
        "tallies", "rates", "workers", "faults",
    }


def test_sparkline() -> None:
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([0, 5, 10]) == "▁▅█"


def test_top_finds_the_executor_workers_by_title(qpath: Path) -> None:
    import psutil

    ex = durableq.Executor(max_workers=2, path=qpath)
    assert ex.submit(abs, -1).result(TIMEOUT) == 1
    children = {p.pid for p in psutil.Process().children()}
    top = CliRunner().invoke(main, ["top", str(qpath), "--json", "--count", "1"])
    (snapshot,) = [json.loads(line) for line in top.stdout.splitlines()]
    workers = snapshot["workers"]
    assert {w["pid"] for w in workers} <= children and len(workers) == 2
    assert all(w["task"] in ("idle", "1 builtins.abs") and w["rss"] > 0 for w in workers), [
        (w["task"], w["rss"]) for w in workers]
    ex.shutdown()
