"""Where gcpo keeps its state: GCPO_HOME (database, runs, model cache)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"


def home() -> Path:
    """GCPO_HOME, else the per-user data folder (XDG_DATA_HOME/gcpo or ~/.local/share/gcpo)."""
    env = os.environ.get("GCPO_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "gcpo"


def default_db() -> Path:
    return home() / "gcpo.db"


def runs_dir() -> Path:
    return home() / "runs"


def run_dir(run_id: str) -> Path:
    return runs_dir() / run_id


def cache_dir() -> Path:
    return home() / "cache"


def utcnow() -> str:
    """The one timestamp format in the database: ISO 8601, UTC, seconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
