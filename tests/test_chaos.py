"""``bench/queue_chaos.py`` as a test: a Queue's owner and consumers SIGKILLed again and
again while producers put and another program revives dead letters, then every message
counted by id, and every consumer of a dead owner gone (see the script's docstring)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "queue_chaos.py"


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_no_message_is_lost_through_owner_and_consumer_kills_and_repairs(
    start_method: str,
) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--seed", "5", "--owner-kills", "3", "--n", "1500",
         "--rate", "600", "--start-method", start_method],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "VERDICT: OK" in out.stdout
