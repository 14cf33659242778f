"""Open the gcpo database: WAL (so inspect reads while train writes), foreign keys, migrations."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from sqlite_utils import Database

from . import paths
from .migrations import migrations


def open_db(path: str | Path | None = None) -> Database:
    path = Path(path) if path else paths.default_db()
    path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(path)
    db.conn.execute("PRAGMA busy_timeout = 30000")
    db.enable_wal()
    db.conn.execute("PRAGMA foreign_keys = ON")
    db.conn.execute("PRAGMA synchronous = NORMAL")
    migrations.apply(db)
    return db


_B32 = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_id() -> str:
    """A time-sortable id (ULID-like, 16 chars): 10 chars of milliseconds, 6 random."""
    ms = int(time.time() * 1000)
    head = "".join(_B32[(ms >> (5 * i)) & 31] for i in reversed(range(10)))
    tail = "".join(_B32[b & 31] for b in secrets.token_bytes(6))
    return head + tail


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
