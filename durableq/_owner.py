"""Becoming a queue's owner, and ceasing to be one.

The owner holds the directory's lock, recovers what earlier owners leased, and runs the
dispatcher; these helpers take only the parts they need, never the queue itself, so a
queue nobody references is collected and its dispatcher stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ._dispatcher import Dispatcher
from ._lock import OwnerLock
from ._records import Fault
from ._security import make_directory
from .store import DiskcacheStore, Store


def claim(
    path: str | os.PathLike[str] | None,
    store: Store | None,
    *,
    sync: str,
    wait: bool,
    trusted: bool = False,
    key: bytes | str | None = None,
    exclusive: bool = False,
) -> tuple[Store, Any, str, str | None]:
    """Lock the queue directory, open its store and requeue every lease of a dead owner.

    Returns the store, the lock (None for a store with no directory, unless ``exclusive``
    asks a server store for its owner lock), the directory and the temporary directory to
    remove at shutdown (when ``path`` was None).

    Raises:
        UnsafePath: another user could write to the directory (unless ``trusted``).
    """
    tmpdir = None
    if store is None:
        if path is None:
            path = tmpdir = tempfile.mkdtemp(prefix="durableq-")
        lock_dir = os.path.abspath(os.fspath(path))
        make_directory(lock_dir, trusted=trusted)  # checked before anything is read
    else:
        lock_dir = getattr(store, "path", "")
    lock: Any = OwnerLock(lock_dir, wait=wait) if lock_dir else None
    owner_lock = getattr(store, "owner_lock", None)
    if lock is None and exclusive and owner_lock is not None:
        lock = owner_lock(wait=wait)  # a server store: one exclusive owner at a time
    try:
        if store is None:
            store = DiskcacheStore(lock_dir, sync=sync, trusted=trusted, key=key)
        elif not isinstance(store, Store):
            raise TypeError(f"store must implement durableq.Store, not {type(store).__name__}")
        # Leases of earlier owners: under the lock all of them died. A server store's
        # peers may still hold theirs: only leases past their deadline come back.
        store.requeue_expired(time.time() if getattr(store, "peers", False) else float("inf"))
        settle_ids = getattr(store, "settle_ids", None)
        if settle_ids is not None:  # ids a dead owner reserved and never used go back
            settle_ids()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return store, lock, lock_dir, tmpdir


def release_slot(sem: Any) -> None:
    try:
        sem.release()
    except ValueError:
        pass  # a requeue already over-filled the slots: nothing to give back


def fault_recorder(faults: list[Fault], event: Any, store: Store) -> Callable[[Fault], None]:
    def record(fault: Fault) -> None:
        faults.append(fault)
        event.set()
        store.record_fault(fault)

    return record


def shutdown_owner(dispatcher: Dispatcher, store: Store, lock: Any, tmpdir: str | None) -> None:
    dispatcher.stop(timeout=10.0)
    store.close()
    if lock is not None:
        lock.release()
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)
