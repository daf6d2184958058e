"""Who may touch a queue directory: created 0700 with its files 0600, whatever the umask,
and refused when someone else could write to it.

A queue may hold pickles, and unpickling runs code: whoever can write a record, or swap
the directory for one of their own, can run code in every process that reads the queue.
So a directory is refused (``UnsafePath``) when it, or any directory above it, is owned
by another user (root excepted) or is writable by group or others, unless that writable
ancestor has the sticky bit (``/tmp``: others may add entries there, but not rename or
remove ours). ``trusted=True`` skips the check; docs/security.md says what that risks.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import Final

from ._errors import UnsafePath

#: Files durableq keeps in a queue directory; SQLite adds ``-wal`` and ``-shm`` beside
#: each database and gives them the database file's permissions.
DATABASES: Final = ("cache.db", "owner.db", "commands.db")
FILES: Final = (*DATABASES, "owner.lock", "key")
#: Directories durableq keeps in a queue directory: the producers' put logs.
DIRECTORIES: Final = ("logs",)


def _files(directory: str) -> Iterable[str]:
    for name in FILES:
        yield os.path.join(directory, name)
        if name in DATABASES:
            yield os.path.join(directory, name + "-wal")
            yield os.path.join(directory, name + "-shm")


def _problem(path: str, st: os.stat_result, *, leaf: bool, uid: int) -> str | None:
    """What makes ``path`` unsafe, or None."""
    if st.st_uid not in (uid, 0) or (leaf and st.st_uid != uid):
        return f"it is owned by uid {st.st_uid}, not by this process's uid {uid}"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and (leaf or not st.st_mode & stat.S_ISVTX):
        who = "group and others" if writable == stat.S_IWGRP | stat.S_IWOTH else (
            "its group" if writable == stat.S_IWGRP else "others")
        sticky = "" if leaf else " and has no sticky bit"
        return f"it is writable by {who}{sticky} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def check_directory(directory: str) -> None:
    """Raise ``UnsafePath`` if another user could write to ``directory`` or replace it.

    Checks the directory, every directory above it (symbolic links resolved), and the
    files and directories durableq keeps in it.
    """
    uid = os.geteuid()
    real = os.path.realpath(directory)
    st = os.stat(real)
    why = _problem(real, st, leaf=True, uid=uid)
    if why is not None:
        raise UnsafePath(real, why, fix=_fix(real, st, uid, leaf=True))
    for name in _files(real):
        try:
            fst = os.lstat(name)
        except FileNotFoundError:
            continue
        if fst.st_uid != uid or stat.S_ISLNK(fst.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(fst.st_mode) else f"owned by uid {fst.st_uid}"
            raise UnsafePath(name, f"it is {what}", fix=f"remove it, or chown {uid} {name}")
    for name in DIRECTORIES:
        name = os.path.join(real, name)
        try:
            dst = os.lstat(name)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(dst.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(dst.st_mode) else "not a directory"
            raise UnsafePath(name, f"it is {what}", fix="remove it, or move it aside")
        why = _problem(name, dst, leaf=True, uid=uid)
        if why is not None:
            raise UnsafePath(name, why, fix=_fix(name, dst, uid, leaf=True))
    parent = real
    while True:
        parent, child = os.path.split(parent)
        if not child:
            break
        pst = os.stat(parent)
        why = _problem(parent, pst, leaf=False, uid=uid)
        if why is not None:
            raise UnsafePath(
                parent, why, fix=_fix(parent, pst, uid, leaf=False), queue=real
            )


def _fix(path: str, st: os.stat_result, uid: int, *, leaf: bool) -> str:
    if st.st_uid not in (uid, 0) or (leaf and st.st_uid != uid):
        return f"use a directory of your own, or chown {uid} {path}"
    mode = stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH)
    return f"chmod {mode:o} {path}" + ("" if leaf else f" (or chmod +t {path})")


def make_directory(path: str, *, trusted: bool) -> None:
    """Create ``path`` (0700, parents as the umask says) if missing, then check it."""
    try:
        os.mkdir(path, 0o700)  # mode & ~umask: never wider than 0700
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.makedirs(path, mode=0o700, exist_ok=True)
    if not trusted:
        check_directory(path)


def create_private(path: str) -> None:
    """Create ``path`` as an empty file readable by this user alone, if it is missing.

    SQLite creates a database file under the umask (often 0644) and gives its ``-wal``
    and ``-shm`` files the same mode; an empty file made first is a valid empty database,
    so everything SQLite creates beside it is 0600 too.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def tighten(directory: str) -> None:
    """Make the files durableq keeps in ``directory`` 0600 (those of older versions were
    created under the umask). Files of other users are left alone: the check refuses them."""
    uid = os.geteuid()
    for name in _files(directory):
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            continue
        if st.st_uid == uid and stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            os.chmod(name, stat.S_IMODE(st.st_mode) & 0o600)
