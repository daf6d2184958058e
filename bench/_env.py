"""What every benchmark records about the run: machine, commit, load, how to repeat it."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import durableq

REPO = Path(__file__).resolve().parent.parent


def git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def reproduce_command(script: str, argv: Iterable[str]) -> str:
    """The command line that repeats this run, relative to the repository."""
    exe = Path(sys.executable)
    python = os.path.relpath(exe, REPO) if exe.is_relative_to(REPO) else str(exe)
    path = os.path.relpath(Path(script).resolve(), REPO)
    return " ".join(shlex.quote(x) for x in (python, path, *argv))


def machine() -> dict[str, Any]:
    """The fields shared by every benchmark's ``environment`` record."""
    changed = git("status", "--porcelain", "--", "durableq")
    return {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count() or 1,
        "commit": git("rev-parse", "HEAD"),
        "durableq_uncommitted_changes": changed.splitlines() if changed != "unknown" else [],
        "durableq_imported_from": os.path.dirname(durableq.__file__),
        "loadavg_at_start": os.getloadavg(),  # other work on the machine skews every figure
    }


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median of ``runs`` (the lower middle of an even count),
    with every run's value under ``runs_<key>``. A run that failed or gave wrong results
    is reported instead, since a median would hide it."""
    bad = [r for r in runs if "error" in r or r.get("complete") is False]
    values = sorted(float(r[key]) for r in runs if r.get(key) is not None)
    if bad or not values:
        row = dict(bad[0] if bad else runs[0])
    else:
        middle = values[(len(values) - 1) // 2]
        row = dict(next(r for r in runs if r.get(key) is not None and float(r[key]) == middle))
    row[f"runs_{key}"] = values
    return row
