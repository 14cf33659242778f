"""What every command module shares: its Typer app factory (with the one error wrapper), the
options spelled the same everywhere, the consoles and JSON printing. A leaf: it imports no
command module, and cli.py only assembles the command modules' apps."""

from __future__ import annotations

import functools
import inspect
import json
import re
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from . import paths, store
from .errors import GcpoError
from .render import SafeConsole, clean

console = SafeConsole()
err_console = SafeConsole(stderr=True)


# ----------------------------------------------------------------------------- help
# What the help's type column says, click's way (Typer 0.29 writes the Python type: `<str>`,
# `<int range>`, and `<bool>` beside every flag).
_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH"}


def _type_column(param, ctx) -> str:
    """Nothing for a flag or an argument (its name column says it), the metavar where one is
    given, else TEXT, INTEGER, FLOAT, PATH or the choices."""
    if getattr(param, "is_flag", False) or param.param_type_name == "argument":
        return ""
    if param.metavar is not None:
        return param.metavar
    label = (type(param).display_type_rich(param, ctx) or "").strip("<>")
    label = re.sub(r"^list\[(.*)\]$", r"\1", label).removesuffix(" range")
    return label if "|" in label else _TYPE_NAMES.get(label, label.upper())  # choices as they are; file -> FILE


class _PlainTypes:
    """Gives every parameter of a command (the help option included) `_type_column` as its
    display_type_rich, the one hook Typer's rich help reads the type column from."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            param.display_type_rich = functools.partial(_type_column, param)
        return params


class _Command(_PlainTypes, TyperCommand):
    def collect_usage_pieces(self, ctx):
        """The usage line without hidden arguments (a positional kept for old scripts only, such
        as export's RUN, which --run replaced)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not (param.param_type_name == "argument" and getattr(param, "hidden", False)):
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class _Group(_PlainTypes, TyperGroup):
    pass


def reflow(text: str | None) -> str | None:
    """Help text as Typer's rich mode prints it well: rich keeps single newlines, so a paragraph
    wrapped by hand at 100 columns came out at 80 as long and short lines in turn. Prose lines
    join into one per paragraph (rich wraps it to the terminal); indented lines (examples) and
    bullets stay lines of their own."""
    if not text:
        return text
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.split("\n"):
            if lines and line.strip() and not line[0].isspace() and not lines[-1][:1].isspace() \
                    and not line.startswith(("- ", "* ", "• ")):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


# ----------------------------------------------------------------------------- apps
class _App(typer.Typer):
    """A Typer app whose commands turn a GcpoError into one line on stderr and exit code 1, with
    help reflowed and the type column as click writes it."""

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        if kwargs.get("help"):
            kwargs["help"] = reflow(kwargs["help"])
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

            wrapper.__doc__ = reflow(fn.__doc__)
            register(wrapper)
            return fn

        return decorator


def make_app(**kwargs) -> typer.Typer:
    kwargs.setdefault("cls", _Group)
    if kwargs.get("help"):
        kwargs["help"] = reflow(kwargs["help"])
    return _App(add_completion=False, rich_markup_mode="rich", pretty_exceptions_show_locals=False, **kwargs)


# Options with one spelling everywhere.
DbOpt = Annotated[
    Optional[Path],
    typer.Option("--db", metavar="FILE", help="SQLite database file (default: $GCPO_HOME/gcpo.db).",
                 show_default=False),
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
