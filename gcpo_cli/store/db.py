"""The database connection and the pieces every query shares: ids, JSON, timestamps,
transactions and chunked `IN (...)` lookups.

A connection keeps writing to the file it opened even after that file is deleted or replaced
(issue 27: a training whose gcpo.db was removed ran on, reported `completed` and kept nothing).
So open_db notes which files it opened (device and inode of the database and its WAL), and every
write transaction checks, before it begins and after it commits, that the path still names them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import sqlite3
import time
import weakref
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from sqlite_utils import Database

from .. import paths
from ..errors import GcpoError
from .migrations import migrations

# SQLite binds at most 32,766 parameters (999 before 3.32); 900 stays under both.
IN_CHUNK = 900


class DatabaseGone(GcpoError):
    """The database file this process writes to was deleted or replaced under it."""


# Per open_db connection: its path and the (device, inode) of the database file and its WAL.
_OPENED: "weakref.WeakKeyDictionary[Database, tuple]" = weakref.WeakKeyDictionary()


def open_db(path: str | Path | None = None) -> Database:
    """WAL (so inspect reads while train writes), foreign keys, a 30 s busy timeout, migrations.
    A path that cannot hold a database is a GcpoError that says why, with nothing created."""
    path = Path(path) if path else paths.default_db()
    if path.exists() and not path.is_file():
        raise GcpoError(f"{path} is not a file (a folder or a device): give the path of a database file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GcpoError(f"cannot create the folder for the database {path}: {e.strerror}") from None
    try:
        db = _open(path)
    except sqlite3.DatabaseError as e:
        why = "not a SQLite database" if "not a database" in str(e) else str(e)
        raise GcpoError(f"cannot use {path} as the gcpo database: {why}") from None
    _OPENED[db] = (path, _identity(path), _identity(Path(f"{path}-wal")))
    return db


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def check_alive(db: Database) -> None:
    """DatabaseGone when the path `db` was opened from no longer names the files it opened: what
    the connection writes then lands in a file no one else can read. The WAL counts too: SQLite
    removes it only when the last connection closes, and this one is open. Connections not made
    by open_db (in memory, tests) are not checked."""
    opened = _OPENED.get(db)
    if opened is None:
        return
    path, main, wal = opened
    if _identity(path) != main or (wal is not None and _identity(Path(f"{path}-wal")) != wal):
        raise DatabaseGone(f"the database {path} was deleted or replaced while this command was writing to it: "
                           "stopped (what it wrote there is lost; files already saved, such as checkpoints, "
                           "are kept)")


@functools.cache
def _known_migrations() -> frozenset[str]:
    """This code's migration names (all of them are pending on an empty database); once a process."""
    return frozenset(m.name for m in migrations.pending(Database(memory=True)))


def _open(path: Path) -> Database:
    db = Database(path)
    db.conn.execute("PRAGMA busy_timeout = 30000")
    db.enable_wal()
    db.conn.execute("PRAGMA foreign_keys = ON")
    db.conn.execute("PRAGMA synchronous = NORMAL")
    unknown = [m.name for m in migrations.applied(db) if m.name not in _known_migrations()]
    if unknown:
        raise GcpoError(f"{path} was written by a newer gcpo (schema {unknown[-1]}); upgrade gcpo to use it")
    if migrations.pending(db):
        # Under the write lock, so that two processes opening a new database do not both apply
        # m001; the second sees nothing pending once it gets the lock.
        with write(db):
            migrations.apply(db)
    return db


@contextmanager
def write(db: Database) -> Iterator[Database]:
    """One write transaction. `BEGIN IMMEDIATE` takes the write lock up front, so a transaction
    that reads then writes waits (busy_timeout) for another writer instead of failing at once
    with "database is locked", as sqlite-utils' deferred `atomic()` does under WAL. Nested
    blocks become savepoints."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    check_alive(db)  # never write into a file that has gone
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")
    check_alive(db)  # nor report a commit as kept when the file went during it


@contextmanager
def snapshot(db: Database) -> Iterator[Database]:
    """One read transaction, so that all the queries of a view see the same committed steps while
    the trainer commits more. Keep it short: an open reader holds back WAL checkpoints."""
    db.conn.execute("BEGIN")
    try:
        yield db
    finally:
        db.conn.execute("ROLLBACK")


def rows_in(db: Database, sql: str, ids: Iterable, params: Iterable = ()) -> Iterator[dict]:
    """Rows of `sql` (with one `{ids}` placeholder for the IN list) over any number of ids."""
    ids = list(ids)
    for at in range(0, len(ids), IN_CHUNK):
        chunk = ids[at:at + IN_CHUNK]
        yield from db.query(sql.format(ids=",".join("?" * len(chunk))), [*params, *chunk])


_B32 = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_id() -> str:
    """A time-sortable id (ULID-like, 16 chars): 10 chars of milliseconds, 6 random."""
    ms = int(time.time() * 1000)
    head = "".join(_B32[(ms >> (5 * i)) & 31] for i in reversed(range(10)))
    tail = "".join(_B32[b & 31] for b in secrets.token_bytes(6))
    return head + tail


def finite(obj):
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj) -> str:
    return json.dumps(finite(obj), sort_keys=True, ensure_ascii=False, default=str)


def loads(text):
    """A stored JSON column; text that is not JSON comes back as it was rather than hidden."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def utcnow() -> str:
    """The one timestamp format in the database: ISO 8601, UTC, seconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
