"""Where gcpo keeps its state: GCPO_HOME (database, runs, model cache)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """GCPO_HOME, else the per-user data folder (XDG_DATA_HOME/gcpo or ~/.local/share/gcpo)."""
    env = os.environ.get("GCPO_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "gcpo"


def default_db() -> Path:
    return home() / "gcpo.db"


def run_dir(run_id: str) -> Path:
    return home() / "runs" / run_id


def cache_dir() -> Path:
    return home() / "cache"
