"""Queue directories no one else can write: 0700/0600 whatever the umask, unsafe paths refused."""

from __future__ import annotations

import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import durableq
from durableq import DiskcacheStore, UnsafePath

OTHER_UID = 4321


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


def test_directory_0700_and_files_0600_whatever_the_umask(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "q"
    q = durableq.Queue(path=path)
    q.put("x")
    assert q.get(timeout=10) == "x"
    q.stats()
    found = modes(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert {"cache.db", "cache.db-wal", "owner.db", "owner.db-wal", "owner.lock"} <= set(found)
    assert {name: m for name, m in found.items() if m & 0o077} == {}
    q.close()
    del q


def test_files_of_an_older_queue_are_tightened_on_open(tmp_path: Path) -> None:
    path = tmp_path / "q"
    DiskcacheStore(path).close()
    for p in path.iterdir():
        p.chmod(0o644)
    DiskcacheStore(path).close()
    assert {name: m for name, m in modes(path).items() if m & 0o077} == {}


def test_a_group_or_world_writable_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q"
    DiskcacheStore(path).close()
    path.chmod(0o777)
    with pytest.raises(UnsafePath) as info:
        durableq.Queue(path=path)
    message = str(info.value)
    assert str(path) in message and "writable by group and others" in message
    assert f"chmod 755 {path}" in message and "trusted=True" in message
    path.chmod(0o720)
    with pytest.raises(UnsafePath, match="writable by its group"):
        DiskcacheStore(path)
    DiskcacheStore(path, trusted=True).close()


def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    path = tmp_path / "q"
    DiskcacheStore(path).close()
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(UnsafePath, match=f"owned by uid {OTHER_UID}"):
        durableq.Executor(1, path=path)
    os.chown(path, 0, -1)
    os.chown(path / "cache.db", OTHER_UID, -1)
    with pytest.raises(UnsafePath) as info:
        DiskcacheStore(path)
    assert info.value.path == str(path / "cache.db")


def test_a_world_writable_parent_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(UnsafePath) as info:
        durableq.Pool(1, path=parent / "q")
    exc = info.value
    assert exc.path == str(parent) and exc.queue == str(parent / "q")
    assert "no sticky bit" in str(exc) and "chmod +t" in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    fields = ("path", "why", "fix", "queue")
    assert [getattr(again, f) for f in fields] == [getattr(exc, f) for f in fields]


def test_a_sticky_world_writable_parent_like_tmp_is_fine(tmp_path: Path) -> None:
    parent = tmp_path / "tmp"
    parent.mkdir()
    parent.chmod(0o1777)
    q = durableq.Queue(path=parent / "q")
    q.put(1)
    assert q.get(timeout=10) == 1
    q.close()


def test_a_parent_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, OTHER_UID, -1)
    with pytest.raises(UnsafePath, match=f"its parent {parent}"):
        DiskcacheStore(parent / "q")


@pytest.mark.parametrize("how", ["symlink", "file", "group-writable"])
def test_a_put_log_directory_that_is_not_ours_alone_is_refused(tmp_path: Path, how: str) -> None:
    # Producers write every message into logs/: swapped for a link, their bodies would go
    # wherever it points.
    path = tmp_path / "q"
    DiskcacheStore(path).close()
    logs = path / "logs"
    if how == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        logs.symlink_to(tmp_path / "elsewhere")
    elif how == "file":
        logs.write_bytes(b"")
    else:
        logs.mkdir(mode=0o700)
        logs.chmod(0o770)
    expected = {"symlink": "a symbolic link", "file": "not a directory",
                "group-writable": "writable by its group"}[how]
    with pytest.raises(UnsafePath, match=expected) as info:
        DiskcacheStore(path)
    assert str(logs) in str(info.value)
    DiskcacheStore(path, trusted=True).close()


def test_a_put_log_directory_made_by_a_producer_passes_the_check(tmp_path: Path) -> None:
    path = tmp_path / "q"
    s = DiskcacheStore(path)
    s.put_quiet([b"x"])
    assert stat.S_IMODE((path / "logs").stat().st_mode) == 0o700
    s.close()
    DiskcacheStore(path).close()
