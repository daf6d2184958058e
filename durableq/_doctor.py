"""``durableq doctor``: check a queue directory and, when asked, repair what can be.

Checks: SQLite's ``integrity_check`` on every database file, who may write the directory
(the same rules that refuse to open an unsafe one), the owner lock, leases nobody will
settle (no owner alive, or expired ones a live owner has not taken back), records failing
their HMAC (command-queue records too, when ``commands.db`` exists), and message bodies no
consumer or worker could read. Repairs
(``repair=True``): orphaned leases go back to ready, taking the owner lock so no owner
runs meanwhile; unreadable waiting messages are quarantined as dead, with the reason in
the failure log; damaged database files are rebuilt from their readable rows
(``durableq.salvage``, no owner running). Permission problems are reported with the
command that fixes them, never changed here.
"""

from __future__ import annotations

import glob
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from ._bodies import problem
from ._errors import ConfigurationError, QueueLocked, StoreError, UnsafePath
from ._maintain import Maintainer
from ._records import State
from .store import DiskcacheStore

#: A live owner takes an expired lease back within seconds; one older than this is stuck.
STUCK_AFTER: Final = 60.0
#: Ids listed per finding; the count is always complete.
SHOWN: Final = 20

#: ``progress(step, done, total)``: total is None while unknown.
Progress = Callable[[str, int, int | None], None]


@dataclass
class Check:
    """One finding: ``status`` is ``"ok"``, ``"problem"`` or ``"fixed"``."""

    name: str
    status: str
    detail: str
    ids: list[int] = field(default_factory=list)


