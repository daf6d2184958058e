"""``durableq pending / confirm / cancel / drain`` on a CommandQueue's directory, beside a
process using it; payloads are described, never unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

import durableq
from durableq._cli import main

from .test_cli import BODY, Poison, conforms

COMMAND = {
    "id": int, "target": str, "command_type": (str, type(None)), "created_at": float,
    "expires_at": (float, type(None)), "requires_confirmation": bool, "confirmed": bool,
    "attempt": int, "payload": dict,
}


def run(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_pending_confirm_cancel_drain(qpath: Path, tmp_path: Path) -> None:
    cq = durableq.CommandQueue(path=qpath)
    plain = cq.enqueue("dev-42", b"reboot", ttl=3600)
    latest = cq.enqueue_or_update("dev-42", "set-temp", {"c": 21}, ttl=600)
    held = cq.enqueue_with_confirmation("dev-42", "firmware", Poison(str(tmp_path / "ran")))
    listed = run("pending", str(qpath), "dev-42")
    assert [c["id"] for c in listed["commands"]] == [plain, latest, held]
    for c in listed["commands"]:
        conforms(c, COMMAND)
        conforms(c["payload"], BODY)
    assert listed["commands"][1]["payload"]["value"] == {"c": 21}
    assert listed["commands"][2]["payload"]["kind"] == "pickle"
    assert [c["id"] for c in run("pending", str(qpath), "dev-42", "--confirmations")[
        "commands"]] == [held]
    assert run("confirm", str(qpath), str(held)) == {
        "path": str(qpath), "confirmed": [held], "failed": {}}
    cancelled = run("cancel", str(qpath), str(plain), "999", code=1)
    assert cancelled["cancelled"] == [plain] and set(cancelled["failed"]) == {"999"}
    drained = run("drain", str(qpath), "dev-42", "--limit", "1")["commands"]
    assert [c["id"] for c in drained] == [latest]
    assert not (tmp_path / "ran").exists(), "nothing was unpickled"
    assert [c.id for c in cq.drain("dev-42")] == [held], "the process's own queue agrees"
    assert run("pending", str(qpath), "dev-42")["commands"] == []
    cq.close()
