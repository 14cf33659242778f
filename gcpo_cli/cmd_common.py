"""What every command module shares: its Typer app factory (with the one error wrapper), the
options spelled the same everywhere, the consoles and JSON printing. A leaf: it imports no
command module, and cli.py only assembles the command modules' apps."""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from . import paths, store
from .errors import GcpoError
from .render import SafeConsole, clean

console = SafeConsole()
err_console = SafeConsole(stderr=True)


class _App(typer.Typer):
    """A Typer app whose commands turn a GcpoError into one line on stderr and exit code 1."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn):
            @functools.wraps(fn)
            def wrapper(*a, **kw):
                try:
                    return fn(*a, **kw)
                except (GcpoError, sqlite3.DatabaseError) as e:
                    # A database error past opening (read-only file, full disk) is one line too.
                    why = str(e) if isinstance(e, GcpoError) else f"database: {e}"
                    # escape: messages quote user input, which may hold [brackets]
                    err_console.print(f"[bold red]error:[/] {escape(clean(why))}", highlight=False, soft_wrap=True)
                    raise typer.Exit(1)

            register(wrapper)
            return fn

        return decorator


def make_app(**kwargs) -> typer.Typer:
    return _App(add_completion=False, rich_markup_mode="rich", pretty_exceptions_show_locals=False, **kwargs)


# Options with one spelling everywhere.
DbOpt = Annotated[
    Optional[Path],
    typer.Option("--db", help="SQLite database file (default: $GCPO_HOME/gcpo.db).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
# A problem set is --set everywhere (--name and --data are its old spellings, hidden for a release).
SET_HELP = "Problem set (its name, or a unique prefix; see gcpo sets)."
# A run is --run/-r everywhere it is read; `train --resume RUN` continues one.
RUN_HELP = "Run id, a unique prefix, or latest (the newest; see gcpo runs)."


def print_json(obj) -> None:
    """JSON for scripts goes to stdout unstyled (rich would wrap and colour it); NaN and
    infinities, which JSON cannot spell, become null."""
    sys.stdout.write(json.dumps(store.finite(obj), indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def open_for_reading(db_path: Optional[Path]):
    """The database for a read-only command: a mistyped --db is an error, never a new file."""
    path = Path(db_path) if db_path else paths.default_db()
    if not path.exists():
        raise GcpoError(f"no database at {path}: nothing ingested or trained there yet "
                        "(start with gcpo ingest, or pass --db)")
    return store.open_db(path)


def one_of(primary, alias, name: str):
    """The value of an option given under its name or its old, hidden spelling (not both)."""
    if primary is not None and alias is not None and primary != alias:
        raise GcpoError(f"give {name} once")
    return primary if primary is not None else alias
