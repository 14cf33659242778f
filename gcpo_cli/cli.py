"""The `gcpo` command line, assembled from the command modules' own Typer apps.

Imports run one way: cli.py -> cmd_*.py -> cmd_common.py and the library. Torch and
transformers are imported lazily inside the commands that need them, so `gcpo --help` and the
data commands start fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import __version__, cmd_data, cmd_eval, cmd_golden, cmd_inspect, cmd_train
from .cmd_common import console, make_app

app = make_app(
    name="gcpo",
    help=(
        "Teach small language models to reason in math with GCPO: when every sampled answer "
        "is wrong, go gold.\n\nData flows one way: ingest -> train -> eval -> inspect. "
        "Everything is recorded in one SQLite database (GCPO_HOME or --db)."
    ),
    no_args_is_help=True,
)
for module in (cmd_data, cmd_train, cmd_eval, cmd_inspect, cmd_golden):
    app.add_typer(module.app)


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
