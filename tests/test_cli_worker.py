"""``durableq worker`` as a real service process: it takes over from a SIGKILLed program,
runs what a ``Submitter`` adds meanwhile, stops gracefully on SIGTERM and at once on a
second SIGINT. Tasks are counted by id in an O_APPEND log."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import durableq
from durableq._cli import main
from durableq._task import check_options, encode_call

from .conftest import TIMEOUT

TASKS = '''
import os, time

def record(log, n):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{n}\\n".encode())
    os.close(fd)
    return n

def gated(log, n, gate):
    record(log + ".started", n)
    end = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.01)  # a bounded wait for the test to open the gate
    return record(log, n)
'''


def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for another process to make ``check`` true."""
    end = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.fixture
def tasks(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "cli_tasks.py").write_text(TASKS)
    sys.path.insert(0, str(tmp_path / "mods"))
    yield tmp_path / "mods"
    sys.path.remove(str(tmp_path / "mods"))
    sys.modules.pop("cli_tasks", None)


def service(qpath: Path, mods: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "durableq", "worker", str(qpath), "--import-path", str(mods),
         *extra],
        stderr=subprocess.PIPE,
    )


def reap(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def said(proc: subprocess.Popen[bytes], text: bytes) -> None:
    """Block until the service writes ``text`` to its stderr."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if text in line:
            return
    raise AssertionError(f"the service exited with {proc.wait(TIMEOUT)}")


def serving(proc: subprocess.Popen[bytes]) -> None:
    said(proc, b"serving with")


def test_takes_over_from_a_killed_program_and_serves_submitters(
    qpath: Path, tasks: Path, tmp_path: Path
) -> None:
    import cli_tasks

    log, gate = tmp_path / "log", tmp_path / "gate"
    producer = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(tasks)!r})
        import durableq, cli_tasks
        ex = durableq.Executor(path={str(qpath)!r}, max_workers=2)
        for n in range(6):
            ex.submit(cli_tasks.gated, {str(log)!r}, n, {str(gate)!r})
        while open({str(log)!r} + ".started").read().count("\\n") < 2:
            pass
        os.kill(os.getpid(), signal.SIGKILL)  # two tasks mid-run, four waiting
    """)
    (tmp_path / "log.started").write_text("")
    killed = subprocess.run([sys.executable, "-c", producer], timeout=TIMEOUT)
    assert killed.returncode == -signal.SIGKILL
    gate.write_text("open")
    proc = service(qpath, tasks, "-w", "2")
    try:
        serving(proc)
        eventually(lambda: len(lines(log)) == 6, "the earlier program's tasks")
        with durableq.Submitter(qpath) as submit:
            ids = submit.map(cli_tasks.record, [str(log)] * 3, [6, 7, 8])
        assert ids == [7, 8, 9]
        eventually(lambda: len(lines(log)) == 9, "the submitted tasks")
        task = encode_call(cli_tasks.record, (str(log), 9), {}, check_options(None, 3))
        line = {"v": 1, "id": 1, "state": "ready", "priority": "high", "due": 0,
                "attempts": 0, "created": 0, "finished": None, "deadline": None,
                "expires": None, "body": base64.b64encode(task).decode()}
        imported = CliRunner().invoke(main, ["import", str(qpath)], input=json.dumps(line))
        assert imported.exit_code == 0, imported.output
        eventually(lambda: len(lines(log)) == 10, "an imported task: the import wakes it")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        reap(proc)
    assert Counter(lines(log)) == Counter(str(n) for n in range(10)), "each task ran once"
    with durableq.inspect(qpath) as view:
        counts = view.counts()
        assert (counts.ready, counts.in_flight, counts.acked_total) == (0, 0, 10)


def test_sigterm_finishes_the_running_task_and_sigint_twice_stops_at_once(
    qpath: Path, tasks: Path, tmp_path: Path
) -> None:
    import cli_tasks

    log, gate = tmp_path / "log", tmp_path / "gate"
    proc = service(qpath, tasks, "-w", "1")
    try:
        serving(proc)
        with durableq.Submitter(qpath) as submit:
            submit.submit(cli_tasks.gated, str(log), "slow", str(gate))
        eventually(lambda: lines(Path(f"{log}.started")) == ["slow"], "the task to start")
        proc.send_signal(signal.SIGTERM)
        gate.write_text("open")  # the running task may finish: the service waits for it
        assert proc.wait(TIMEOUT) == 0
        assert lines(log) == ["slow"]
    finally:
        reap(proc)
    gate.unlink()
    proc = service(qpath, tasks, "-w", "1")
    try:
        serving(proc)
        with durableq.Submitter(qpath) as submit:
            submit.submit(cli_tasks.gated, str(log), "stuck", str(gate))
        eventually(lambda: "stuck" in lines(Path(f"{log}.started")), "the task to start")
        proc.send_signal(signal.SIGINT)
        said(proc, b"stopping")  # two signals sent at once would arrive as one
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 1
    finally:
        reap(proc)
    assert lines(log) == ["slow"], "the killed task never finished"
    with durableq.inspect(qpath) as view:
        counts = view.counts()
    assert counts.ready + counts.in_flight == 1, "and it stays stored for the next service"


def test_refuses_a_directory_that_is_not_a_queue(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    out = subprocess.run(
        [sys.executable, "-m", "durableq", "worker", str(tmp_path)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert out.returncode == 3 and "not a durableq queue" in out.stderr
    assert os.listdir(tmp_path) == ["notes.txt"]