@dataclass
class Diagnosis:
    path: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        """No problem is left (fixed ones count as fine)."""
        return all(c.status != "problem" for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def diagnose(
    queue: Maintainer, *, repair: bool = False, progress: Progress | None = None
) -> Diagnosis:
    """Run every check on ``queue``; with ``repair``, fix what can be fixed."""
    report = progress or (lambda step, done, total: None)
    checks = [*_integrity(queue.path, report), _permissions(queue.path)]
    if repair and any(c.status == "problem" for c in checks[:-1]):
        checks = [*_salvage(queue.path, checks[:-1], report), checks[-1]]
    pid, alive = queue.owner()
    checks.append(Check(
        "owner", "ok",
        f"pid {pid} owns the queue" if alive
        else f"no owner running (last: pid {pid})" if pid else "no owner has run yet",
    ))
    checks.append(_reading("leases", lambda: _leases(queue, alive, repair)))
    checks.append(_reading("signatures", lambda: _signatures(queue)))
    commands = _command_signatures(queue.path)
    if commands is not None:  # a CommandQueue has used the directory
        checks.append(commands)
    checks.append(_reading("bodies", lambda: _bodies(queue, repair, report)))
    return Diagnosis(queue.path, checks)


def _reading(name: str, check: Callable[[], Check]) -> Check:
    """A check that reads the store: a damaged file stops it, not the diagnosis."""
    try:
        return check()
    except StoreError as exc:
        return Check(name, "problem", f"could not read the store: {exc}")


def _integrity(path: str, report: Progress) -> list[Check]:
    files = sorted(glob.glob(os.path.join(path, "*.db")))
    out = []
    for n, name in enumerate(files):
        report("integrity", n, len(files))
        uri = f"file:{name}?mode=ro"
        try:
            con = sqlite3.connect(uri, uri=True, timeout=10.0)
            try:
                rows = [r[0] for r in con.execute("PRAGMA integrity_check")]
            finally:
                con.close()
        except sqlite3.Error as exc:
            rows = [f"cannot read: {exc}"]
        base = os.path.basename(name)
        if rows == ["ok"]:
            out.append(Check(f"integrity {base}", "ok", "integrity_check: ok"))
        else:
            out.append(Check(
                f"integrity {base}", "problem",
                "; ".join(rows[:5]) + " (--repair rebuilds it from its readable rows "
                "while no owner runs: durableq.salvage)",
            ))
    report("integrity", len(files), len(files))
    return out


def _salvage(path: str, found: list[Check], report: Progress) -> list[Check]:
    """Rebuild damaged files from their readable rows (``durableq.salvage``), then check
    them again; a file that is not one of the queue's is only reported."""
    from .store._salvage import salvage

    try:
        done = salvage(path)
    except QueueLocked as exc:
        for c in found:
            if c.status == "problem":
                c.detail += f"; not salvaged: {exc} (stop it first)"
        return found
    after = {c.name: c for c in _integrity(path, report)}
    out = []
    for c in found:
        again = after.get(c.name, c)
        for s in done:
            if f"integrity {os.path.basename(s.path)}" == c.name:
                lost = sum(len(v) for v in s.lost.values())
                again = Check(
                    c.name, "fixed" if again.status == "ok" else "problem",
                    f"rebuilt from its readable rows ({sum(s.rows.values())} kept, {lost} "
                    f"lost; the damaged file is kept as {os.path.basename(s.kept_as)})"
                    + (f"; {s.error}" if s.error else ""),
                )
        out.append(again)
    return out


def _permissions(path: str) -> Check:
    try:
        from ._security import check_directory

        check_directory(path)
    except UnsafePath as exc:
        return Check("permissions", "problem", str(exc))
    return Check("permissions", "ok", "only this user can write the directory and its files")


def _leases(queue: Maintainer, alive: bool, repair: bool) -> Check:
    if alive:
        stuck = queue.stuck_leases(time.time() - STUCK_AFTER, limit=SHOWN)
        if not stuck:
            return Check("leases", "ok", "no lease expired unnoticed")
        return Check(
            "leases", "problem",
            f"leases expired over {STUCK_AFTER:g} s ago and not taken back by the live "
            "owner (is its dispatcher stuck? see `durableq top`)",
            [i for i, _ in stuck],
        )
    orphans = queue.messages([State.IN_FLIGHT], limit=SHOWN)
    count = queue.counts().in_flight
    if not count:
        return Check("leases", "ok", "no message in flight")
    ids = [r.id for r in orphans]
    if not repair:
        return Check(
            "leases", "problem",
            f"{count} message(s) in flight with no owner alive: the next owner requeues "
            "them at start-up; --repair does it now",
            ids,
        )
    try:
        back = queue.requeue_orphans()
    except QueueLocked as exc:
        return Check("leases", "problem", f"an owner started meanwhile: {exc}", ids)
    return Check("leases", "fixed", f"{back} orphaned lease(s) returned to ready", ids)


def _signatures(queue: Maintainer) -> Check:
    """Every record against its HMAC (reading only). A record that fails is never
    deserialized: reads leave it out and the owner quarantines it when it meets it."""
    try:
        found = queue.verify()
    except ConfigurationError as exc:
        return Check("signatures", "problem", str(exc))
    bad = sorted(found["failed"]) + sorted(found["failed_results"])
    earlier = f"; {found['quarantined']} quarantined earlier" if found["quarantined"] else ""
    if not bad:
        return Check("signatures", "ok", f"{found['checked']} record(s) authentic{earlier}")
    return Check(
        "signatures", "problem",
        f"{len(bad)} record(s) fail their HMAC: changed by someone without the key, never "
        f"deserialized (left out of reads; the owner quarantines them){earlier}",
        bad[:SHOWN],
    )


def _command_signatures(path: str) -> Check | None:
    """Every command in ``commands.db`` against its HMAC (reading only), and how many were
    quarantined; None if no command queue was kept there. A failing command is never
    deserialized: the next ``pending`` or ``drain`` of its target sets it aside."""
    store = DiskcacheStore.attach(path)
    try:
        found = store.verify_commands()
    except ConfigurationError as exc:
        return Check("command signatures", "problem", str(exc))
    except StoreError as exc:
        return Check("command signatures", "problem", f"could not read the store: {exc}")
    finally:
        store.close()
    if found is None:
        return None
    earlier = f"; {found['quarantined']} quarantined earlier" if found["quarantined"] else ""
    if found["failed"]:
        return Check(
            "command signatures", "problem",
            f"{len(found['failed'])} command(s) fail their HMAC: changed by someone without "
            f"the key, never deserialized (the next pending or drain of their target "
            f"quarantines them){earlier}",
            found["failed"][:SHOWN],
        )
    if found["unsigned"]:
        return Check("command signatures", "ok",
                     f"{found['unsigned']} command(s) from before signing: signed when a "
                     f"CommandQueue next opens the directory{earlier}")
    return Check("command signatures", "ok", f"{found['checked']} command(s) authentic{earlier}")


def _bodies(queue: Maintainer, repair: bool, report: Progress) -> Check:
    waiting = (State.READY, State.SCHEDULED)
    total = sum(queue.counts().as_dict()[s.name.lower()] for s in waiting)
    bad: dict[int, str] = {}
    for n, rec in enumerate(queue.walk(waiting)):
        if n % 1000 == 0:
            report("bodies", n, total)
        why = problem(rec.body)
        if why is not None:
            bad[rec.id] = why
    report("bodies", total, total)
    if not bad:
        return Check("bodies", "ok", f"{total} waiting message(s) readable")
    ids = sorted(bad)
    sample = f"e.g. message {ids[0]}: {bad[ids[0]]}"
    if not repair:
        return Check(
            "bodies", "problem",
            f"{len(bad)} unreadable message(s), {sample}; --repair quarantines them as dead",
            ids[:SHOWN],
        )
    done = []
    for id_ in ids:
        done += queue.quarantine([id_], f"unreadable: {bad[id_]}")
    return Check(
        "bodies", "fixed" if len(done) == len(ids) else "problem",
        f"{len(done)} of {len(bad)} unreadable message(s) quarantined as dead ({sample}); "
        "`durableq show` and `durableq retry` work on them",
        done[:SHOWN],
    )
