"""A full disk: put raises StoreError (cause chained), sets the fault Event, half-writes
nothing, and the queue works again once there is room.

The disk is filled for real: a child process lowers its RLIMIT_FSIZE (a file-size limit the
kernel enforces on every write, with SIGXFSZ ignored so write() fails with EFBIG), which
needs neither root nor a mount and leaves the test process untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sqlite3, sys
    import durableq

    path = sys.argv[1]
    q = durableq.Queue(path=path)
    stored = [("small", i) for i in range(50)]
    for item in stored:
        q.put(item)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    biggest = max(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + 200_000, hard))
    failures, causes = 0, set()
    for i in range(2000):
        item = ("big", i, os.urandom(20_000))
        try:
            q.put(item)
        except durableq.StoreError as exc:
            failures += 1
            causes.add(type(exc.__cause__).__name__)
            if failures == 3:
                break
        else:
            stored.append(item)
    fault_set = q.fault.is_set()
    kinds = sorted({f.kind for f in q.faults()})
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
    q.put(("after", 0))
    stored.append(("after", 0))
    got = [q.get(timeout=30) for _ in stored]
    try:
        q.get(timeout=0.2)
        extra = True
    except Exception:
        extra = False
    print(json.dumps({
        "failures": failures, "causes": sorted(causes), "fault_set": fault_set,
        "kinds": kinds, "big_stored": sum(1 for s in stored if s[0] == "big"),
        "same": got == stored, "extra": extra,
    }))
    """
)


def test_disk_full_put_raises_store_error_and_the_queue_recovers(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "q")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["failures"] == 0:
        pytest.fail(f"the file-size limit never made a put fail: {r}")
    # The cause: the put log's write (EFBIG), or SQLite's for puts that commit there.
    assert r["failures"] == 3 and r["causes"]
    assert set(r["causes"]) <= {"OperationalError", "OSError"}
    assert r["fault_set"] and "store-failed" in r["kinds"]
    assert r["big_stored"] > 0  # some fitted before the limit
    # Nothing half-written: exactly the puts that returned come back, intact, in order;
    # and once there is room again the queue takes puts and delivers them.
    assert r["same"] and not r["extra"]
