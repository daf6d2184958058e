"""The ``durableq`` command, in-process (click's runner) and as a real subprocess beside a
running owner; every --json output is checked against the schema docs/cli.md documents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import durableq
from durableq import DiskcacheStore, State
from durableq._cli import main
from durableq._client import FAST_REFILL

from .conftest import TIMEOUT

NUM = (int, float)
OPT_NUM = (int, float, type(None))
#: The JSON schemas of docs/cli.md: key -> allowed types.
STATS = {
    "path": str, "ready": int, "scheduled": int, "in_flight": int, "dead": int, "done": int,
    "expired": int, "put_total": int, "acked_total": int, "late_total": int,
    "by_priority": dict, "next_due": OPT_NUM, "oldest_ready_age": OPT_NUM,
    "rates": (dict, type(None)), "owner_pid": (int, type(None)), "owner_alive": bool,
}
BODY = {
    "kind": str, "size": int, "value": object, "repr": str, "function": (str, type(None)),
    "timeout": OPT_NUM, "max_attempts": (int, type(None)), "problem": (str, type(None)),
}
MESSAGE = {
    "id": int, "state": str, "priority": str, "due": NUM, "attempts": int, "created": NUM,
    "finished": OPT_NUM, "deadline": OPT_NUM, "expires": OPT_NUM, "late": bool, "body": dict,
}
FAILURE = {
    "time": NUM, "id": int, "name": str, "attempt": int, "cause": str, "type": str,
    "message": str, "traceback": str, "pid": int,
}
GROUP = {
    "fingerprint": str, "type": str, "message": str, "frame": str, "count": int, "tasks": int,
    "first_seen": NUM, "last_seen": NUM, "sample_traceback": str,
}
EXPORT = {
    "v": int, "id": int, "state": str, "priority": str, "due": NUM, "attempts": int,
    "created": NUM, "finished": OPT_NUM, "deadline": OPT_NUM, "expires": OPT_NUM, "body": str,
}
CHECK = {"name": str, "status": str, "detail": str, "ids": list}


def conforms(data: dict[str, Any], schema: dict[str, Any], *, more: type | None = None) -> None:
    """``data`` has exactly the keys of ``schema`` with those types (and, with ``more``,
    maybe further keys of that type: counts added in later versions)."""
    extra = set(data) - set(schema)
    assert set(schema) <= set(data) and (not extra or more is not None), set(data) ^ set(schema)
    assert all(isinstance(data[k], more) for k in extra if more is not None), extra
    for key, types in schema.items():
        assert isinstance(data[key], types), (key, data[key])


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result


def run_json(*args: str, code: int = 0) -> Any:
    return json.loads(run(*args, "--json", code=code).stdout)


class Poison:
    """Unpickling it leaves a file behind: proof that something ran code."""

    def __init__(self, mark: str) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.mark,))


def owned(qpath: Path, tmp_path: Path) -> Any:
    """An owned queue: ids 1 dead (with a logged error), 2 acked, 3 in flight, 4-5 ready,
    6 a pickle, 7 scheduled. The test ends it with ``done(q)``."""
    q = durableq.Queue(path=qpath, ack="manual", history=100)
    q.put_many([{"n": 0}, {"n": 1}, {"n": 2}, b"\x00raw", {"n": 4}])
    q.put(Poison(str(tmp_path / "ran")))
    q.put("later", delay=3600)
    # Gets further apart than FAST_REFILL: each fetches one message, none ahead (a fast
    # consumer's prefetch would hold a fourth in flight).
    q.get_message(timeout=TIMEOUT).nack(requeue=False, error=KeyError("user 42"))
    time.sleep(2 * FAST_REFILL)
    q.get_message(timeout=TIMEOUT).ack()
    time.sleep(2 * FAST_REFILL)
    q.held = q.get_message(timeout=TIMEOUT)
    q.stats()  # the acks are applied
    return q


def done(q: Any) -> None:
    """Settle what the test holds; the owner stops once the caller drops ``q``."""
    q.held.ack()
    del q  # the owner shuts down; its pid stays on record


def test_stats_json_beside_a_live_owner(qpath: Path, tmp_path: Path) -> None:
    queue = owned(qpath, tmp_path)
    data = run_json("stats", str(qpath))
    conforms(data, STATS, more=int)
    assert (data["ready"], data["in_flight"], data["dead"], data["scheduled"]) == (3, 1, 1, 1)
    assert (data["put_total"], data["owner_pid"], data["owner_alive"]) == (7, os.getpid(), True)
    assert data["by_priority"] == {"high": 0, "medium": 4, "low": 0} and data["rates"] is None
    queue.put("the owner is undisturbed")
    assert run_json("stats", str(qpath), "--window", "0.05")["rates"]["put"] == 0
    done(queue)
    del queue


def test_stats_table_and_a_queue_with_no_owner(qpath: Path) -> None:
    q = durableq.Queue(path=qpath)
    q.put(1)
    del q  # the owner shuts down; its pid stays on record
    out = run("stats", str(qpath)).output
    assert "ready" in out and "not running" in out


def test_ls_pages_by_id_and_filters_by_state(qpath: Path, tmp_path: Path) -> None:
    queue = owned(qpath, tmp_path)
    data = run_json("ls", str(qpath), "--limit", "3")
    assert [m["id"] for m in data["messages"]] == [1, 2, 3] and data["next_after"] == 3
    for m in data["messages"]:
        conforms(m, MESSAGE)
        conforms(m["body"], BODY)
    rest = run_json("ls", str(qpath), "--after", "3")
    assert [m["id"] for m in rest["messages"]] == [4, 5, 6, 7] and rest["next_after"] is None
    states = {m["id"]: m["state"] for m in data["messages"] + rest["messages"]}
    assert states == {1: "dead", 2: "done", 3: "in_flight", 4: "ready", 5: "ready", 6: "ready",
                      7: "scheduled"}
    dead = run_json("ls", str(qpath), "--state", "dead", "--state", "scheduled")
    assert [(m["id"], m["body"]["value"]) for m in dead["messages"]] == [(1, {"n": 0}),
                                                                         (7, "later")]
    assert "scheduled" in run("ls", str(qpath)).output
    done(queue)
    del queue


def test_show_never_unpickles_unless_asked(qpath: Path, tmp_path: Path) -> None:
    queue = owned(qpath, tmp_path)
    data = run_json("show", str(qpath), "1")
    conforms({k: v for k, v in data.items() if k not in ("failures", "path")}, MESSAGE)
    (failure,) = data["failures"]
    conforms(failure, FAILURE)
    assert (failure["type"], failure["message"]) == ("KeyError", "'user 42'")
    pickled = run_json("show", str(qpath), "6")["body"]
    assert (pickled["kind"], pickled["value"]) == ("pickle", None)
    assert "KeyError" in run("show", str(qpath), "1").output
    assert not (tmp_path / "ran").exists()
    run("show", str(qpath), "6", "--unpickle")
    assert (tmp_path / "ran").exists(), "--unpickle shows the object"
    assert "no message 99" in run("show", str(qpath), "99", code=1).output
    done(queue)
    del queue


def test_report_groups_recurring_errors(qpath: Path, tmp_path: Path) -> None:
    queue = owned(qpath, tmp_path)
    queue.put_many([1, 2])
    for n in (97, 98):
        queue.get_message(timeout=TIMEOUT).nack(requeue=False, error=KeyError(f"user {n}"))
    queue.stats()
    data = run_json("report", str(qpath), "--since", "1h")
    (group,) = data["groups"]
    conforms(group, GROUP)
    assert (group["count"], group["tasks"], group["message"]) == (3, 3, "'user <n>'")
    assert "KeyError" in run("report", str(qpath)).output
    done(queue)
    del queue


def test_retry_replay_and_purge(qpath: Path) -> None:
    q = durableq.Queue(path=qpath, ack="manual", history=100)
    q.put_many(["a", "b", "c"])
    for _ in range(3):
        q.get_message(timeout=TIMEOUT).nack(requeue=False)
    del q  # the owner shuts down; its pid stays on record
    assert run_json("retry", str(qpath), "1")["retried"] == [1]
    assert run("retry", str(qpath), "1", code=1).output.count("not dead") == 1
    assert run_json("replay", str(qpath), "2")["replayed"] == {"2": 4}
    run("replay", str(qpath), "1", code=1)  # ready, not finished
    assert run_json("purge", str(qpath), "--dead", "--older-than", "1h")["purged"] == 0
    assert run_json("purge", str(qpath), "--dead")["purged"] == 2
    run("retry", str(qpath), code=2)  # neither ids nor --dead
    with durableq.inspect(qpath) as view:
        assert [(m.id, m.state) for m in view.messages()] == [
            (1, State.READY), (4, State.READY)]


def test_retry_beside_a_live_owner_is_delivered(qpath: Path) -> None:
    q = durableq.Queue(path=qpath, ack="manual")
    q.put("again")
    q.get_message(timeout=TIMEOUT).nack(requeue=False)
    q.stats()
    out = subprocess.run(
        [sys.executable, "-m", "durableq", "retry", str(qpath), "--dead", "--json"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )
    assert json.loads(out.stdout)["retried"] == [1]
    msg = q.get_message(timeout=TIMEOUT)  # within the owner's safety re-check
    assert (msg.id, msg.body) == (1, "again")
    msg.ack()
    del q  # the owner shuts down; its pid stays on record


def test_retry_from_another_program_wakes_a_waiting_consumer_at_once(
    qpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner's dispatcher watches the queue directory's FIFO that repairs poke: a
    consumer already waiting gets the revived message without the safety re-check (made
    an hour here, so that only the wakeup can deliver it)."""
    import threading

    from durableq import _dispatcher

    monkeypatch.setattr(_dispatcher, "SAFETY_CHECK", 3600.0)
    q = durableq.Queue(path=qpath, ack="manual")
    q.put("again")
    q.get_message(timeout=TIMEOUT).nack(requeue=False)
    got: list[Any] = []
    waiting = threading.Thread(
        target=lambda queue: got.append(queue.get_message(timeout=TIMEOUT)), args=(q,)
    )
    waiting.start()
    end = time.monotonic() + TIMEOUT
    while not q._shared.hungry.value:  # the owner holds the consumer's request
        assert time.monotonic() < end, "the consumer's request never reached the owner"
        time.sleep(0.001)
    out = subprocess.run(
        [sys.executable, "-m", "durableq", "retry", str(qpath), "--dead", "--json"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )
    assert json.loads(out.stdout)["retried"] == [1]
    waiting.join(TIMEOUT)
    assert [(m.id, m.body, m.attempts) for m in got] == [(1, "again", 2)]
    got[0].ack()
    del q


def _own_and_die(path: str) -> None:
    _q = durableq.Queue(path=path)  # kept: a collected queue would close its owner first
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_owners_wakeup_fifo_is_removed_by_the_next_owner(qpath: Path) -> None:
    import multiprocessing

    for _ in range(3):
        p = multiprocessing.get_context("fork").Process(target=_own_and_die, args=(str(qpath),))
        p.start()
        p.join(TIMEOUT)
        assert p.exitcode == -signal.SIGKILL
    q = durableq.Queue(path=qpath)
    assert len(list((qpath / "task-wake").iterdir())) == 1, "only this owner's"
    del q


def test_a_queue_whose_file_system_has_no_fifos_still_works(
    qpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner's wakeup FIFO is a convenience: where mkfifo fails, the queue opens and
    serves, and a repair's messages go out at the safety re-check."""
    def no_fifos(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "mkfifo", no_fifos)
    q = durableq.Queue(path=qpath)
    q.put("works")
    assert q.get(timeout=TIMEOUT) == "works"
    del q


def test_export_import_round_trip(qpath: Path, tmp_path: Path) -> None:
    queue = owned(qpath, tmp_path)
    lines = run("export", str(qpath)).stdout.splitlines()
    records = [json.loads(line) for line in lines]
    for r in records:
        conforms(r, EXPORT)
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    target = tmp_path / "new.q"
    result = CliRunner().invoke(main, ["import", str(target), "--json"], input="\n".join(lines))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["imported"] == 5  # unfinished only
    with durableq.inspect(target) as view:
        copied = view.messages()
    assert [(m.state, m.body) for m in copied] == [
        (State.READY, r["body"] and __import__("base64").b64decode(r["body"]))
        for r in records if r["state"] in ("in_flight", "ready")
    ] + [(State.SCHEDULED, copied[-1].body)]
    bad = CliRunner().invoke(main, ["import", str(target)], input='{"v": 99}\n')
    assert bad.exit_code == 1 and "version" in bad.output
    done(queue)
    del queue


def test_doctor_finds_and_repairs(qpath: Path) -> None:
    store = DiskcacheStore(qpath)
    store.put_many([b"\x07not a payload", b"\x01\xa2ok"])
    store.lease("gone", 1, now=time.time(), ttl=60)  # a lease no owner will settle
    store.put_many([b"\x02\x80\x05broken"])
    store.close()
    data = run_json("doctor", str(qpath), code=1)
    for check in data["checks"]:
        conforms(check, CHECK)
    status = {c["name"]: (c["status"], c["ids"]) for c in data["checks"]}
    assert status["leases"] == ("problem", [1]) and status["bodies"] == ("problem", [3])
    assert status["integrity cache.db"][0] == status["permissions"][0] == "ok"
    fixed = run_json("doctor", str(qpath), "--repair")
    status = {c["name"]: (c["status"], c["ids"]) for c in fixed["checks"]}
    assert status["leases"] == ("fixed", [1]) and status["bodies"] == ("fixed", [1, 3])
    assert fixed["ok"] and run_json("doctor", str(qpath))["ok"]
    with durableq.inspect(qpath) as view:
        assert [m.id for m in view.messages([State.DEAD])] == [1, 3]
        assert view.failures(id=3)[0].type == "Quarantined"
    (qpath / "extra.db").write_bytes(b"not sqlite at all" * 100)
    assert "integrity extra.db" in run("doctor", str(qpath), code=1).output


def test_every_command_has_help_with_an_example_and_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not a queue")
    for name in main.commands:
        assert "Example: durableq " + name in runner.invoke(main, [name, "--help"]).output
        assert runner.invoke(main, [name]).exit_code == 2, name  # PATH missing
        if name == "import":
            continue  # creates its queue
        extra = {"show": ["1"], "replay": ["1"], "cancel": ["1"], "confirm": ["1"],
                 "pending": ["dev"], "drain": ["dev"]}.get(name, [])
        args = [name, str(tmp_path / "plain"), *extra]
        args += ["--dead"] if name in ("retry", "purge") else []
        missing = runner.invoke(main, args)
        assert missing.exit_code == 3 and "not a durableq queue" in missing.output, name
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
    del q  # the owner shuts down; its pid stays on record


def test_inspecting_in_the_owner_process_keeps_the_lock(qpath: Path) -> None:
    import multiprocessing

    from .test_queue import try_to_open

    q = durableq.Queue(path=qpath)
    with durableq.inspect(qpath) as view:
        assert view.stats()["owner_alive"]
    result: Any = multiprocessing.Queue()
    p = multiprocessing.Process(target=try_to_open, args=(str(qpath), result))
    p.start()
    assert result.get(timeout=TIMEOUT) == f"locked by {os.getpid()}", "the lock survived"
    p.join(TIMEOUT)
    del q  # the owner shuts down; its pid stays on record


def _consume(q: Any, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    while True:
        msg = q.get_message(timeout=TIMEOUT)
        if msg.body is None:
            msg.ack()
            break
        if msg.body % 3 == 0 and msg.attempts == 1:
            msg.nack(requeue=False)  # dead: for the maintainer to revive
        else:
            os.write(fd, f"{msg.body}\n".encode())
            msg.ack()
    os.close(fd)


def _maintain(path: str, stop: Any, revived: Any) -> None:
    while not stop.is_set():
        with durableq.maintain(path) as queue:
            revived.value += len(queue.retry_dead())
            queue.purge_dead(older_than=3600)  # deletes nothing, but takes the same locks


def test_repairs_beside_a_busy_owner_lose_nothing_and_deliver_nothing_twice(
    qpath: Path, tmp_path: Path
) -> None:
    import multiprocessing
    from collections import Counter

    n, log = 300, str(tmp_path / "acked")
    q = durableq.Queue(path=qpath, ack="manual")
    stop, revived = multiprocessing.Event(), multiprocessing.Value("i", 0)
    procs = [multiprocessing.Process(target=_consume, args=(q, log)) for _ in range(2)]
    procs.append(multiprocessing.Process(target=_maintain, args=(str(qpath), stop, revived)))
    for p in procs:
        p.start()
    for i in range(n):
        q.put(i)
    end = time.monotonic() + TIMEOUT
    while len(Path(log).read_text().split() if Path(log).exists() else []) < n:
        assert time.monotonic() < end, "revived messages never came back"
        time.sleep(0.01)
    stop.set()
    q.put_many([None, None])
    for p in procs:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    acked = Counter(Path(log).read_text().split())
    assert acked == Counter(str(i) for i in range(n)), "each message acked exactly once"
    assert revived.value == n // 3
    del q


def test_forged_records_are_left_out_and_reported(qpath: Path) -> None:
    import sqlite3

    store = DiskcacheStore(qpath)
    store.put_many([b"\x01\x01", b"\x01\x02", b"\x01\x03"])
    store.close()
    con = sqlite3.connect(qpath / "cache.db")
    with con:
        con.execute("UPDATE dq_message SET body = ? WHERE id = 2", (b"\x01\x07",))
    con.close()
    assert [m["id"] for m in run_json("ls", str(qpath))["messages"]] == [1, 3]
    run("show", str(qpath), "2", code=1)
    assert [json.loads(x)["id"] for x in run("export", str(qpath)).stdout.splitlines()] == [1, 3]
    checks = {c["name"]: c for c in run_json("doctor", str(qpath), code=1)["checks"]}
    assert (checks["signatures"]["status"], checks["signatures"]["ids"]) == ("problem", [2])
    with durableq.inspect(qpath) as view:
        assert [m.id for m in view.messages()] == [1, 3] and view.integrity_faults
        assert view.faults() == [], "reading wrote nothing, not even a fault"


def test_doctor_repair_salvages_a_damaged_file(qpath: Path) -> None:
    from .test_corruption import garble_middle_page

    store = DiskcacheStore(qpath)
    store.put_many([b"\x01\xa1x" * 60] * 2000)
    store.close()
    garble_middle_page(qpath)
    found = {c["name"]: c for c in run_json("doctor", str(qpath), code=1)["checks"]}
    assert found["integrity cache.db"]["status"] == "problem"
    fixed = {c["name"]: c for c in run_json("doctor", str(qpath), "--repair")["checks"]}
    assert fixed["integrity cache.db"]["status"] == "fixed"
    assert "lost" in fixed["integrity cache.db"]["detail"]
    assert list(qpath.glob("cache.db.corrupt-*")), "the damaged file is kept"
    assert run_json("doctor", str(qpath))["ok"]
