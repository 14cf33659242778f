"""The `gcpo` command line: thin commands that parse options, call one function and print.

Commands live in cmd_*.py modules that register on `app`; torch and transformers are imported
lazily inside them so that `gcpo --help` and the data commands start fast.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import GcpoError  # noqa: F401  (re-exported for the command modules)


console = Console()
err_console = Console(stderr=True)


class _App(typer.Typer):
    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn):
            @functools.wraps(fn)
            def wrapper(*a, **kw):
                try:
                    return fn(*a, **kw)
                except GcpoError as e:
                    # escape: messages quote user input, which may hold [brackets]
                    err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
                    raise typer.Exit(1)

            register(wrapper)
            return fn

        return decorator


app = _App(
    name="gcpo",
    help=(
        "Teach small language models to reason in math with GCPO: when every sampled answer "
        "is wrong, go gold.\n\nData flows one way: ingest -> train -> eval -> inspect. "
        "Everything is recorded in one SQLite database (GCPO_HOME or --db)."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)

# Shared options: one spelling everywhere.
DbOpt = Annotated[
    Optional[Path],
    typer.Option("--db", help="SQLite database file (default: $GCPO_HOME/gcpo.db).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def print_json(obj) -> None:
    """JSON for scripts goes to stdout unstyled (rich would wrap and colour it)."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _version(value: bool) -> None:
    if value:
        console.print(f"gcpo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    pass


def main() -> None:
    app()


# Register the commands (each module adds its commands to `app`).
from . import cmd_data  # noqa: E402,F401
from . import cmd_train  # noqa: E402,F401
from . import cmd_eval  # noqa: E402,F401
from . import cmd_inspect  # noqa: E402,F401

